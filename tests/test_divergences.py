"""The built-in f-divergences against the theory of SPEC §2 and a 50-digit reference.

For the sampled token's old probability p and q = r p its new probability,

    g_f(p, r) = p f(r) + (1 - p) f((1 - r p) / (1 - p))       (D_f of two Bernoulli laws)
    upper(p)  = max { r in [1, 1/p] : g_f(p, r) <= delta }
    lower(p)  = min { r in [0, 1]   : g_f(p, r) <= delta }

for every radius delta in bandpo.band.DELTA_RANGE = [1e-6, 1e3].
"""

from __future__ import annotations

import math

import mpmath
import numpy as np
import pytest
import torch
from mp_reference import reference_bounds, two_point_divergence

import bandpo
from bandpo import DIVERGENCES, Divergence, band
from bandpo.divergences import reverse_kl_shrink

NAMES = ("kl", "tv", "chi2", "reverse_kl", "hellinger")
ALL_FLOATS = [torch.float64, torch.float32, torch.bfloat16, torch.float16]


def log_p_grid(points: int) -> np.ndarray:
    """log p for p in [1e-12, 1 - 1e-10], log-spaced towards both ends.

    The values are float32-representable, so a float32 input is the same number and shares
    its reference with the float64 input.
    """
    half = points // 2
    small = np.log(np.logspace(-12, math.log10(0.5), half))
    near_one = np.log1p(-np.logspace(-10, math.log10(0.5), points - half))
    grid = np.unique(np.concatenate([small, near_one]).astype(np.float32))
    return grid.astype(np.float64)


GRID = log_p_grid(40)
DELTAS = (1e-6, 1e-4, 0.01, 0.05, 0.5, 10.0, 1e3)
"""Both ends of DELTA_RANGE, the radii used in practice, and between."""


def assert_close_to_reference(got, reference, rtol, atol, label):
    """|got - ref| <= max(rtol |ref|, atol) for each pair, listing the worst offenders."""
    failures = []
    for i, (value, ref) in enumerate(zip(got, reference, strict=True)):
        error = abs(mpmath.mpf(value) - ref)
        tolerance = max(rtol * abs(ref), atol)
        if not error <= tolerance:
            failures.append((float(error / tolerance), i, value, mpmath.nstr(ref, 17)))
    failures.sort(reverse=True)
    assert not failures, f"{label}: {len(failures)} off the reference, worst " + "; ".join(
        f"#{i}: got {value!r}, reference {ref} (error {ratio:.3g} x tolerance)"
        for ratio, i, value, ref in failures[:4]
    )


# --- accuracy ------------------------------------------------------------------------------


NATIVE = ("kl", "tv", "chi2")  # the divergences of bandpo.cpu_kernels (float32 on the CPU)
FUSED = ("kl", "tv", "chi2", "reverse_kl")  # checked fused too (each dtype compiles once, for every delta)
TOLERANCES = {torch.float64: (1e-9, 1e-12), torch.float32: (2e-5, 1e-6)}  # (rtol, atol)


def kernel_cases():
    """(name, dtype, kernel, rtol, atol) for every divergence and kernel that computes it."""
    return [
        pytest.param(name, dtype, kernel, *TOLERANCES[dtype], id=f"{name}-{dtype_id}-{kernel}")
        for name in NAMES
        for dtype, dtype_id in ((torch.float64, "f64"), (torch.float32, "f32"))
        for kernel in ("eager", "native", "fused")
        if kernel == "eager"
        or (kernel == "native" and dtype == torch.float32 and name in NATIVE)
        or (kernel == "fused" and name in FUSED)
    ]


@pytest.mark.parametrize("delta", DELTAS)
@pytest.mark.parametrize("name, dtype, kernel, rtol, atol", kernel_cases())
def test_bounds_match_the_50_digit_reference(name, delta, dtype, kernel, rtol, atol):
    """|bound - exact root of g_f(p, r) = delta| <= max(rtol |exact|, atol) for p in
    [1e-12, 1 - 1e-10]; float32 is compared with the reference of its own (rounded) input."""
    log_p = torch.tensor(GRID, dtype=dtype)
    lower, upper = band(log_p, delta, name, kernel=kernel)
    references = [reference_bounds(name, float(x), delta) for x in log_p.tolist()]
    assert_close_to_reference(lower.tolist(), [r[0] for r in references], rtol, atol, "lower")
    assert_close_to_reference(upper.tolist(), [r[1] for r in references], rtol, atol, "upper")


@pytest.mark.parametrize(
    "dtype, kernel",
    [(torch.float64, "eager"), (torch.float32, "eager"), (torch.float32, "native")],
    ids=["f64-eager", "f32-eager", "f32-native"],
)
def test_kl_solver_is_exact_for_every_radius(dtype, kernel):
    """kl's Halley iteration, of fixed length, meets the tolerance at four radii per decade over all
    of DELTA_RANGE, through the regimes where its starting point is least accurate (p ~ delta / 4.5
    and 1 - p ~ delta, on either side)."""
    rtol, atol = TOLERANCES[dtype]
    log_p = torch.tensor(GRID, dtype=dtype)
    for delta in np.logspace(-6, 3, 37).tolist():
        lower, upper = band(log_p, delta, "kl", kernel=kernel)
        references = [reference_bounds("kl", float(x), delta) for x in log_p.tolist()]
        assert_close_to_reference(lower.tolist(), [r[0] for r in references], rtol, atol, f"lower, delta={delta:g}")
        assert_close_to_reference(upper.tolist(), [r[1] for r in references], rtol, atol, f"upper, delta={delta:g}")


def near_saturation(delta: float, dtype: torch.dtype) -> list[float]:
    """log p within D / delta = 1e-1 ... 1e-8 of both saturation thresholds of reverse_kl, on both
    sides (D = -log(1 - p) - delta for the lower bound, -log p - delta for the upper one), where
    p and 1 - p are normal floats: there the root s of the shrink problem is tiny and must keep its
    relative precision."""
    points = []
    for offset in (1e-1, 1e-2, 1e-4, 1e-6, 1e-8):
        for factor in (1 - offset, 1 + offset):
            if delta * factor < -math.log(torch.finfo(dtype).tiny):
                points.append(-delta * factor)  # upper: p = exp(-delta factor)
                points.append(math.log(-math.expm1(-delta * factor)))  # lower: 1 - p = exp(-delta factor)
    return points


@pytest.mark.parametrize(
    "dtype, kernel",
    [(torch.float64, "eager"), (torch.float32, "eager"), (torch.float64, "fused"), (torch.float32, "fused")],
    ids=["f64-eager", "f32-eager", "f64-fused", "f32-fused"],
)
def test_reverse_kl_solver_is_exact_for_every_radius(dtype, kernel):
    """reverse_kl's Halley iteration, of fixed length (divergences.reverse_kl_shrink), meets the
    tolerance at four radii per decade over all of DELTA_RANGE, for p in [1e-12, 1 - 1e-10] and
    right next to both saturation thresholds, where its root s is tiny."""
    rtol, atol = TOLERANCES[dtype]
    for delta in np.logspace(-6, 3, 37).tolist():
        log_p = torch.tensor(np.concatenate([GRID, near_saturation(delta, dtype)]), dtype=dtype)
        log_p = log_p[log_p < 0]  # float32 rounds log(1 - exp(-80)) to 0
        lower, upper = band(log_p, delta, "reverse_kl", kernel=kernel)
        references = [reference_bounds("reverse_kl", float(x), delta) for x in log_p.tolist()]
        assert_close_to_reference(lower.tolist(), [r[0] for r in references], rtol, atol, f"lower, delta={delta:g}")
        assert_close_to_reference(upper.tolist(), [r[1] for r in references], rtol, atol, f"upper, delta={delta:g}")


# The generic bracketed-Newton solver of bandpo.shrink, which computed reverse_kl before its dedicated
# solver: the same generator, derivative and perspective, without ``shrink``.
GENERIC_REVERSE_KL = Divergence(
    "generic_reverse_kl",
    DIVERGENCES["reverse_kl"].generator,
    derivative=DIVERGENCES["reverse_kl"].derivative,
    perspective=DIVERGENCES["reverse_kl"].perspective,
)
# The same divergence as a user would write it: f alone (f' by autograd, the default perspective).
USER_REVERSE_KL = Divergence("user_reverse_kl", lambda u: torch.xlogy(u, u) + (1 - u))


@pytest.mark.parametrize(
    "dtype, rtol, atol",
    [(torch.float64, 1e-10, 1e-12), (torch.float32, 2e-5, 1e-6)],
    ids=["f64", "f32"],
)
def test_reverse_kl_solver_agrees_with_the_generic_solver(dtype, rtol, atol):
    """The dedicated solver (built in) gives the generic solver's bounds: to 1e-10 relative in float64
    and to the float32 tolerance, for every radius of DELTAS, p in [1e-12, 1 - 1e-10], 0 and 1, and,
    against the generic solver with reverse_kl's perspective, p and 1 - p down to the subnormal range
    (where the default perspective of a generator-only Divergence is not accurate)."""
    assert DIVERGENCES["reverse_kl"].shrink is reverse_kl_shrink
    assert GENERIC_REVERSE_KL.shrink is None and USER_REVERSE_KL.shrink is None
    grid = torch.cat([torch.tensor(GRID, dtype=dtype), torch.tensor([0.0, -math.inf], dtype=dtype)])
    edges = torch.cat([grid, torch.tensor(EDGES[dtype], dtype=dtype)])
    for delta in DELTAS:
        for generic, log_p in ((GENERIC_REVERSE_KL, edges), (USER_REVERSE_KL, grid)):
            expected = band(log_p, delta, generic)
            for got, want, side in zip(band(log_p, delta, "reverse_kl"), expected, ("lower", "upper"), strict=True):
                torch.testing.assert_close(
                    got, want, rtol=rtol, atol=atol, msg=lambda m, where=f"{generic.name}, delta={delta}, {side}": f"{where}: {m}"
                )


@pytest.mark.parametrize(
    "dtype, vanishing_log_ps",
    [
        (torch.float64, [-800.0, -1500.0, -2000.0, -1e5, -math.inf]),
        (torch.float32, [-110.0, -180.0, -250.0, -1e4, -math.inf]),
    ],
    ids=["f64", "f32"],
)
@pytest.mark.parametrize("delta", [1e-6, 0.05, 10.0, 1e3])
def test_reverse_kl_past_the_float_range(dtype, vanishing_log_ps, delta):
    """p below the float range (p = 0 in the float type, log p finite or -inf): lower = 0 and
    upper = +inf, the exact upper bound exceeding the largest float; 1 - p down to the smallest
    subnormal, and 1 - p = 0 (p = 1): the lower bound of the reference, and exactly 1 at p = 1."""
    lower, upper = band(torch.tensor(vanishing_log_ps, dtype=dtype), delta, "reverse_kl")
    assert torch.all(lower == 0) and torch.all(upper == math.inf), (lower, upper)
    tiny_complement = {torch.float64: [-1e-300, -1e-310, -5e-324], torch.float32: [-1e-38, -1e-42, -1e-45]}[dtype]
    log_p = torch.tensor(tiny_complement + [0.0], dtype=dtype)
    lower, upper = band(log_p, delta, "reverse_kl")
    rtol, atol = TOLERANCES[dtype]
    references = [reference_bounds("reverse_kl", x, delta)[0] for x in log_p.tolist()[:-1]]
    assert_close_to_reference(lower.tolist()[:-1], references, rtol, atol, f"lower, delta={delta}")
    assert lower[-1].item() == 1.0 and torch.all(upper == 1), (lower, upper)


@pytest.mark.parametrize(
    "name, delta, p, expected, decimals",
    [
        ("kl", 0.05, 0.08, (0.262, 2.411), 3),
        ("tv", 0.05, 0.08, (0.375, 1.625), 3),
        ("chi2", 0.05, 0.08, (0.242, 1.758), 3),
        ("kl", 0.1, 0.08, (0.12306, 3.16885), 5),
        ("kl", 0.1, 0.5, (0.57424, 1.42576), 5),
        ("kl", 0.1, 0.9, (0.79736, 1.09271), 5),
    ],
)
def test_spec_reference_values(name, delta, p, expected, decimals):
    """SPEC §2.1: the tabulated bounds, to the digits given."""
    lower, upper = band(torch.tensor(math.log(p), dtype=torch.float64), delta, name)
    assert round(lower.item(), decimals) == pytest.approx(expected[0], abs=1e-12)
    assert round(upper.item(), decimals) == pytest.approx(expected[1], abs=1e-12)


@pytest.mark.parametrize("delta", [0.01, 0.1, 0.5])
def test_closed_forms_of_the_spec_table(delta):
    """SPEC §2.1, clamped to the simplex [0, 1/p]:  tv r = 1 -/+ delta/p;
    chi2 r = 1 -/+ sqrt(delta (1-p)/p);  hellinger q = cos^2(alpha -/+ theta) with
    cos alpha = sqrt p, cos theta = 1 - delta/2."""
    log_p = torch.tensor(GRID, dtype=torch.float64)
    p = np.exp(GRID)
    inverse_p = 1 / p

    tv_reach = delta / p
    chi2_reach = np.sqrt(delta * (1 - p) / p)
    alpha, theta = np.arccos(np.sqrt(p)), np.arccos(1 - delta / 2)
    hellinger_lower = np.where(alpha + theta < np.pi / 2, np.cos(alpha + theta) ** 2, 0.0) / p
    hellinger_upper = np.where(alpha > theta, np.cos(alpha - theta) ** 2, 1.0) / p
    expected = {
        "tv": (np.maximum(1 - tv_reach, 0), np.minimum(1 + tv_reach, inverse_p)),
        "chi2": (np.maximum(1 - chi2_reach, 0), np.minimum(1 + chi2_reach, inverse_p)),
        "hellinger": (hellinger_lower, hellinger_upper),
    }
    for name, (lower, upper) in expected.items():
        got_lower, got_upper = band(log_p, delta, name)
        # the textbook formulas lose digits to cancellation near p = 1; 1e-6 is ample
        np.testing.assert_allclose(got_lower.numpy(), lower, rtol=1e-6, atol=1e-12, err_msg=name)
        np.testing.assert_allclose(got_upper.numpy(), upper, rtol=1e-6, err_msg=name)


@pytest.mark.parametrize("name", NAMES)
def test_two_point_divergence_is_the_bernoulli_f_divergence(name):
    """Divergence.two_point(p, r) = D_f(Bernoulli(r p) || Bernoulli(p)), and g_f(p, 1) = 0."""
    p = torch.tensor([0.01, 0.2, 0.5, 0.9], dtype=torch.float64)
    ratio = torch.tensor([0.5, 1.7, 1.3, 1.05], dtype=torch.float64)
    got = DIVERGENCES[name].two_point(p, ratio)
    for pi, ri, gi in zip(p.tolist(), ratio.tolist(), got.tolist(), strict=True):
        exact = two_point_divergence(name, mpmath.mpf(pi), mpmath.mpf(pi) * ri)
        assert gi == pytest.approx(float(exact), rel=1e-12)
    assert torch.all(DIVERGENCES[name].two_point(p, torch.ones_like(p)).abs() <= 1e-15)


# --- saturation at the simplex limits --------------------------------------------------------

# g_f(p, 1/p) <= delta  <=>  upper = 1/p;   g_f(p, 0) <= delta  <=>  lower = 0
UPPER_SATURATES = {
    "tv": lambda p, d: p >= 1 - d,  # g(p, 1/p) = 1 - p
    "chi2": lambda p, d: p >= 1 / (1 + d),  # g(p, 1/p) = (1 - p) / p
    "hellinger": lambda p, d: p >= (1 - d / 2) ** 2,  # g(p, 1/p) = 2 (1 - sqrt p)
    "reverse_kl": lambda p, d: p >= math.exp(-d),  # g(p, 1/p) = -log p
    "kl": lambda p, d: False,  # g(p, 1/p) = +inf
}
LOWER_SATURATES = {
    "tv": lambda p, d: p <= d,  # g(p, 0) = p
    "chi2": lambda p, d: p <= d / (1 + d),  # g(p, 0) = p / (1 - p)
    "hellinger": lambda p, d: p <= 1 - (1 - d / 2) ** 2,  # g(p, 0) = 2 (1 - sqrt(1 - p))
    "reverse_kl": lambda p, d: p <= 1 - math.exp(-d),  # g(p, 0) = -log(1 - p)
    "kl": lambda p, d: False,  # g(p, 0) = +inf
}
SATURATION_DELTAS = (0.01, 0.1, 0.5)


def saturation_thresholds(name, delta):
    """p* where the upper and the lower bound start to saturate."""
    d = delta
    return {
        "tv": (1 - d, d),
        "chi2": (1 / (1 + d), d / (1 + d)),
        "hellinger": ((1 - d / 2) ** 2, 1 - (1 - d / 2) ** 2),
        "reverse_kl": (math.exp(-d), 1 - math.exp(-d)),
    }[name]


@pytest.mark.parametrize("delta", SATURATION_DELTAS)
@pytest.mark.parametrize("name", ["tv", "chi2", "hellinger", "reverse_kl"])
def test_saturation_thresholds_are_where_the_simplex_limit_costs_exactly_delta(name, delta):
    """g_f(p*, 1/p*) = delta at the upper threshold and g_f(p*, 0) = delta at the lower one."""
    upper_threshold, lower_threshold = saturation_thresholds(name, delta)
    p = mpmath.mpf(upper_threshold)
    assert two_point_divergence(name, p, mpmath.mpf(1)) == pytest.approx(delta, rel=1e-12)
    p = mpmath.mpf(lower_threshold)
    assert two_point_divergence(name, p, mpmath.mpf(0)) == pytest.approx(delta, rel=1e-12)


def saturation_grid(name, delta):
    """p in [1e-3, 1 - 1e-4] without the 0.1%-neighbourhoods of the saturation thresholds;
    p <= 0.95 for kl, whose upper root comes within a rounding error of 1/p as p -> 1."""
    p = np.concatenate([np.logspace(-3, -1, 25), np.linspace(0.1, 0.95, 35)])
    if name == "kl":
        return np.unique(p)
    p = np.unique(np.concatenate([p, 1 - np.logspace(-4, math.log10(0.05), 15)]))
    for threshold in saturation_thresholds(name, delta):
        p = p[np.abs(p / threshold - 1) > 1e-3]
    return p


@pytest.mark.parametrize("delta", SATURATION_DELTAS)
@pytest.mark.parametrize("name", NAMES)
def test_upper_is_one_over_p_exactly_when_g_at_one_over_p_is_within_delta(name, delta):
    """upper = 1/p  <=>  g_f(p, 1/p) <= delta; otherwise upper < 1/p (kl: never saturates)."""
    p = saturation_grid(name, delta)
    _, upper = band(torch.tensor(np.log(p), dtype=torch.float64), delta, name)
    for pi, ui in zip(p.tolist(), upper.tolist(), strict=True):
        exact_inverse = 1 / mpmath.exp(mpmath.mpf(math.log(pi)))
        relative_gap = float(1 - ui / exact_inverse)
        if UPPER_SATURATES[name](pi, delta):
            assert abs(relative_gap) <= 1e-15, f"p={pi}: upper {ui} should be 1/p"
        else:
            assert relative_gap > 1e-9, f"p={pi}: upper {ui} should stay below 1/p"


@pytest.mark.parametrize("delta", SATURATION_DELTAS)
@pytest.mark.parametrize("name", NAMES)
def test_lower_is_zero_exactly_when_g_at_zero_is_within_delta(name, delta):
    """lower = 0  <=>  g_f(p, 0) <= delta; otherwise lower > 0 (kl: never saturates)."""
    p = saturation_grid(name, delta)
    lower, _ = band(torch.tensor(np.log(p), dtype=torch.float64), delta, name)
    for pi, li in zip(p.tolist(), lower.tolist(), strict=True):
        if LOWER_SATURATES[name](pi, delta):
            assert li == 0.0, f"p={pi}: lower {li} should be exactly 0"
        else:
            assert li > 0.0, f"p={pi}: lower should be positive"


@pytest.mark.parametrize("delta", SATURATION_DELTAS)
@pytest.mark.parametrize("name", ["tv", "chi2", "hellinger", "reverse_kl"])
def test_saturation_grid_sees_both_regimes(name, delta):
    """The saturation tests above exercise saturated and free bounds on both sides."""
    p = saturation_grid(name, delta)
    for rule in (UPPER_SATURATES[name], LOWER_SATURATES[name]):
        flags = {rule(pi, delta) for pi in p.tolist()}
        assert flags == {True, False}


# --- limits p -> 1 and p -> 0 ----------------------------------------------------------------

R_STAR = {
    "kl": lambda d: math.exp(-d),
    "tv": lambda d: max(1 - d, 0.0),
    "chi2": lambda d: 1.0,
    "reverse_kl": lambda d: 1.0,
    "hellinger": lambda d: max(1 - d / 2, 0.0) ** 2,
}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("delta", [0.05, 0.5, 1.5, 3.0, 5.0])
@pytest.mark.parametrize("name", NAMES)
def test_certain_token_gets_r_star_and_one(name, delta, dtype):
    """p = 1 (log-prob 0): (lower, upper) = (r*, 1); r* = exp(-delta) (kl), max(1 - delta, 0) (tv),
    1 (chi2, reverse_kl), max(1 - delta/2, 0)^2 (hellinger). Any delta > 0 is valid."""
    lower, upper = band(torch.zeros(3, dtype=dtype), delta, name)
    assert torch.all(upper == 1)
    expected = torch.full_like(lower, R_STAR[name](delta))
    torch.testing.assert_close(lower, expected, rtol=4 * torch.finfo(dtype).eps, atol=0)


@pytest.mark.parametrize("name", ["kl", "tv", "chi2", "hellinger"])
def test_bounds_tend_to_the_certain_token_limits_as_p_tends_to_one(name):
    """lower(p) -> r* and upper(p) -> 1 as p -> 1 (continuity at log-prob 0)."""
    delta = 0.1
    lower, upper = band(torch.tensor([-1e-14, -1e-200], dtype=torch.float64), delta, name)
    r_star = torch.full_like(lower, R_STAR[name](delta))
    torch.testing.assert_close(lower, r_star, rtol=1e-6, atol=0)
    torch.testing.assert_close(upper, torch.ones_like(upper), rtol=1e-6, atol=0)


@pytest.mark.parametrize("delta", [0.05, 3.0, 5.0])
@pytest.mark.parametrize("dtype", ALL_FLOATS, ids=["f64", "f32", "bf16", "f16"])
@pytest.mark.parametrize("name", NAMES)
def test_impossible_token_gets_zero_and_infinity(name, dtype, delta):
    """p = 0 (log-prob -inf): (lower, upper) = (0, +inf), and (0, upper_max) with a cap."""
    log_p = torch.full((2,), -math.inf, dtype=dtype)
    lower, upper = band(log_p, delta, name)
    assert torch.all(lower == 0) and torch.all(upper == math.inf), (lower, upper)
    lower, upper = band(log_p, delta, name, upper_max=10.0)
    assert torch.all(lower == 0) and torch.all(upper == 10), (lower, upper)


@pytest.mark.parametrize("delta", [1e-6, 0.01, 0.05, 0.5, 1e3])
@pytest.mark.parametrize(
    "dtype, log_ps, rtol",
    [
        (torch.float64, [-40.0, -60.0, -200.0, -700.0], 1e-9),
        (torch.float32, [-30.0, -50.0, -80.0], 2e-5),
    ],
    ids=["f64", "f32"],
)
def test_kl_upper_grows_like_one_minus_exp_minus_delta_over_p(delta, dtype, log_ps, rtol):
    """kl, p -> 0: p * upper -> 1 - exp(-delta) (the exact root, never the simplex limit 1/p)."""
    log_p = torch.tensor(log_ps, dtype=dtype)
    _, upper = band(log_p, delta, "kl")
    new_probability = upper.double() * log_p.double().exp()
    np.testing.assert_allclose(new_probability.numpy(), -math.expm1(-delta), rtol=rtol)


EDGES = {
    torch.float64: [-700.0, -740.0, -1400.0, -1e-300, -1e-320],
    torch.float32: [-82.5, -85.0, -88.0, -90.0, -100.0, -103.0, -177.0, -185.0, -1e-30, -1e-40, -1e-44],
}
"""Subnormal p, p = 0 in the float type with a finite bound (chi2's sqrt(delta / p) outlives 1 / p),
and 1 - p subnormal."""


@pytest.mark.parametrize("name, dtype, kernel, rtol, atol", kernel_cases())
def test_bounds_match_the_reference_at_the_edges_of_the_float_range(name, dtype, kernel, rtol, atol):
    """Old probabilities down to the subnormal range and below, and within a subnormal of 1, still
    give the exact bounds (or +inf where the exact upper bound exceeds the largest float)."""
    largest = torch.finfo(dtype).max
    failures = []
    for delta in (1e-6, 0.05, 0.5, 1e3):
        log_p = torch.tensor(EDGES[dtype], dtype=dtype)
        lower, upper = band(log_p, delta, name, kernel=kernel)
        for x, lo, up in zip(log_p.tolist(), lower.tolist(), upper.tolist(), strict=True):
            ref_lower, ref_upper = reference_bounds(name, x, delta)
            where = f"delta={delta}, log p={x!r}"
            if not abs(lo - ref_lower) <= max(rtol * ref_lower, atol):
                failures.append(f"{where}: lower {lo!r}, reference {mpmath.nstr(ref_lower, 12)}")
            if ref_upper > 2 * largest:
                correct = up == math.inf
            else:
                correct = ref_upper > largest / 2 or abs(up - ref_upper) <= rtol * ref_upper
            if not correct:
                failures.append(f"{where}: upper {up!r}, reference {mpmath.nstr(ref_upper, 12)}")
    assert not failures, f"{name}: " + "; ".join(failures)


# --- the Divergence type -----------------------------------------------------------------------


def test_generator_with_f_of_one_not_zero_is_rejected():
    """A generator must satisfy f(1) = 0, else D_f(P || P) != 0."""
    with pytest.raises(ValueError, match="f\\(1\\) = 0"):
        Divergence("shifted", lambda u: (u - 1) ** 2 + 0.1)


def square(u: torch.Tensor) -> torch.Tensor:
    return torch.square(u - 1)


def test_bounds_and_shrink_together_are_refused():
    """Each is a whole solver: a Divergence names at most one of them."""
    with pytest.raises(ValueError, match="give bounds or shrink, not both"):
        Divergence("both", square, bounds=DIVERGENCES["chi2"].bounds, shrink=DIVERGENCES["kl"].shrink)


@pytest.mark.parametrize("solver", ["bounds", "shrink"])
def test_iterations_without_the_generic_solver_are_refused(solver):
    """iterations only steers the generic solver, which a divergence with bounds or shrink never runs."""
    given = {"bounds": DIVERGENCES["chi2"].bounds, "shrink": DIVERGENCES["kl"].shrink}
    with pytest.raises(ValueError, match="iterations sets the generic solver's steps"):
        Divergence("steps", square, iterations=10, **{solver: given[solver]})


@pytest.mark.parametrize("iterations", [0, -3, 2.5, True, "80"])
def test_iterations_must_be_a_positive_int(iterations):
    with pytest.raises(ValueError, match="iterations must be a positive int"):
        Divergence("steps", square, iterations=iterations)


@pytest.mark.parametrize("name", ["", None, 3])
def test_name_must_be_a_non_empty_string(name):
    with pytest.raises(ValueError, match="name must be a non-empty string"):
        Divergence(name, square)


def test_iterations_steer_the_generic_solver():
    """Fewer generic steps leave a visible error; the default (80) reaches chi2's closed form."""
    x = torch.log(torch.tensor([0.01, 0.3, 0.9], dtype=torch.float64))
    exact = bandpo.band(x, 0.05, "chi2", upper_max=None)
    default = bandpo.band(x, 0.05, Divergence("chi2_generic", square), upper_max=None)
    few = bandpo.band(x, 0.05, Divergence("chi2_few", square, iterations=2), upper_max=None)
    torch.testing.assert_close(default, exact, rtol=1e-12, atol=1e-14)
    assert (few[0] - exact[0]).abs().max() > 1e-6


def test_builtin_registry_lists_the_five_divergences():
    """bandpo.DIVERGENCES holds kl, tv, chi2, reverse_kl and hellinger under their names."""
    assert set(DIVERGENCES) == set(NAMES)
    for name, divergence in DIVERGENCES.items():
        assert divergence.name == name
        assert bandpo.get_divergence(name) is divergence
        assert bandpo.get_divergence(divergence) is divergence


@pytest.mark.parametrize("name", NAMES)
def test_generators_keep_their_precision_next_to_one(name):
    """f(1 +/- 1e-6) ~ f''(1) 1e-12 / 2 to 1e-8 relative in float64: the terms of f are added in
    an order that does not round the small result against 1 (the generic solver's accuracy at
    small delta rests on it)."""
    u = torch.tensor([1 - 1e-6, 1 + 1e-6], dtype=torch.float64)
    got = DIVERGENCES[name].generator(u)
    for ui, fi in zip(u.tolist(), got.tolist(), strict=True):
        x = mpmath.mpf(ui)
        exact = {
            "kl": -mpmath.log(x) + x - 1,
            "tv": abs(x - 1) / 2,
            "chi2": (x - 1) ** 2,
            "reverse_kl": x * mpmath.log(x) - x + 1,
            "hellinger": (mpmath.sqrt(x) - 1) ** 2,
        }[name]
        assert fi == pytest.approx(float(exact), rel=1e-8, abs=0)


# A user-defined kl, written plainly (slope_at_infinity left at +inf): the generic solver.
USER_KL = Divergence("user_kl", lambda u: -torch.log(u) + u - 1)


@pytest.mark.parametrize("delta", [0.05, 1.0, 1e3])
def test_generic_solver_at_the_edges_of_the_float32_range(delta):
    """float32 p subnormal or 0, and 1 - p subnormal (log p = -1e-40: p rounds to 1): there
    (1 - a s) / b overflows float32 inside the generic solver, which still gives kl's bounds, e.g.
    (exp(-delta), 1) as p -> 1."""
    x = torch.tensor(EDGES[torch.float32] + [-3.0, -0.01])
    for got, expected in zip(band(x, delta, USER_KL), band(x, delta, "kl"), strict=True):
        torch.testing.assert_close(got, expected, rtol=2e-5, atol=1e-6)
    lower, upper = band(torch.tensor([-1e-40]), delta, USER_KL)
    assert lower.item() == pytest.approx(math.exp(-delta), rel=2e-5, abs=1e-6) and upper.item() == 1.0
