"""The reduction to one token (the lemma) and the generic one-sided solver.

Lemma (SPEC §2): the extremes of Q(a) over T = {Q in simplex : D_f(Q || P) <= delta} rescale
every other token by one common factor, Q(b) = P(b) (1 - r p) / (1 - p), so the bounds depend on
p = P(a) alone. Each side is the one-sided "shrink" problem of :mod:`bandpo.shrink`.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from mp_reference import reference_bounds
from scipy.optimize import minimize

from bandpo import DIVERGENCES, Divergence, band
from bandpo.shrink import generator_derivative_by_autograd, perspective_from_generator, solve_shrink_generic

# --- the lemma: a full-vocabulary optimisation lands on the scalar bounds --------------------

NUMPY_GENERATORS = {  # f and f' on numpy arrays
    "kl": (lambda u: -np.log(u) + u - 1, lambda u: 1 - 1 / u),
    "reverse_kl": (lambda u: u * np.log(u) - u + 1, np.log),
    "chi2": (lambda u: (u - 1) ** 2, lambda u: 2 * (u - 1)),
    "hellinger": (lambda u: (np.sqrt(u) - 1) ** 2, lambda u: 1 - 1 / np.sqrt(u)),
    "tv": (lambda u: np.abs(u - 1) / 2, lambda u: np.sign(u - 1) / 2),
}


def softmax(z):
    e = np.exp(z - z.max())
    return e / e.sum()


def extreme_token_probability(P, a, delta, name, sign):
    """argmax (sign = +1) or argmin (sign = -1) of Q(a) over {Q : D_f(Q || P) <= delta}.

    Q = softmax(z) keeps Q in the open simplex (sum Q = 1, Q > 0) without extra constraints;
    SLSQP handles D_f(Q || P) <= delta with exact gradients.
    """
    f, f_prime = NUMPY_GENERATORS[name]

    def divergence(z):
        return P @ f(softmax(z) / P)

    def divergence_gradient(z):
        Q = softmax(z)
        g = f_prime(Q / P)
        return Q * (g - Q @ g)

    def objective(z):
        return -sign * softmax(z)[a]

    def objective_gradient(z):
        Q = softmax(z)
        return -sign * Q * (np.eye(len(P))[a] - Q[a])

    result = minimize(
        objective,
        np.log(P),
        jac=objective_gradient,
        method="SLSQP",
        constraints=[
            {
                "type": "ineq",
                "fun": lambda z: delta - divergence(z),
                "jac": lambda z: -divergence_gradient(z),
            }
        ],
        options={"ftol": 1e-15, "maxiter": 1000},
    )
    Q = softmax(result.x)
    assert divergence(result.x) <= delta + 1e-10, "the optimiser left the trust region"
    return Q


def random_problem(seed):
    """A vocabulary of 3-8 tokens, the sampled token with p in [0.2, 0.7], the rest Dirichlet."""
    rng = np.random.default_rng(seed)
    size = int(rng.integers(3, 9))
    a = int(rng.integers(size))
    p = rng.uniform(0.2, 0.7)
    rest = (1 - p) * rng.dirichlet(np.ones(size - 1))
    return np.insert(rest, a, p), a


LEMMA_SEEDS = range(4)
LEMMA_DELTAS = (0.05, 0.2)  # no saturation for p in [0.2, 0.7]


@pytest.mark.parametrize("seed", LEMMA_SEEDS)
@pytest.mark.parametrize("name", ["kl", "reverse_kl", "chi2", "hellinger", "tv"])
def test_band_equals_the_full_simplex_optimum(name, seed):
    """upper = max_{Q in T} Q(a)/p and lower = min_{Q in T} Q(a)/p, found by SLSQP on the whole
    vocabulary, agree with Band(p) to 1e-6 in ratio."""
    P, a = random_problem(seed)
    p = P[a]
    for delta in LEMMA_DELTAS:
        lower, upper = band(torch.tensor(math.log(p), dtype=torch.float64), delta, name)
        highest = extreme_token_probability(P, a, delta, name, +1)[a] / p
        lowest = extreme_token_probability(P, a, delta, name, -1)[a] / p
        assert highest == pytest.approx(upper.item(), abs=1e-6), f"delta={delta}, p={p}"
        assert lowest == pytest.approx(lower.item(), abs=1e-6), f"delta={delta}, p={p}"


@pytest.mark.parametrize("seed", LEMMA_SEEDS)
@pytest.mark.parametrize("name", ["kl", "reverse_kl", "chi2", "hellinger"])
def test_optimum_rescales_every_other_token_by_one_factor(name, seed):
    """At the optimum, Q(b) / P(b) = (1 - r p) / (1 - p) for every b != a (strictly convex f)."""
    P, a = random_problem(seed)
    p = P[a]
    others = np.arange(len(P)) != a
    for delta in LEMMA_DELTAS:
        for sign in (+1, -1):
            Q = extreme_token_probability(P, a, delta, name, sign)
            common_factor = (1 - Q[a]) / (1 - p)
            np.testing.assert_allclose(Q[others] / P[others], common_factor, atol=1e-5)


# --- the generic solver reproduces the closed forms and the Halley KL solver -------------------


def generic(name: str) -> Divergence:
    """The built-in divergence rebuilt from its generator alone (generic solver, f' by autograd)."""
    return Divergence(f"{name}-from-generator", DIVERGENCES[name].generator)


def wide_grid(dtype):
    p = np.concatenate([np.logspace(-12, -0.3, 30), 1 - np.logspace(-10, -0.3, 30)])
    return torch.tensor(np.log(p), dtype=dtype)


@pytest.mark.parametrize("delta", [0.01, 0.1, 0.5])
@pytest.mark.parametrize("name", ["tv", "chi2", "hellinger", "kl"])
def test_generic_solver_agrees_with_the_specialised_solver(name, delta):
    """Generator-only Divergence == closed form (tv, chi2, hellinger) / Halley iteration (kl):
    float64 to 1e-10 relative (1e-12 absolute near 0), float32 to 1e-4 relative (1e-6 absolute)."""
    for dtype, rtol, atol in [(torch.float64, 1e-10, 1e-12), (torch.float32, 1e-4, 1e-6)]:
        log_p = wide_grid(dtype)
        for got, expected in zip(band(log_p, delta, generic(name)), band(log_p, delta, name), strict=True):
            torch.testing.assert_close(got, expected, rtol=rtol, atol=atol)


@pytest.mark.parametrize("delta", [0.01, 0.1, 0.5])
def test_generic_solver_matches_the_reference_for_reverse_kl(delta):
    """reverse_kl has no closed form: the generic solver (given reverse_kl's generator, derivative
    and perspective, not its dedicated solver) meets the 50-digit reference directly."""
    built_in = DIVERGENCES["reverse_kl"]
    generic_reverse_kl = Divergence(
        "generic_reverse_kl", built_in.generator, derivative=built_in.derivative, perspective=built_in.perspective
    )
    log_p = wide_grid(torch.float64)[::3]
    lower, upper = band(log_p, delta, generic_reverse_kl)
    for x, lo, up in zip(log_p.tolist(), lower.tolist(), upper.tolist(), strict=True):
        ref_lower, ref_upper = reference_bounds("reverse_kl", x, delta)
        assert abs(lo - ref_lower) <= max(1e-9 * ref_lower, 1e-12)
        assert abs(up - ref_upper) <= 1e-9 * ref_upper


def test_generic_shrink_returns_s_and_its_complement():
    """solve_shrink_generic returns (s, w = 1 - s), s in [0, 1], with G(s) = delta at the root:
    G(s) = a f(s) + b f((1 - a s) / b)."""
    kl = DIVERGENCES["kl"]
    a = torch.tensor([1e-3, 0.01, 0.3, 0.7, 0.999], dtype=torch.float64)
    b = 1 - a
    delta = 0.1
    perspective = perspective_from_generator(kl.generator, kl.derivative, 1.0)
    s, w = solve_shrink_generic(kl.generator, kl.derivative, perspective, a, b, torch.log(b), delta, 80)
    torch.testing.assert_close(s + w, torch.ones_like(s), rtol=0, atol=2e-16)
    assert torch.all((s >= 0) & (s <= 1))
    g = a * kl.generator(s) + b * kl.generator((1 - a * s) / b)
    torch.testing.assert_close(g, torch.full_like(g, delta), rtol=1e-12, atol=0)


def test_autograd_derivative_is_the_generator_slope():
    """f' by autograd equals the analytic derivative: kl, f'(u) = 1 - 1/u."""
    u = torch.tensor([0.1, 0.5, 1.0, 2.0, 30.0], dtype=torch.float64)
    derivative = generator_derivative_by_autograd(DIVERGENCES["kl"].generator)
    torch.testing.assert_close(derivative(u), 1 - 1 / u)


# --- user-defined divergences through the generic solver ------------------------------------


def alpha_generator(alpha):
    """Amari alpha-divergence, f(u) = (u^alpha - alpha u - (1 - alpha)) / (alpha (alpha - 1))."""
    return lambda u: (u**alpha - alpha * u - (1 - alpha)) / (alpha * (alpha - 1))


@pytest.mark.parametrize("delta", [0.02, 0.1, 0.4])
def test_alpha_two_is_half_chi_square(delta):
    """alpha = 2: f = (u - 1)^2 / 2, so Band(alpha=2, delta) = Band(chi2, 2 delta)."""
    log_p = wide_grid(torch.float64)
    alpha_two = Divergence("alpha-2", alpha_generator(2.0))
    for got, expected in zip(band(log_p, delta, alpha_two), band(log_p, 2 * delta, "chi2"), strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("delta", [0.02, 0.1, 0.4])
def test_alpha_one_half_is_twice_squared_hellinger(delta):
    """alpha = 1/2: f = 2 (sqrt(u) - 1)^2, so Band(alpha=1/2, delta) = Band(hellinger, delta/2)."""
    log_p = wide_grid(torch.float64)
    alpha_half = Divergence("alpha-1/2", alpha_generator(0.5), slope_at_infinity=2.0)
    for got, expected in zip(band(log_p, delta, alpha_half), band(log_p, delta / 2, "hellinger"), strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


def js_generator(u):
    """Jensen-Shannon, f(u) = u log(2u / (1 + u)) + log(2 / (1 + u)), with f(0) = log 2."""
    return torch.xlogy(u, 2 * u / (1 + u)) + torch.log(2 / (1 + u))


JS = Divergence("js", js_generator, slope_at_infinity=math.log(2))


@pytest.mark.parametrize("delta", [0.01, 0.1, 0.5])
def test_jensen_shannon_through_the_generic_solver_matches_the_reference(delta):
    """A user-defined divergence (Jensen-Shannon) gives the exact roots of g_js(p, r) = delta,
    including exact saturation (g_js(p, 0) <= log 2 is finite)."""
    log_p = wide_grid(torch.float64)[::2]
    lower, upper = band(log_p, delta, JS)
    for x, lo, up in zip(log_p.tolist(), lower.tolist(), upper.tolist(), strict=True):
        ref_lower, ref_upper = reference_bounds("js", x, delta)
        assert abs(lo - ref_lower) <= max(1e-9 * ref_lower, 1e-12), f"log p={x}"
        assert abs(up - ref_upper) <= 1e-9 * ref_upper, f"log p={x}"
        if ref_lower == 0:
            assert lo == 0.0


def test_jensen_shannon_certain_token_uses_the_slope_at_infinity():
    """p = 1: moving mass w onto a zero-probability outcome costs w lim f(u)/u = w log 2, so
    lower = min { r : f(r) + (1 - r) log 2 <= delta }, the limit of lower(p) as p -> 1."""
    lower, upper = band(torch.tensor([0.0, -1e-13], dtype=torch.float64), 0.1, JS)
    ref_lower, _ = reference_bounds("js", -1e-13, 0.1)
    assert upper[0] == 1.0
    assert lower[0].item() == pytest.approx(float(ref_lower), rel=1e-6)
    assert lower[1].item() == pytest.approx(float(ref_lower), rel=1e-9)
