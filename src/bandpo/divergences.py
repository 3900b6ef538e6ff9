"""f-divergences and their one-sided (shrink) solutions.

A divergence is its convex generator f with f(1) = 0,

    D_f(Q || P) = sum_b P(b) f(Q(b) / P(b)).

Built in: ``kl`` (the paper's forward KL(pi_old || pi_new), f(u) = -log u + u - 1), ``tv``
(f(u) = |u - 1| / 2), ``chi2`` (Pearson, f(u) = (u - 1)^2), ``reverse_kl``
(f(u) = u log u - u + 1) and ``hellinger`` (squared, f(u) = (sqrt(u) - 1)^2). Closed forms where
they exist, fixed-length Halley iterations for ``kl`` and ``reverse_kl``, and the generic solver of
`bandpo.shrink` for any user-defined generator:

    >>> import math, torch, bandpo
    >>> js = bandpo.Divergence(  # Jensen-Shannon; lim f(x)/x decides the bound at p = 1 exactly
    ...     "js",
    ...     lambda u: torch.xlogy(u, 2 * u / (1 + u)) + torch.log(2 / (1 + u)),
    ...     slope_at_infinity=math.log(2),
    ... )
    >>> old_log_probs = torch.log(torch.tensor([0.08, 0.5, 0.9], dtype=torch.float64))
    >>> lower, upper = bandpo.band(old_log_probs, 0.05, js)
    >>> [round(x, 4) for x in lower.tolist()], [round(x, 4) for x in upper.tolist()]
    ([0.0211, 0.5657, 0.8098], [3.0126, 1.4343, 1.103])
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

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
GENERIC_ITERATIONS = 80
"""Steps of the generic solver unless a Divergence sets ``iterations``."""


@dataclass(frozen=True)
class Divergence:
    """An f-divergence usable by `bandpo.band`.

    Args:
        name: short identifier shown in errors, metrics and plots.
        generator: f, elementwise on tensors, convex on [0, inf) with f(1) = 0. The generic solver
            is as precise as f near u = 1, where f(u) ~ (u - 1)^2: add its terms so that they do
            not round against 1 first, e.g. -log(u) + (u - 1) rather than -log(u) + u - 1.
        derivative: f'; obtained by autograd from ``generator`` when omitted.
        slope_at_infinity: lim_{x -> inf} f(x) / x, the cost of moving mass onto an outcome of
            probability 0 (decides the bound at p = 1 exactly; +inf for chi2-like generators).
        shrink: a solver of the one-sided problem (see `bandpo.shrink`).
        perspective: (b, y, log b) -> (b f(y / b), f'(y / b)) for the generic solver, written to
            stay finite when y / b overflows; formed from f and f' when omitted.
        bounds: a direct (lower, upper) formula from old log-probabilities.
        iterations: steps of the generic solver (each halves the bracket at worst); 80 when omitted.

    ``generator``, ``derivative``, ``slope_at_infinity`` and ``perspective`` describe f. The bounds
    come from exactly one solver: ``bounds`` if given, else ``shrink``, else the generic solver
    (which alone reads ``iterations``). Giving ``bounds`` and ``shrink`` together, or
    ``iterations`` with either, is refused rather than silently ignored.
    """

    name: str
    generator: Generator
    derivative: Generator | None = None
    slope_at_infinity: float = math.inf
    shrink: ShrinkSolver | None = None
    perspective: Perspective | None = None
    bounds: BoundsFunction | None = None
    iterations: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"Divergence name must be a non-empty string, got {self.name!r}")
        if self.bounds is not None and self.shrink is not None:
            raise ValueError(f"Divergence {self.name!r}: give bounds or shrink, not both (each is a whole solver)")
        if self.iterations is not None:
            if self.bounds is not None or self.shrink is not None:
                raise ValueError(
                    f"Divergence {self.name!r}: iterations sets the generic solver's steps, "
                    "which a divergence with bounds or shrink never runs"
                )
            if isinstance(self.iterations, bool) or not isinstance(self.iterations, int) or self.iterations < 1:
                raise ValueError(f"Divergence {self.name!r}: iterations must be a positive int, got {self.iterations!r}")
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
        iterations = GENERIC_ITERATIONS if self.iterations is None else self.iterations
        return solve_shrink_generic(self.generator, derivative, perspective, a, b, log_b, delta, iterations)


# --- closed forms -------------------------------------------------------------------------


def tv_bounds(log_p: Tensor, delta: float) -> tuple[Tensor, Tensor]:
    """Total variation, g = |q - p|:  r = 1 -/+ delta / p, clamped to the simplex [0, 1/p].

    With t = p^(-1/2), delta / p = (delta t) t and 1 / p = t t overflow only where their values do.
    (No log(delta): under torch.compile, math.log of the symbolic delta would compile one kernel per
    radius.)
    """
    t = torch.mul(log_p, -0.5).exp_()
    reach = torch.mul(t, delta).mul_(t)
    upper = torch.minimum(reach.add(1.0), t.square_())
    return reach.neg_().add_(1.0).clamp_min_(0.0), upper


def chi2_bounds(log_p: Tensor, delta: float) -> tuple[Tensor, Tensor]:
    """Pearson chi-square, g = (q - p)^2 / (p (1 - p)):  r = 1 -/+ sqrt(delta (1 - p) / p).

    The reach is (delta^(1/4) t)^2 sqrt(1 - p) with t = p^(-1/4): 1 - p keeps its precision near
    p = 1, and no intermediate overflows where the bound is finite (sqrt(delta / p) can be finite
    where p^(-1/2) is not).
    """
    quarter = torch.mul(log_p, -0.25).exp_().mul_(math.sqrt(math.sqrt(delta)))
    reach = quarter.square_().mul_(expm1(log_p).neg_().sqrt_())
    upper = torch.minimum(reach.add(1.0), torch.exp(-log_p))
    return reach.neg_().add_(1.0).clamp_min_(0.0), upper


def hellinger_shrink(
    a: Tensor, b: Tensor, log_a: Tensor, log_b: Tensor, delta: float
) -> tuple[Tensor, Tensor]:
    """Squared Hellinger, g = 2 (1 - sqrt(p q) - sqrt((1 - p)(1 - q))).

    With sqrt(a) = cos(alpha) and cos(theta) = 1 - delta / 2, the shrunk probability is
    cos^2(alpha + theta), or 0 once alpha + theta >= pi / 2. With k = sqrt(b / a):

        s = (cos theta - k sin theta)^2,   w = 1 - s = sin theta (sin theta (1 - k^2) + 2 k cos theta)

    sin theta = sqrt(delta (1 - delta / 4)) exactly (1 - cos^2 theta would cancel for small delta).
    """
    cos_theta = max(1.0 - delta / 2.0, -1.0)
    sin_theta = math.sqrt(max(delta * (1.0 - delta / 4.0), 0.0))
    k = torch.sqrt(b / a).clamp_max(torch.finfo(a.dtype).max)  # inf * sin(theta) = 0 * inf would be NaN
    # (no alpha= arguments: under torch.compile(dynamic=True) a symbolic alpha is mis-applied)
    root = k.mul(-sin_theta).add_(cos_theta)
    moving = root > 0
    s = root.clamp_min_(0.0).square_()
    w = torch.rsub(k.square(), 1.0).mul_(sin_theta).add_(k.mul(2.0 * cos_theta)).mul_(sin_theta)
    return s, torch.where(moving, w, torch.ones_like(w))


# --- forward KL: fixed-length Halley iteration -------------------------------------------


KL_ITERATIONS = {torch.float64: 3, torch.float32: 2}
"""Halley steps from kl_shrink's starting point that reach each dtype's rounding level for every p
and every delta in [1e-6, 1e3] (bandpo.band.DELTA_RANGE): relative error below 2e-15 (float64) and
5e-7 (float32); two float64 steps would leave 3e-12."""
KL_FUSED_FLOAT32_ITERATIONS = 3
"""The fused (torch.compile) kernel takes a third float32 step: with an earlier starting point that
measured faster on CPU than two steps (``benchmarks/band_speed.py``)."""
EXP_FLOOR = 40.0


def kl_halley_steps(dtype: torch.dtype, fused: bool = False) -> int:
    """Halley steps of kl_shrink for ``dtype``, one rule for the PyTorch and the C kernels."""
    if dtype == torch.float32 and fused:
        return KL_FUSED_FLOAT32_ITERATIONS
    return KL_ITERATIONS[dtype]


def kl_shrink(a: Tensor, b: Tensor, log_a: Tensor, log_b: Tensor, delta: float) -> tuple[Tensor, Tensor]:
    """Forward KL, g = a log(a / (a s)) + b log(b / (1 - a s)). In u = -log s, with w = 1 - e^-u
    and m = 1 - a e^-u = b + a w:

        F(u)   = a u - b log(1 + a w / b) - delta
        F'(u)  = a w / m,   F''(u) = a b e^-u / m^2

    Written with log1p and an exact w, F keeps its precision where b is close to 1 (the
    textbook b log b - b log m cancels down to the rounding of b and m there) and near u = 0.
    F is convex and increasing; F + delta <= a u, so the root is at least delta / a, and
    F + delta = a u^2 / (2 b) - kappa u^3 + O(u^4), kappa = a / 6 + a^2 / (2 b) + a^3 / (3 b^2), so
    for a small root (a + b = 1)

        u ~ L + kappa b L^2 / a = L + delta (1 + a) / (3 a),   L = sqrt(2 b delta / a).

    Halley's iteration, u <- u - (F / F') / (1 - F F'' / (2 F'^2)), starts from the larger of the
    two, which lies below the root and less than 19% below it for every p and delta in [1e-6, 1e3]
    (the worst case is a << delta ~ 4.5 a, where the root is about delta / a + 1); from there
    2 steps reach float32 accuracy and 3 steps float64 accuracy (KL_ITERATIONS).
    """
    # In place on a few buffers: on CPU, allocating fresh 4-byte-per-token tensors costs more than
    # the arithmetic. a >= sqrt(tiny) keeps delta / a finite and changes no result: below it s = 0
    # (lower side) or (1 - p) w / p = 0 (upper side). b >= tiny in 1 / b keeps a w / b finite;
    # where b < tiny, b log(1 + a w / b) is below 1e3 tiny either way.
    # Each buffer below holds one quantity; the chained in-place calls build it from its terms.
    tiny = torch.finfo(a.dtype).tiny
    a = a.clamp_min(math.sqrt(tiny))
    inverse_b = b.clamp_min(tiny).reciprocal_()
    inverse_a = torch.reciprocal(a)
    u = torch.add(inverse_a, 1.0).mul_(delta / 3.0).add_(torch.mul(b, 2.0 * delta).mul_(inverse_a).sqrt_())
    torch.maximum(u, torch.mul(inverse_a, delta), out=u)
    w, m, newton, halley = (torch.empty_like(u) for _ in range(4))
    for _ in range(kl_halley_steps(a.dtype, fused=torch.compiler.is_compiling())):
        # F needs w to full relative precision; e^-u = 1 - w only shapes Halley's correction.
        # Past u = 40, 1 - e^-u is 1 in float64 too, and exp stays off its slow underflow path.
        w = expm1(torch.clamp(u, max=EXP_FLOOR, out=w).neg_(), out=w).neg_()
        torch.addcmul(b, a, w, out=m)
        # F / F' = (a u - b log1p(a w / b) - delta) m / (a w)
        torch.mul(w, inverse_b, out=newton).mul_(a).log1p_().mul_(b).neg_().addcmul_(a, u).sub_(delta)
        newton.mul_(m).div_(a).div_(w)
        # 1 - F F'' / (2 F'^2) = 1 - (F / F') (1 - w) b / (2 m w)
        torch.neg(w, out=halley).add_(1.0).mul_(b).div_(m).div_(w).mul_(newton).mul_(-0.5).add_(1.0)
        u.addcdiv_(newton, halley, value=-1.0)
    return exp_neg_and_complement(u)


# --- reverse KL: fixed-length Halley iteration -------------------------------------------


REVERSE_KL_ITERATIONS = {torch.float64: 3, torch.float32: 2}
"""Halley steps of reverse_kl_shrink, on every kernel. Measured over p and every delta in
[1e-6, 1e3] (bandpo.band.DELTA_RANGE): its starting point is less than 37% from the root (relative
to u below u = 1, absolute above); one step leaves 2.3e-3, two 9.1e-10 and three the float64
rounding level (2e-13). Where the root is within D / lambda < 1e-3 of saturation, the start is
within 0.006 and two steps reach the rounding level."""


def reverse_kl_shrink(
    a: Tensor, b: Tensor, log_a: Tensor, log_b: Tensor, delta: float
) -> tuple[Tensor, Tensor]:
    """Reverse KL, g = KL(Bern(a s) || Bern(a)). In u = -log s, with w = 1 - e^-u, m = 1 - a s
    = b + a w and l = log(m / b) = log1p(a w / b):

        G(u)   = a s log s + m l = m l - a s u,     increasing from 0 to G(inf) = lambda = -log b
        G'(u)  = a s k,   k = u + l,     G''(u) = a s (1 + a s / m - k)

    so s = 0 exactly when lambda <= delta (saturation). Otherwise the root is started from the
    smaller of two upper bounds of it, each tight in its own regime, and no lower than
    sqrt(2 b delta / a), a lower bound (G' <= a u / b, so G <= a u^2 / (2 b)):

    * Near saturation (s small): G(inf) - G(u) = a s (u + lambda) - m log m <= a s (u + 1 + lambda)
      (-m log m <= 1 - m = a s), so with D = lambda - delta the root has u <= t - 1 - lambda, where
      t - log t = Lambda = 1 + lambda + log(a / D) (t = -W_-1(-e^-Lambda), Lambert's W). t is taken
      as the larger of the asymptotic Lambda + log Lambda (1 + 1 / Lambda) (at most 0.005 above t)
      and the branch-point series 1 + sigma + sigma^2 / 3, sigma = sqrt(2 (Lambda - 1)) (below t);
      the larger is less than 0.09 below t.
    * Small u: G(w) >= (b / a) phi(a w / b) with phi(v) = (1 + v) log(1 + v) - v (the difference
      is a f(1 - w) - (b^2 / a) phi(a w / b), whose second derivative in w, a / (1 - w) - a b / m,
      is >= 0, as are its value and slope at 0). This covers the chi-square regime
      (G ~ a u^2 / (2 b)) and b << delta, where the complement's term dominates. So
      w <= (b / a) phi^-1(R), R = a delta / b, and u <= -log(1 - w). phi^-1(R) is bounded by
      Bernstein's R / 3 + sqrt(R^2 / 9 + 2 R) (phi(v) >= v^2 / (2 (1 + v / 3)); tight for small R)
      and, for large R, (R - 1) / (l1 - 1) - 1 with l1 = rho - log(rho - 1), rho = log R: one step
      of the alternating iteration l = log(R - 1) - log(l - 1) for l = log(1 + v), from above
      (measured above phi^-1; the smaller of the two is at most 25% high).

    The start lies less than 37% from the root (relative to u below u = 1, absolute above) for
    every p and every delta in [1e-6, 1e3]: measured on a dense grid of (p, delta) on both sides,
    with saturation approached to D / lambda = 1e-12. Halley's iteration,
    u <- u - (G - delta) / G' / (1 - (G - delta) G'' / (2 G'^2)), then reaches float32 accuracy in
    two steps and float64 accuracy in three (REVERSE_KL_ITERATIONS). Near saturation G is
    lambda - K e^-u to first order, on which Halley's step maps an error x in u to
    x - 2 tanh(x / 2) ~ x^3 / 12: it never overshoots, from any start.

    Precision: lambda = log1p(a / b), not -log b, which is rounded to absolute rather than relative
    precision where b is close to 1. Where b is subnormal or 0 with log b finite (p underflowed, on
    the upper side), a w / b would overflow: b is read as the smallest normal float and l
    corrected by log(tiny / b), from log b. Near saturation the rounding of G, about
    eps (lambda + delta), moves s by at most a few eps in absolute terms (s ~ D / (a (u + 1 +
    lambda))): within the bounds' tolerance, though not to relative precision when s is tiny.
    """
    # The iteration runs on y = -u, in place on a few buffers (as kl_shrink). a >= sqrt(tiny) and
    # u <= -log(tiny) / 2 - 1 keep a s normal, off the slow subnormal paths: below a = sqrt(tiny)
    # every bound saturates (lambda ~ a < delta), and where the root lies beyond that u, capping
    # it changes s by less than 1e-18.
    finfo = torch.finfo(a.dtype)
    tiny = finfo.tiny
    cap = -0.5 * math.log(tiny) - 1.0
    a = a.clamp_min(math.sqrt(tiny))
    # Below log b = -2.5 log(max) (-1774 in float64, -222 in float32; log b = -inf where b = 0) the
    # root is taken as u = 0: the lower side has b = 1 - p = 0 there, and s = 1 exactly; the upper
    # side has 1 / p = inf, and its bound is +inf whatever w. Above it, every value stays finite.
    floor_b = -2.5 * math.log(finfo.max)
    vanishing = log_b < floor_b
    shift = torch.rsub(log_b, math.log(tiny)).clamp_(0.0, math.log(tiny) - floor_b)  # log(tiny / b)
    a_over_b = torch.div(a, b.clamp_min(tiny))
    lam = torch.log1p(a_over_b).add_(shift)  # -log b, to relative precision
    minus_a_over_b = a_over_b.neg_()
    excess = torch.sub(lam, delta)  # D
    saturated = excess <= 0
    # Near saturation: u <= log(a / D) + t - Lambda; everything below is in Lambda - 1 >= 0.
    log_d_over_a = excess.clamp_min_(tiny).log_().sub_(log_a)
    big_lambda = torch.sub(lam, log_d_over_a).clamp_min_(0.0)  # Lambda - 1
    branch = torch.mul(big_lambda, 2.0).sqrt_().add_(big_lambda, alpha=-1.0 / 3.0)  # sigma - sigma^2 / 6
    log_big_lambda = torch.log1p(big_lambda)
    asymptotic = torch.addcdiv(log_big_lambda, log_big_lambda, big_lambda.add_(1.0))
    y_saturation = torch.maximum(asymptotic, branch, out=asymptotic).neg_().add_(log_d_over_a)
    # Small u: w <= (b / a) phi^-1(a delta / b).
    b_over_a = torch.div(b, a)
    chi2_square = torch.mul(b_over_a, 2.0 * delta)  # 2 b delta / a
    bernstein = torch.add(chi2_square, delta * delta / 9.0).sqrt_().add_(delta / 3.0)
    rho = torch.mul(a, delta / math.e).log_().add_(lam)  # log(R) - 1
    ell = torch.clamp_min(rho, 1.0).log_()
    ell = torch.sub(rho, ell, out=ell).clamp_min_(tiny).reciprocal_().mul_(delta).sub_(b_over_a)
    y = torch.minimum(bernstein, ell, out=bernstein).clamp_max_(1.0).neg_().log1p_()
    torch.maximum(y, y_saturation, out=y)
    torch.minimum(y, chi2_square.sqrt_().neg_(), out=y).clamp_min_(-cap)
    s, w, m, ell, value = (torch.empty_like(y) for _ in range(5))
    for _ in range(REVERSE_KL_ITERATIONS[y.dtype]):
        torch.exp(y, out=s).mul_(a)  # a s
        w = expm1(y, out=w)  # -w
        torch.addcmul(b, a, w, value=-1.0, out=m)
        torch.mul(w, minus_a_over_b, out=ell).log1p_().add_(shift)  # l = log(m / b)
        torch.mul(m, ell, out=value).addcmul_(s, y).sub_(delta)  # G - delta
        k = ell.sub_(y)
        newton = value.div_(s)  # (G - delta) / G' = newton / k
        shape = s.div_(m).add_(1.0).sub_(k).div_(k)  # G'' / G' = shape
        # u <- u - (newton / k) / (1 - newton shape / (2 k))
        y.add_(newton.div_(torch.addcmul(k, newton, shape, value=-0.5, out=shape))).clamp_min_(-cap)
    y = torch.where(saturated, -math.inf, y)
    return exp_neg_and_complement(torch.where(vanishing, 0.0, y).neg_())


# The generators add their terms in the order that keeps f(u) ~ (u - 1)^2 / 2 precise near u = 1
# (u - 1 is exact there; -log(u) + u - 1 evaluated left to right rounds 1 + (u - 1)^2 / 2 first).


def _kl_generator(u: Tensor) -> Tensor:
    return -torch.log(u) + (u - 1)


def _reverse_kl_generator(u: Tensor) -> Tensor:
    return torch.xlogy(u, u) + (1 - u)


def _reverse_kl_perspective(b: Tensor, y: Tensor, log_b: Tensor) -> tuple[Tensor, Tensor]:
    """b f(y / b) = y log(y / b) - (y - b) and f'(y / b) = log(y / b), with no y / b.

    For y < 2 b, y - b is exact and log(y / b) = log1p((y - b) / b) keeps its precision as y -> b,
    where the value is (y - b)^2 / (2 b) and the two terms cancel to first order; beyond,
    log y - log b.
    """
    increment = y - b
    near = y < 2 * b
    safe_b = torch.where(near, b, torch.ones_like(b))
    log_ratio = torch.where(near, torch.log1p(increment / safe_b), torch.log(y) - log_b)
    value = torch.where(y > 0, y * log_ratio, torch.zeros_like(y)) - increment
    return value, log_ratio


KL = Divergence(
    "kl", _kl_generator, derivative=lambda u: 1 - 1 / u, slope_at_infinity=1.0, shrink=kl_shrink
)
TV = Divergence("tv", lambda u: torch.abs(u - 1) / 2, slope_at_infinity=0.5, bounds=tv_bounds)
CHI2 = Divergence("chi2", lambda u: torch.square(u - 1), bounds=chi2_bounds)
REVERSE_KL = Divergence(
    "reverse_kl",
    _reverse_kl_generator,
    derivative=torch.log,
    perspective=_reverse_kl_perspective,
    shrink=reverse_kl_shrink,
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
