"""The published algorithm for KL bounds, rebuilt from its description (SPEC §7) as a baseline.

Plain bisection on the ratio in the input dtype, up to 50 halvings per side, with a host-synchronising
convergence test (absolute width 1e-6) after every halving. Not part of the library.
"""

from __future__ import annotations

import torch
from torch import Tensor

HALVINGS = 50
TOLERANCE = 1e-6


def _kl(p: Tensor, q: Tensor) -> Tensor:
    return p * torch.log(p / q) + (1 - p) * torch.log((1 - p) / (1 - q))


def _bisect(p: Tensor, inside: Tensor, outside: Tensor, delta: float) -> Tensor:
    q_max = 1 - torch.finfo(p.dtype).eps
    for _ in range(HALVINGS):
        middle = (inside + outside) / 2
        feasible = _kl(p, (middle * p).clamp(torch.finfo(p.dtype).tiny, q_max)) <= delta
        inside = torch.where(feasible, middle, inside)
        outside = torch.where(feasible, outside, middle)
        if bool(((inside - outside).abs() < TOLERANCE).all()):
            break
    return inside


def bisection_kl_bounds(old_log_probs: Tensor, delta: float) -> tuple[Tensor, Tensor]:
    p = old_log_probs.exp()
    upper = _bisect(p, torch.ones_like(p), 1 / p, delta)
    lower = _bisect(p, torch.ones_like(p), torch.zeros_like(p), delta)
    return lower, upper
