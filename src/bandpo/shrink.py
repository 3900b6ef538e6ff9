"""The one-sided trust-region problem that both sides of the Band operator reduce to.

For a two-point distribution (a, b), a + b = 1, and a convex generator f with f(1) = 0, the
*shrink* problem asks how far the outcome of probability ``a`` can shrink inside the
f-divergence ball of radius delta:

    s*(a) = min { s in [0, 1] : G(s) <= delta },
    G(s)  = a f(s) + b f((1 - a s) / b)                      (the complement absorbs the mass)

Two-point f-divergences are symmetric under relabelling the outcomes, g_f(p, r) = g_f(1 - p, s)
with s = (1 - r p) / (1 - p). Hence, for a sampled token of old probability p,

    lower(p) = s*(a = p)                                   (the token shrinks)
    upper(p) = 1 + (1 - p) (1 - s*(a = 1 - p)) / p         (its complement shrinks)

Solvers return the pair (s, w) with w = 1 - s, each accurate in absolute terms and w accurate
relative to itself, so that the upper bound keeps full relative precision when w is tiny.

The generic solver below needs only f (and optionally f'); it works in u = -log s, where both
s = exp(-u) and w = -expm1(-u) keep full relative precision, with a bracketed Newton iteration
of fixed length (no data-dependent control flow, no host synchronisation).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Protocol

import torch
from torch import Tensor

from bandpo.numerics import exp_neg_and_complement, expm1

Generator = Callable[[Tensor], Tensor]


class ShrinkSolver(Protocol):
    def __call__(
        self, a: Tensor, b: Tensor, log_a: Tensor, log_b: Tensor, delta: float
    ) -> tuple[Tensor, Tensor]:
        """Return (s, w = 1 - s) for outcome probabilities a, complements b = 1 - a, and their logs.

        The logs are passed because the caller has them to full precision where a or b underflow
        (from log p and log1p(-p)); a solver reads what it needs: reverse_kl both, the generic
        solver log b, kl and hellinger neither.
        """
        ...


def two_sided_bounds(log_p: Tensor, delta: float, shrink: ShrinkSolver) -> tuple[Tensor, Tensor]:
    """Ratio bounds (lower, upper) for old log-probabilities ``log_p`` (<= 0) from a shrink solver.

        lower = s*(p),   upper = 1 + (1 - p) w*(1 - p) / p

    1 / p is applied as t t with t = p^(-1/2): a subnormal p carries only a few significant bits,
    while t is normal down to p = 1e-77 (float32), and the bound can be finite there.
    """
    p = torch.exp(log_p)
    p_complement = -expm1(log_p)
    min_log = torch.finfo(log_p.dtype).min
    log_p_complement = torch.log(p_complement).clamp_min(min_log)
    log_p = log_p.clamp_min(min_log)
    lower, _ = shrink(p, p_complement, log_p, log_p_complement, delta)
    _, w_complement = shrink(p_complement, p, log_p_complement, log_p, delta)
    # w >= tiny keeps p = 0 at +inf rather than 0/0 when the complement cannot move at all.
    tiny = torch.finfo(log_p.dtype).tiny
    t = torch.mul(log_p, -0.5).exp_()
    upper = w_complement.clamp_min(tiny).mul_(p_complement).mul_(t).mul_(t).add_(1.0)
    return lower, upper


def generator_derivative_by_autograd(generator: Generator) -> Generator:
    """f' obtained from f by reverse-mode autograd (f must be elementwise)."""

    def derivative(x: Tensor) -> Tensor:
        with torch.enable_grad():
            leaf = x.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(generator(leaf).sum(), leaf)
        return grad

    return derivative


class Perspective(Protocol):
    def __call__(self, b: Tensor, y: Tensor, log_b: Tensor) -> tuple[Tensor, Tensor]:
        """(b f(y / b), f'(y / b)): the complement's term of g_f and the slope of f there."""
        ...


def perspective_from_generator(
    generator: Generator, derivative: Generator, slope_at_infinity: float
) -> Perspective:
    """b f(y / b) and f'(y / b) from f and f'; where b = 0, their limits y * f'(inf) and f'(inf).

    Where y / b exceeds R = 1 / tiny (b subnormal, say), b f(y / b) = y f(r) / r is taken at r = R,
    where f(r) / r has reached its limit f'(inf) to rounding for generators of finite slope (kl-like)
    and is far above any delta for steeper ones. (The overflowing ratio would give inf - inf = NaN.)
    """

    def perspective(b: Tensor, y: Tensor, log_b: Tensor) -> tuple[Tensor, Tensor]:
        largest = 1.0 / torch.finfo(y.dtype).tiny
        positive = b > 0
        safe_b = torch.where(positive, b, torch.ones_like(b))
        ratio = y / safe_b
        far = ratio > largest
        ratio = torch.where(far, torch.full_like(ratio, largest), ratio)
        value = torch.where(far, y * (generator(ratio) / largest), safe_b * generator(ratio))
        limit = torch.where(y > 0, y * slope_at_infinity, torch.zeros_like(y))
        value = torch.where(positive, value, limit)
        slope = torch.where(positive, derivative(ratio), torch.full_like(y, slope_at_infinity))
        return value, slope

    return perspective


def solve_shrink_generic(
    generator: Generator,
    derivative: Generator,
    perspective: Perspective,
    a: Tensor,
    b: Tensor,
    log_b: Tensor,
    delta: float,
    iterations: int,
) -> tuple[Tensor, Tensor]:
    """Solve G(u) = delta for u = -log s by safeguarded Newton on a shrinking bracket.

        G(u)  = a f(s) + b f(y / b),          s = e^-u, y = 1 - a s = b + a (1 - s)
        G'(u) = a s [f'(y / b) - f'(s)]

    G is increasing in u (the ball is convex and contains s = 1). Each of the ``iterations``
    steps takes the Newton point when it falls strictly inside the bracket and the bracket's
    midpoint otherwise, then shrinks the bracket; u = +inf (s = 0) when G(inf) <= delta.
    """
    u_max = -math.log(torch.finfo(a.dtype).tiny) + 1.0  # e^-u_max is below the smallest normal float

    def objective(u: Tensor) -> tuple[Tensor, Tensor]:
        s = torch.exp(-u)
        y = b + a * -expm1(-u)
        own = torch.where(a > 0, a * generator(s), torch.zeros_like(a))
        complement, complement_slope = perspective(b, y, log_b)
        return own + complement - delta, a * s * (complement_slope - derivative(s))

    zeros = torch.zeros_like(a)
    saturated = objective(torch.full_like(a, float("inf")))[0] <= 0
    lo, hi = zeros, torch.full_like(a, u_max)
    # Start from the quadratic (chi-square-like) model G ~ f''(1) a u^2 / (2 b), f''(1) ~ 1.
    u = torch.sqrt(2 * delta * b / a.clamp_min(torch.finfo(a.dtype).tiny)).clamp(max=u_max / 2)
    u = torch.where(u > 0, u, torch.full_like(u, u_max / 2))
    for _ in range(iterations):
        value, slope = objective(u)
        lo = torch.where(value < 0, u, lo)
        hi = torch.where(value >= 0, u, hi)
        newton = u - value / slope
        inside = (newton > lo) & (newton < hi)
        u = torch.where(inside, newton, 0.5 * (lo + hi))
    u = torch.where(saturated, torch.full_like(u, float("inf")), u)
    u = torch.where(torch.isnan(a), a, u)  # a NaN objective never moves the bracket: keep the NaN
    return exp_neg_and_complement(u)
