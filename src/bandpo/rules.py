"""Bound rules: where the ratio r = pi / pi_old of each token is clipped.

A rule is any object with ``bounds(old_log_probs) -> (lower, upper)`` (tensors shaped like the
input, no autograd history). Built in:

    Band       lower, upper = Band_{f, delta}(p)                       (BandPO)
    FixedClip  lower, upper = 1 - eps_low, 1 + eps_high                (PPO/GRPO; DAPO's clip-higher)
    DCPO       lower = 1/2 + 1/2 sqrt(max(1 - 4 eps_low / p, 0)),
               upper = min(1/2 + 1/2 sqrt(1 + 4 eps_high / p), upper_max)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from bandpo.band import band, check_delta, check_kernel, check_upper_max
from bandpo.checks import check_number
from bandpo.divergences import Divergence, get_divergence

METHODS = ("band", "clip", "clip-higher", "dcpo")


@runtime_checkable
class BoundRule(Protocol):
    def bounds(self, old_log_probs: Tensor) -> tuple[Tensor, Tensor]:
        """(lower, upper) ratio bounds for each token's old log-probability."""
        ...


@dataclass(frozen=True)
class Band:
    """BandPO: bounds of the f-divergence trust region of radius ``delta`` (see :func:`bandpo.band`,
    which also documents ``validate`` and ``kernel``)."""

    divergence: str | Divergence = "kl"
    delta: float = 0.05
    upper_max: float | None = 10.0
    validate: bool = True
    kernel: str = "auto"

    def __post_init__(self) -> None:
        get_divergence(self.divergence)
        check_delta(self.delta)
        check_upper_max(self.upper_max)
        check_kernel(self.kernel)

    def bounds(self, old_log_probs: Tensor) -> tuple[Tensor, Tensor]:
        return band(
            old_log_probs,
            self.delta,
            self.divergence,
            upper_max=self.upper_max,
            validate=self.validate,
            kernel=self.kernel,
        )


@dataclass(frozen=True)
class FixedClip:
    """PPO/GRPO's fixed interval [1 - eps_low, 1 + eps_high]; clip-higher is eps_high = 0.28."""

    eps_low: float = 0.2
    eps_high: float = 0.2

    def __post_init__(self) -> None:
        check_number("eps_low", self.eps_low, low=0.0, high=1.0, high_open=True)  # lower = 1 - eps_low > 0
        check_number("eps_high", self.eps_high, low=0.0)

    def bounds(self, old_log_probs: Tensor) -> tuple[Tensor, Tensor]:
        lower = torch.full_like(old_log_probs, 1.0 - self.eps_low).detach()
        upper = torch.full_like(old_log_probs, 1.0 + self.eps_high).detach()
        return lower, upper


@dataclass(frozen=True)
class DCPO:
    """DCPO's dynamic adaptive clipping: the fixed margins rescaled by sqrt(1 +- 4 eps / p)."""

    eps_low: float = 0.16
    eps_high: float = 0.20
    upper_max: float | None = 10.0

    def __post_init__(self) -> None:
        check_number("eps_low", self.eps_low, low=0.0)
        check_number("eps_high", self.eps_high, low=0.0)
        check_upper_max(self.upper_max)

    def bounds(self, old_log_probs: Tensor) -> tuple[Tensor, Tensor]:
        with torch.no_grad():
            inverse_p = torch.exp(-old_log_probs.clamp(max=0.0))

            def margin(eps: float) -> Tensor:  # 4 eps / p, and 0 (not 0 * inf) for eps = 0
                return inverse_p.mul(4.0 * eps) if eps > 0 else torch.zeros_like(inverse_p)

            lower = margin(self.eps_low).neg_().add_(1.0).clamp_min_(0.0).sqrt_().mul_(0.5).add_(0.5)
            upper = margin(self.eps_high).add_(1.0).sqrt_().mul_(0.5).add_(0.5)
            if self.upper_max is not None:
                upper = upper.clamp_(max=self.upper_max)
        return lower, upper


def make_rule(
    method: str,
    *,
    divergence: str | Divergence = "kl",
    delta: float = 0.05,
    upper_max: float | None = 10.0,
    eps_low: float | None = None,
    eps_high: float | None = None,
) -> BoundRule:
    """The rule named ``method`` (band | clip | clip-higher | dcpo) with the published defaults.

    Defaults: band kl / 0.05 / upper_max 10; clip 0.2 / 0.2; clip-higher 0.2 / 0.28;
    dcpo 0.16 / 0.20 / upper_max 10. ``eps_*`` override the baselines' margins.
    """
    if method == "band":
        return Band(divergence=divergence, delta=delta, upper_max=upper_max)
    if method == "clip":
        return FixedClip(0.2 if eps_low is None else eps_low, 0.2 if eps_high is None else eps_high)
    if method == "clip-higher":
        return FixedClip(0.2 if eps_low is None else eps_low, 0.28 if eps_high is None else eps_high)
    if method == "dcpo":
        return DCPO(
            0.16 if eps_low is None else eps_low, 0.20 if eps_high is None else eps_high, upper_max
        )
    raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
