"""Elementwise helpers that keep full precision in eager mode and under ``torch.compile``.

Inductor's CPU kernels evaluate ``expm1(y)`` as ``exp(y) - 1`` (all precision lost for |y| < 1e-7
in float32), so inside a compiled graph we use Kahan's formulation instead:

    expm1(y) = y                          if e^y == 1
             = e^y - 1                    if e^y is 0 or inf
             = (e^y - 1) y / log(e^y)     otherwise (the rounding errors of e^y cancel)
"""

from __future__ import annotations

import torch
from torch import Tensor


def expm1(y: Tensor) -> Tensor:
    """e^y - 1 to within a few ulps, eager or compiled."""
    if not torch.compiler.is_compiling():
        return torch.expm1(y)
    e = torch.exp(y)
    kahan = (e - 1) * y / torch.log(e)
    return torch.where(e == 1, y, torch.where((e == 0) | torch.isinf(e), e - 1, kahan))
