"""Bound rules: where the ratio r = pi / pi_old of each token is clipped.

A rule is any object with ``bounds(old_log_probs) -> (lower, upper)`` (tensors shaped like the
input, no autograd history). Built in:

    Band       lower, upper = Band_{f, delta}(p)                       (BandPO)
               relaxed:  min(lower, 1 - eps_low), max(upper, 1 + eps_high)   (the published ablation)
    FixedClip  lower, upper = 1 - eps_low, 1 + eps_high                (PPO/GRPO; DAPO's clip-higher)
    DCPO       lower = 1/2 + 1/2 sqrt(max(1 - 4 eps_low / p, 0)),
               upper = min(1/2 + 1/2 sqrt(1 + 4 eps_high / p), upper_max)
    Sided      lower from one rule, upper from another (band-upper, band-lower: one side of the
               band against clip-higher's other side, to tell which side of the band does what)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from bandpo.band import band, check_delta, check_kernel, check_upper_max
from bandpo.checks import check_number
from bandpo.divergences import Divergence, get_divergence

CLIP_METHODS = ("band", "band-relax", "band-upper", "band-lower", "clip", "clip-higher", "dcpo")
"""Names of the built-in rules, for `make_rule` and every integration's ``clip_method``."""


@runtime_checkable
class BoundRule(Protocol):
    def bounds(self, old_log_probs: Tensor) -> tuple[Tensor, Tensor]:
        """(lower, upper) ratio bounds for each token's old log-probability."""
        ...


@dataclass(frozen=True)
class Band:
    """BandPO: bounds of the f-divergence trust region of radius ``delta`` (see `bandpo.band`,
    which also documents ``validate`` and ``kernel``).

    ``relax=(eps_low, eps_high)`` is the relax variant of the published code (SPEC §9): the band
    widened to contain the fixed interval,

        lower = min(band_lower, 1 - eps_low),   upper = min(max(band_upper, 1 + eps_high), upper_max)

    so no token is clipped tighter than PPO would clip it. The paper reports that it hurts.
    """

    divergence: str | Divergence = "kl"
    delta: float = 0.05
    upper_max: float | None = 10.0
    validate: bool = True
    kernel: str = "auto"
    relax: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        get_divergence(self.divergence)
        check_delta(self.delta)
        check_upper_max(self.upper_max)
        check_kernel(self.kernel)
        if self.relax is not None:
            if not isinstance(self.relax, (tuple, list)) or len(self.relax) != 2:
                raise ValueError(f"relax must be None or a pair (eps_low, eps_high), got {self.relax!r}")
            eps_low, eps_high = self.relax
            check_eps_low("relax eps_low", eps_low)
            check_number("relax eps_high", eps_high, low=0.0)
            object.__setattr__(self, "relax", (eps_low, eps_high))  # a list would make the rule unhashable

    def bounds(self, old_log_probs: Tensor) -> tuple[Tensor, Tensor]:
        lower, upper = band(
            old_log_probs,
            self.delta,
            self.divergence,
            upper_max=self.upper_max,
            validate=self.validate,
            kernel=self.kernel,
        )
        if self.relax is None:
            return lower, upper
        eps_low, eps_high = self.relax
        lower = lower.clamp(max=1.0 - eps_low)
        upper = upper.clamp(min=1.0 + eps_high)
        if self.upper_max is not None:
            upper = upper.clamp_(max=self.upper_max)
        return lower, upper


def check_clip_method(clip_method: str, name: str = "clip_method") -> None:
    """ValueError naming ``name`` (each engine's own field) unless ``clip_method`` is in `CLIP_METHODS`."""
    if clip_method not in CLIP_METHODS:
        raise ValueError(f"{name} must be one of {', '.join(CLIP_METHODS)}, got {clip_method!r}")


def check_eps_low(name: str, eps_low: float) -> None:
    """A lower margin in [0, 1): the bound 1 - eps_low must stay a positive ratio."""
    check_number(name, eps_low, low=0.0, high=1.0, high_open=True)


@dataclass(frozen=True)
class FixedClip:
    """PPO/GRPO's fixed interval [1 - eps_low, 1 + eps_high]; clip-higher is eps_high = 0.28."""

    eps_low: float = 0.2
    eps_high: float = 0.2

    def __post_init__(self) -> None:
        check_eps_low("eps_low", self.eps_low)
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


@dataclass(frozen=True)
class Sided:
    """A rule whose lower bound is ``lower_rule``'s and whose upper bound is ``upper_rule``'s:

        lower = lower_rule.bounds(log p)[0],   upper = upper_rule.bounds(log p)[1]

    ``band-upper`` is ``Sided(FixedClip(0.2, 0.28), Band())`` (the band's room to grow, clip-higher's
    floor) and ``band-lower`` is ``Sided(Band(), FixedClip(0.2, 0.28))``.
    """

    lower_rule: BoundRule
    upper_rule: BoundRule

    def __post_init__(self) -> None:
        for name in ("lower_rule", "upper_rule"):
            rule = getattr(self, name)
            if isinstance(rule, type) or not isinstance(rule, BoundRule):
                raise ValueError(f"{name} must be a bound rule instance such as Band() or FixedClip(), got {rule!r}")

    def bounds(self, old_log_probs: Tensor) -> tuple[Tensor, Tensor]:
        lower, _ = self.lower_rule.bounds(old_log_probs)
        _, upper = self.upper_rule.bounds(old_log_probs)
        return lower, upper


def make_rule(
    clip_method: str,
    *,
    divergence: str | Divergence = "kl",
    delta: float = 0.05,
    upper_max: float | None = 10.0,
    eps_low: float | None = None,
    eps_high: float | None = None,
) -> BoundRule:
    """The rule named ``clip_method`` (one of `CLIP_METHODS`) with the published defaults.

    Defaults: band kl / 0.05 / upper_max 10; band-relax the same, relaxed to 0.2 / 0.28;
    band-upper the band's upper bound over the floor 1 - 0.2; band-lower the band's lower bound
    under the ceiling 1 + 0.28; clip 0.2 / 0.2; clip-higher 0.2 / 0.28; dcpo 0.16 / 0.20 / upper_max 10.
    ``eps_*`` override the margins of every rule but band.
    """
    check_clip_method(clip_method)
    if clip_method == "band":
        return Band(divergence=divergence, delta=delta, upper_max=upper_max)
    if clip_method == "band-relax":
        relax = (0.2 if eps_low is None else eps_low, 0.28 if eps_high is None else eps_high)
        return Band(divergence=divergence, delta=delta, upper_max=upper_max, relax=relax)
    if clip_method in ("band-upper", "band-lower"):
        fixed = FixedClip(0.2 if eps_low is None else eps_low, 0.28 if eps_high is None else eps_high)
        banded = Band(divergence=divergence, delta=delta, upper_max=upper_max)
        return Sided(fixed, banded) if clip_method == "band-upper" else Sided(banded, fixed)
    if clip_method == "clip":
        return FixedClip(0.2 if eps_low is None else eps_low, 0.2 if eps_high is None else eps_high)
    if clip_method == "clip-higher":
        return FixedClip(0.2 if eps_low is None else eps_low, 0.28 if eps_high is None else eps_high)
    # dcpo, the one name check_clip_method leaves
    return DCPO(0.16 if eps_low is None else eps_low, 0.20 if eps_high is None else eps_high, upper_max)
