"""A 50-digit reference for the Band bounds: bisection on g_f(p, q / p) = delta with mpmath."""

from __future__ import annotations

import mpmath

mpmath.mp.dps = 50


def two_point_divergence(name: str, p: mpmath.mpf, q: mpmath.mpf) -> mpmath.mpf:
    """D_f(Bernoulli(q) || Bernoulli(p)) for the built-in divergences, written in q."""

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
    raise KeyError(name)


def reference_bounds(name: str, log_p: float, delta: float) -> tuple[mpmath.mpf, mpmath.mpf]:
    """(lower, upper) ratio bounds to about 50 significant digits."""
    p = mpmath.exp(mpmath.mpf(log_p))
    delta = mpmath.mpf(delta)

    def g(q):
        return two_point_divergence(name, p, q)

    def bisect(inside, outside):
        # g(inside) <= delta < g(outside); 200 halvings in log space near 0, linear otherwise
        for _ in range(200):
            mid = (inside + outside) / 2
            if g(mid) <= delta:
                inside = mid
            else:
                outside = mid
        return inside

    upper = 1 / p if g(mpmath.mpf(1)) <= delta else bisect(p, mpmath.mpf(1)) / p
    if g(mpmath.mpf(0)) <= delta:
        lower = mpmath.mpf(0)
    else:
        # the lower root can be astronomically small: bisect its logarithm
        lo_log, hi_log = mpmath.log(p) - 10 / p * (1 + 1 / delta) - 50, mpmath.log(p)
        for _ in range(200):
            mid = (lo_log + hi_log) / 2
            if g(mpmath.exp(mid)) <= delta:
                hi_log = mid
            else:
                lo_log = mid
        lower = mpmath.exp(hi_log) / p
    return lower, upper
