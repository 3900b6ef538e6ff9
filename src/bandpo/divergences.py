"""f-divergences and their one-sided (shrink) solutions.

A divergence is its convex generator f with f(1) = 0,

    D_f(Q || P) = sum_b P(b) f(Q(b) / P(b)).

Built in: ``kl`` (the paper's forward KL(pi_old || pi_new), f(u) = -log u + u - 1), ``tv``
(f(u) = |u - 1| / 2), ``chi2`` (Pearson, f(u) = (u - 1)^2), ``reverse_kl``
(f(u) = u log u - u + 1) and ``hellinger`` (squared, f(u) = (sqrt(u) - 1)^2). Closed forms where
they exist, a fixed-length Halley iteration for ``kl``, and the generic solver of
:mod:`bandpo.shrink` for ``reverse_kl`` and any user-defined generator:

    >>> js = Divergence(  # Jensen-Shannon; lim f(x)/x decides the bound at p = 1 exactly
    ...     "js",
    ...     lambda u: torch.xlogy(u, 2 * u / (1 + u)) + torch.log(2 / (1 + u)),
    ...     slope_at_infinity=math.log(2),
    ... )
    >>> lower, upper = bandpo.band(old_log_probs, 0.05, js)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from bandpo.numerics import exp_neg_and_complement, expm1
from bandpo.shrink import (
    Generator,
    Perspective,
    ShrinkSolver,
    generator_derivative_by_autograd,
    perspective_from_generator,
    solve_shrink_generic,
    two_sided_bounds,
)

BoundsFunction = Callable[[Tensor, float], "tuple[Tensor, Tensor]"]


@dataclass(frozen=True)
class Divergence:
    """An f-divergence usable by :func:`bandpo.band`.

    Args:
        name: short identifier shown in errors, metrics and plots.
        generator: f, elementwise on tensors, convex on [0, inf) with f(1) = 0.
        derivative: f'; obtained by autograd from ``generator`` when omitted.
        slope_at_infinity: lim_{x -> inf} f(x) / x, the cost of moving mass onto an outcome of
            probability 0 (decides the bound at p = 1 exactly; +inf for chi2-like generators).
        shrink: a solver of the one-sided problem (see :mod:`bandpo.shrink`); the generic
            bracketed-Newton solver when omitted.
        perspective: (b, y, log b) -> (b f(y / b), f'(y / b)) for the generic solver, written to
            stay finite when y / b overflows; formed from f and f' when omitted.
        bounds: a direct (lower, upper) formula from old log-probabilities; bypasses ``shrink``.
        iterations: steps of the generic solver (each halves the bracket at worst).
    """

    name: str
    generator: Generator
    derivative: Generator | None = None
    slope_at_infinity: float = math.inf
    shrink: ShrinkSolver | None = None
    perspective: Perspective | None = None
    bounds: BoundsFunction | None = None
    iterations: int = 80

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("Divergence name must be a non-empty string")
        at_one = float(self.generator(torch.ones((), dtype=torch.float64)))
        if not abs(at_one) <= 1e-12:
            raise ValueError(f"Divergence {self.name!r}: generator must satisfy f(1) = 0, got {at_one}")

    def two_point(self, p: Tensor, ratio: Tensor) -> Tensor:
        """g_f(p, r) = p f(r) + (1 - p) f((1 - r p) / (1 - p)), the divergence after the move."""
        return p * self.generator(ratio) + (1 - p) * self.generator((1 - ratio * p) / (1 - p))

    def ratio_bounds(self, log_p: Tensor, delta: float) -> tuple[Tensor, Tensor]:
        """(lower, upper) ratio bounds for log-probabilities ``log_p`` <= 0 in a float dtype."""
        if self.bounds is not None:
            return self.bounds(log_p, delta)
        return two_sided_bounds(log_p, delta, self.shrink or self._generic_shrink)

    def _generic_shrink(
        self, a: Tensor, b: Tensor, log_a: Tensor, log_b: Tensor, delta: float
    ) -> tuple[Tensor, Tensor]:
        derivative = self.derivative or generator_derivative_by_autograd(self.generator)
        perspective = self.perspective or perspective_from_generator(
            self.generator, derivative, self.slope_at_infinity
        )
        return solve_shrink_generic(
            self.generator, derivative, perspective, a, b, log_b, delta, self.iterations
        )


# --- closed forms -------------------------------------------------------------------------


def tv_bounds(log_p: Tensor, delta: float) -> tuple[Tensor, Tensor]:
    """Total variation, g = |q - p|:  r = 1 -/+ delta / p, clamped to the simplex [0, 1/p].

    delta / p is formed as exp(log delta - log p), finite wherever the bound itself is.
    """
    reach = torch.rsub(log_p, math.log(delta)).exp_()
    upper = torch.minimum(reach.add(1.0), torch.exp(-log_p))
    return reach.neg_().add_(1.0).clamp_min_(0.0), upper


def chi2_bounds(log_p: Tensor, delta: float) -> tuple[Tensor, Tensor]:
    """Pearson chi-square, g = (q - p)^2 / (p (1 - p)):  r = 1 -/+ sqrt(delta (1 - p) / p).

    The reach is sqrt(delta) sqrt(1 - p) p^(-1/2): 1 - p keeps its precision near p = 1, and no
    intermediate overflows where the bound is finite.
    """
    reach = expm1(log_p).neg_().sqrt_().mul_(torch.exp(log_p * -0.5)).mul_(math.sqrt(delta))
    upper = torch.minimum(reach.add(1.0), torch.exp(-log_p))
    return reach.neg_().add_(1.0).clamp_min_(0.0), upper


def hellinger_shrink(
    a: Tensor, b: Tensor, log_a: Tensor, log_b: Tensor, delta: float
) -> tuple[Tensor, Tensor]:
    """Squared Hellinger, g = 2 (1 - sqrt(p q) - sqrt((1 - p)(1 - q))).

    With sqrt(a) = cos(alpha) and cos(theta) = 1 - delta / 2, the shrunk probability is
    cos^2(alpha + theta), or 0 once alpha + theta >= pi / 2. With k = sqrt(b / a):

        s = (cos theta - k sin theta)^2,   w = 1 - s = sin theta (sin theta (1 - k^2) + 2 k cos theta)
    """
    cos_theta = max(1.0 - delta / 2.0, -1.0)
    sin_theta = math.sqrt(1.0 - cos_theta * cos_theta)
    k = torch.sqrt(b / a).clamp_max(torch.finfo(a.dtype).max)  # inf * sin(theta) = 0 * inf would be NaN
    # (no alpha= arguments: under torch.compile(dynamic=True) a symbolic alpha is mis-applied)
    root = k.mul(-sin_theta).add_(cos_theta)
    moving = root > 0
    s = root.clamp_min_(0.0).square_()
    w = torch.rsub(k.square(), 1.0).mul_(sin_theta).add_(k.mul(2.0 * cos_theta)).mul_(sin_theta)
    return s, torch.where(moving, w, torch.ones_like(w))


# --- forward KL: fixed-length Halley iteration -------------------------------------------


KL_ITERATIONS = {torch.float64: 3, torch.float32: 3}
KL_FLOAT32_TWO_STEP_MIN_DELTA = 0.02
"""From this radius up, two Halley steps reach float32 accuracy (worst relative error 4.4e-6 at delta = 0.02)."""
EXP_FLOOR = 40.0


def kl_halley_steps(dtype: torch.dtype, delta: float, fused: bool = False) -> int:
    """Halley steps that reach the accuracy of ``dtype``: 3, or 2 for float32 from delta = 0.02 on.
    The fused (torch.compile) kernel keeps three: it measured faster that way on CPU (30 ms vs
    44 ms per 1M tokens)."""
    if dtype == torch.float32 and delta >= KL_FLOAT32_TWO_STEP_MIN_DELTA and not fused:
        return 2
    return KL_ITERATIONS[dtype]


def kl_shrink(a: Tensor, b: Tensor, log_a: Tensor, log_b: Tensor, delta: float) -> tuple[Tensor, Tensor]:
    """Forward KL, g = a log(a / (a s)) + b log(b / (1 - a s)). In u = -log s:

        F(u)   = a u - b log(1 - a e^-u) + b log b - delta
        F'(u)  = a (1 - e^-u) / (1 - a e^-u),   F''(u) = a b e^-u / (1 - a e^-u)^2

    F is convex and increasing with a u^2 / (2 b) >= F + delta and asymptote a u + b log b, so
    the root lies in [max(sqrt(2 b delta / a), delta / a), (delta - b log b) / a]. Halley's
    iteration, u <- u - (F / F') / (1 - F F'' / (2 F'^2)), from the geometric mean of the outer
    ends converges to machine precision in 3 steps for float64 and float32 over
    p in [1e-12, 1 - 1e-10], delta in [0.01, 0.5] (tests/test_divergences.py); for float32 and
    delta >= 0.02, 2 steps already give a relative error below 5e-6.
    """
    # Written with in-place operations on five buffers: on CPU, allocating fresh 4-byte-per-token
    # tensors costs more than the arithmetic. a >= sqrt(tiny) keeps delta / a finite for any
    # delta and changes no result: below it s = 0 (lower side) or (1 - p) w / p = 0 (upper side).
    a = a.clamp_min(math.sqrt(torch.finfo(a.dtype).tiny))
    b_log_b = b * log_b
    u = torch.rsub(b_log_b, delta).div_(a).sqrt_()
    work = torch.mul(b, 2.0 * delta).div_(a).sqrt_().sqrt_()
    u.mul_(work)
    torch.maximum(u, torch.reciprocal(a, out=work).mul_(delta), out=u)
    e, w, m = torch.empty_like(u), torch.empty_like(u), torch.empty_like(u)
    for _ in range(kl_halley_steps(a.dtype, delta, fused=torch.compiler.is_compiling())):
        # e^-u below e^-40 changes nothing in 1 - a e^-u; capping it keeps products off the
        # (very slow) denormal range.
        torch.clamp(u, max=EXP_FLOOR, out=e).neg_().exp_()
        torch.mul(e, -1.0, out=w).add_(1.0)
        torch.mul(a, e, out=m).neg_().add_(1.0)
        value = torch.log(m, out=work).mul_(b).neg_().addcmul_(a, u).add_(b_log_b).sub_(delta)
        step = value.mul_(m).div_(a).div_(w)  # F / F'
        halley = e.mul_(b).div_(m).div_(w).mul_(step).mul_(-0.5).add_(1.0)  # 1 - F F'' / (2 F'^2)
        u.sub_(step.div_(halley))
    return exp_neg_and_complement(u)


def _kl_generator(u: Tensor) -> Tensor:
    return -torch.log(u) + u - 1


def _reverse_kl_generator(u: Tensor) -> Tensor:
    return torch.xlogy(u, u) - u + 1


def _reverse_kl_perspective(b: Tensor, y: Tensor, log_b: Tensor) -> tuple[Tensor, Tensor]:
    """b f(y / b) = y (log y - log b) - y + b and f'(y / b) = log y - log b, with no y / b."""
    log_ratio = torch.log(y) - log_b
    value = torch.where(y > 0, y * log_ratio, torch.zeros_like(y)) - y + b
    return value, log_ratio


KL = Divergence(
    "kl", _kl_generator, derivative=lambda u: 1 - 1 / u, slope_at_infinity=1.0, shrink=kl_shrink
)
TV = Divergence("tv", lambda u: torch.abs(u - 1) / 2, slope_at_infinity=0.5, bounds=tv_bounds)
CHI2 = Divergence("chi2", lambda u: torch.square(u - 1), bounds=chi2_bounds)
REVERSE_KL = Divergence(
    "reverse_kl", _reverse_kl_generator, derivative=torch.log, perspective=_reverse_kl_perspective
)
HELLINGER = Divergence(
    "hellinger",
    lambda u: torch.square(torch.sqrt(u) - 1),
    slope_at_infinity=1.0,
    shrink=hellinger_shrink,
)

DIVERGENCES: dict[str, Divergence] = {d.name: d for d in (KL, TV, CHI2, REVERSE_KL, HELLINGER)}


def get_divergence(divergence: str | Divergence) -> Divergence:
    """The built-in divergence called ``divergence``, or ``divergence`` itself."""
    if isinstance(divergence, Divergence):
        return divergence
    if isinstance(divergence, str) and divergence in DIVERGENCES:
        return DIVERGENCES[divergence]
    choices = ", ".join(sorted(DIVERGENCES))
    raise ValueError(
        f"divergence must be one of {choices} or a bandpo.Divergence, got {divergence!r}"
    )
