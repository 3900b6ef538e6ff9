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

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from bandpo.band import band, check_delta, check_kernel, check_upper_max
from bandpo.checks import check_number
from bandpo.divergences import Divergence, get_divergence

DEFAULT_DIVERGENCE = "kl"
DEFAULT_DELTA = 0.05
DEFAULT_UPPER_MAX = 10.0
"""The published band: kl, radius 0.05, upper bound capped at 10 (the paper's main runs)."""
CLIP_EPS = 0.2
"""PPO/GRPO's margin on both sides, and the lower margin of clip-higher (and the sided rules)."""
CLIP_HIGHER_EPS_HIGH = 0.28
"""DAPO's wider upper margin."""
DCPO_EPS_LOW, DCPO_EPS_HIGH = 0.16, 0.20
"""DCPO's margins in the paper's comparison."""


@runtime_checkable
class BoundRule(Protocol):
    def bounds(self, old_log_probs: Tensor) -> tuple[Tensor, Tensor]:
        """(lower, upper) ratio bounds for each token's old log-probability."""
        ...


@dataclass(frozen=True)
class Band:
    """BandPO: bounds of the f-divergence trust region of radius ``delta`` (see `bandpo.band`,
    which also documents ``validate`` and ``kernel``).

    ``relax=(eps_low, eps_high)`` is the relax variant of the published code (the paper's ablation): the band
    widened to contain the fixed interval,

        lower = min(band_lower, 1 - eps_low),   upper = min(max(band_upper, 1 + eps_high), upper_max)

    so no token is clipped tighter than PPO would clip it. The paper reports that it hurts.
    """

    divergence: str | Divergence = DEFAULT_DIVERGENCE
    delta: float = DEFAULT_DELTA
    upper_max: float | None = DEFAULT_UPPER_MAX
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


def check_eps_low(name: str, eps_low: float) -> None:
    """A lower margin in [0, 1): the bound 1 - eps_low must stay a positive ratio."""
    check_number(name, eps_low, low=0.0, high=1.0, high_open=True)


@dataclass(frozen=True)
class FixedClip:
    """PPO/GRPO's fixed interval [1 - eps_low, 1 + eps_high]; clip-higher is eps_high = 0.28."""

    eps_low: float = CLIP_EPS
    eps_high: float = CLIP_EPS

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

    eps_low: float = DCPO_EPS_LOW
    eps_high: float = DCPO_EPS_HIGH
    upper_max: float | None = DEFAULT_UPPER_MAX

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


@dataclass(frozen=True)
class ClipMethod:
    """One built-in rule of the table `CLIP_METHOD_TABLE`: what it is, its published defaults, how to build it.

    ``eps_low`` / ``eps_high`` are the default margins (None: the rule has none); ``margins`` says what
    they are: ``"fixed"`` (the interval [1 - eps_low, 1 + eps_high], or a side of it), ``"dcpo"``
    (DCPO's adaptive margins) or ``"none"``. ``banded`` rules take divergence and delta, ``capped``
    rules upper_max; ``per_token`` rules bound each token by its own old probability.
    """

    name: str
    rule: str
    bounds: str
    margins: str
    eps_low: float | None
    eps_high: float | None
    banded: bool
    capped: bool
    build: Callable[[str | Divergence, float, float | None, float, float], BoundRule]

    @property
    def per_token(self) -> bool:
        return self.banded or self.margins == "dcpo"

    def published_defaults(self) -> str:
        """The defaults as the docs' table states them, from the fields above."""
        parts = [f"{DEFAULT_DIVERGENCE}, delta {DEFAULT_DELTA}"] if self.banded else []
        if self.eps_low is not None:
            parts.append(f"{self.eps_low} / {self.eps_high}")
        if self.capped:
            parts.append(f"upper_max {DEFAULT_UPPER_MAX:g}")
        return ", ".join(parts)


CLIP_METHOD_TABLE: dict[str, ClipMethod] = {
    method.name: method
    for method in (
        ClipMethod("band", "Band(divergence, delta, upper_max)", "the Band operator (BandPO)",
                   "none", None, None, banded=True, capped=True,
                   build=lambda f, delta, cap, low, high: Band(f, delta, cap)),
        ClipMethod("band-relax", "Band(..., relax=(eps_low, eps_high))",
                   "the band widened to at least [1 - eps_low, 1 + eps_high] (the published ablation)",
                   "fixed", CLIP_EPS, CLIP_HIGHER_EPS_HIGH, banded=True, capped=True,
                   build=lambda f, delta, cap, low, high: Band(f, delta, cap, relax=(low, high))),
        ClipMethod("band-upper", "Sided(FixedClip(eps_low, eps_high), Band(...))",
                   "the band's upper bound over clip-higher's floor 1 - eps_low",
                   "fixed", CLIP_EPS, CLIP_HIGHER_EPS_HIGH, banded=True, capped=True,
                   build=lambda f, delta, cap, low, high: Sided(FixedClip(low, high), Band(f, delta, cap))),
        ClipMethod("band-lower", "Sided(Band(...), FixedClip(eps_low, eps_high))",
                   "the band's lower bound under clip-higher's ceiling 1 + eps_high",
                   "fixed", CLIP_EPS, CLIP_HIGHER_EPS_HIGH, banded=True, capped=False,
                   build=lambda f, delta, cap, low, high: Sided(Band(f, delta, cap), FixedClip(low, high))),
        ClipMethod("clip", "FixedClip(eps_low, eps_high)", "[1 - eps_low, 1 + eps_high] (PPO/GRPO)",
                   "fixed", CLIP_EPS, CLIP_EPS, banded=False, capped=False,
                   build=lambda f, delta, cap, low, high: FixedClip(low, high)),
        ClipMethod("clip-higher", "FixedClip(eps_low, eps_high)", "the same, with DAPO's wider upper side",
                   "fixed", CLIP_EPS, CLIP_HIGHER_EPS_HIGH, banded=False, capped=False,
                   build=lambda f, delta, cap, low, high: FixedClip(low, high)),
        ClipMethod("dcpo", "DCPO(eps_low, eps_high, upper_max)",
                   "1/2 + 1/2 sqrt(max(1 - 4 eps_low / p, 0)), min(1/2 + 1/2 sqrt(1 + 4 eps_high / p), upper_max)",
                   "dcpo", DCPO_EPS_LOW, DCPO_EPS_HIGH, banded=False, capped=True,
                   build=lambda f, delta, cap, low, high: DCPO(low, high, cap)),
    )
}
"""The built-in rules, defined once: `make_rule`, every engine's ``clip_method`` field, the command
line's choices and the docs' table of rules read them from here."""
CLIP_METHODS = tuple(CLIP_METHOD_TABLE)
"""Names of the built-in rules, for `make_rule` and every integration's ``clip_method``."""


def check_clip_method(clip_method: str, name: str = "clip_method") -> None:
    """ValueError naming ``name`` (each engine's own field) unless ``clip_method`` is in `CLIP_METHODS`."""
    if clip_method not in CLIP_METHODS:
        raise ValueError(f"{name} must be one of {', '.join(CLIP_METHODS)}, got {clip_method!r}")


def make_rule(
    clip_method: str,
    *,
    divergence: str | Divergence = DEFAULT_DIVERGENCE,
    delta: float = DEFAULT_DELTA,
    upper_max: float | None = DEFAULT_UPPER_MAX,
    eps_low: float | None = None,
    eps_high: float | None = None,
) -> BoundRule:
    """The rule named ``clip_method`` (one of `CLIP_METHODS`) with the published defaults of
    `CLIP_METHOD_TABLE`; ``eps_low`` / ``eps_high`` override the margins of every rule that has them
    (and are ignored by ``band``).
    """
    check_clip_method(clip_method)
    method = CLIP_METHOD_TABLE[clip_method]
    low = method.eps_low if eps_low is None else eps_low
    high = method.eps_high if eps_high is None else eps_high
    if low is None or high is None:  # a rule without margins (band): its build ignores them
        return method.build(divergence, delta, upper_max, 0.0, 0.0)
    return method.build(divergence, delta, upper_max, low, high)


def rule_table_markdown() -> str:
    """The docs' table of rules (Markdown), from `CLIP_METHOD_TABLE`."""
    lines = ["| `clip_method` | rule | bounds | published defaults |", "|---|---|---|---|"]
    for method in CLIP_METHOD_TABLE.values():
        lines.append(f"| `{method.name}` | `{method.rule}` | {method.bounds} | {method.published_defaults()} |")
    return "\n".join(lines)
