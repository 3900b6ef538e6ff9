"""A 50-digit reference for the Band bounds: bisection on g_f(p, q / p) = delta with mpmath.

Both roots are bisected in log q, so they keep 50 significant digits however small q / p is,
and the working precision grows with -log10(-log p) so that 1 - p is resolved when p is
within 1e-50 (or far closer) of 1.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache

import mpmath

mpmath.mp.dps = 50
DIGITS = 50

TwoPoint = Callable[[mpmath.mpf, mpmath.mpf], mpmath.mpf]


def two_point_divergence(name: str, p: mpmath.mpf, q: mpmath.mpf) -> mpmath.mpf:
    """D_f(Bernoulli(q) || Bernoulli(p)) for the built-in divergences (and "js"), written in q."""

    def xlogy(x, y):
        return mpmath.mpf(0) if x == 0 else x * mpmath.log(y)

    if name == "kl":
        if q <= 0 or q >= 1:
            return mpmath.inf
        return p * mpmath.log(p / q) + (1 - p) * mpmath.log((1 - p) / (1 - q))
    if name == "reverse_kl":
        return xlogy(q, q / p) + xlogy(1 - q, (1 - q) / (1 - p))
    if name == "tv":
        return abs(q - p)
    if name == "chi2":
        return (q - p) ** 2 / (p * (1 - p))
    if name == "hellinger":
        return 2 * (1 - mpmath.sqrt(p * q) - mpmath.sqrt((1 - p) * (1 - q)))
    if name == "js":  # Jensen-Shannon, a user-defined divergence in the tests
        m = (p + q) / 2  # KL(Q || M) + KL(P || M), M the mixture
        return (
            xlogy(q, q / m) + xlogy(1 - q, (1 - q) / (1 - m))
            + xlogy(p, p / m) + xlogy(1 - p, (1 - p) / (1 - m))
        )
    raise KeyError(name)


@cache
def reference_bounds(
    name: str | TwoPoint, log_p: float, delta: float
) -> tuple[mpmath.mpf, mpmath.mpf]:
    """(lower, upper) ratio bounds to about 50 significant digits, for 0 < p < 1.

    ``name`` is a built-in divergence or a function g(p, q) of the two-point divergence.
    Results are cached: tests share grids.
    """
    log_p = mpmath.mpf(log_p)
    extra = max(0, int(-mpmath.log10(-log_p)))  # digits needed to see 1 - p at all
    with mpmath.workdps(DIGITS + extra + 10):
        p = mpmath.exp(log_p)
        delta = mpmath.mpf(delta)

        def g(q):
            if callable(name):
                return name(p, q)
            return two_point_divergence(name, p, q)

        def bisect_log(inside, outside, steps):
            """The log q between inside and outside where g crosses delta."""
            for _ in range(steps):
                mid = (inside + outside) / 2
                if g(mpmath.exp(mid)) <= delta:
                    inside = mid
                else:
                    outside = mid
            return inside

        steps = 3 * DIGITS + 15  # 2^-165 of a bracket of width <= 1000
        if g(mpmath.mpf(1)) <= delta:
            upper = 1 / p
        else:
            upper = mpmath.exp(bisect_log(log_p, mpmath.mpf(0), steps) - log_p)
        if g(mpmath.mpf(0)) <= delta:
            lower = mpmath.mpf(0)
        else:
            # the lower root can be astronomically small: push log q down until infeasible
            depth, doublings = mpmath.mpf(1), 0
            while g(mpmath.exp(log_p - depth)) <= delta:
                depth, doublings = 2 * depth, doublings + 1
            lower = mpmath.exp(bisect_log(log_p, log_p - depth, steps + doublings) - log_p)
    return +lower, +upper
