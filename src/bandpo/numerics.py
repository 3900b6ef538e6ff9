"""Elementwise helpers that keep full precision in eager mode and under ``torch.compile``.

Inductor's vectorised CPU kernels evaluate ``expm1(y)`` as ``exp(y) - 1`` (all precision lost for
|y| < 1e-7 in float32; its CUDA kernels call libdevice's exact expm1), so inside a graph compiled
for the CPU we use Kahan's formulation instead:

    expm1(y) = y                          if e^y == 1
             = e^y - 1                    if e^y is below the smallest normal float, or inf
             = (e^y - 1) y / log(e^y)     otherwise (the rounding errors of e^y cancel)

The trick needs e^y to carry a full mantissa: a subnormal e^y (y < -87.3 in float32) has only a
few significant bits, so log(e^y) is not the log of the value that was rounded; there e^y - 1 = -1
to working precision anyway.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def expm1(y: Tensor, *, out: Tensor | None = None) -> Tensor:
    """e^y - 1 to within a few ulps, eager or compiled. ``out`` receives the result except in a
    graph compiled for the CPU: use the returned tensor.

    >>> expm1(torch.tensor([1e-10], dtype=torch.float64)).item()  # exp(y) - 1 would give 1.000000082740371e-10
    1.00000000005e-10
    """
    if not torch.compiler.is_compiling() or y.device.type != "cpu":
        return torch.expm1(y, out=out)
    e = torch.exp(y)
    kahan = (e - 1) * y / torch.log(e)
    rounded_away = (e < torch.finfo(y.dtype).tiny) | torch.isinf(e)
    return torch.where(e == 1, y, torch.where(rounded_away, e - 1, kahan))


def exp_neg_and_complement(u: Tensor) -> tuple[Tensor, Tensor]:
    """(e^-u, 1 - e^-u) for u >= 0, with e^-u read as 0 once it is below the smallest normal float.

    exp() of arguments in or below the underflow range takes a slow path (20-50x on CPU); the
    values lost are below 1e-37 (float32) / 1e-304 (float64), far under any bound's tolerance.
    """
    cutoff = -math.log(torch.finfo(u.dtype).tiny) - 1.0
    e = torch.exp(u.clamp(max=cutoff).neg_()).mul_(u < cutoff)
    # past u = 40, 1 - e^-u rounds to 1 in float64 too; expm1 is slow near underflow as well
    return e, expm1(u.clamp(max=40.0).neg_()).neg_()
