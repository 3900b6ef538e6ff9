"""The Band operator as an API: ordering, feasibility and tightness, dtypes/devices/shapes, input
checking and graph safety.

    [lower(p), upper(p)] = { r : g_f(p, r) <= delta },
    g_f(p, r) = p f(r) + (1 - p) f((1 - r p) / (1 - p))
"""

from __future__ import annotations

import importlib
import itertools
import math

import mpmath
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from mp_reference import two_point_divergence

from bandpo import DIVERGENCES, Band, Divergence, band

NAMES = ("kl", "tv", "chi2", "reverse_kl", "hellinger")
ALL_FLOATS = [torch.float64, torch.float32, torch.bfloat16, torch.float16]
ALL_FLOAT_IDS = ["f64", "f32", "bf16", "f16"]
PROPERTY = settings(max_examples=60, deadline=None, database=None, derandomize=True)


# A user-defined divergence: Jensen-Shannon, f(u) = u log(2u / (1 + u)) + log(2 / (1 + u)).
JS = Divergence(
    "js",
    lambda u: torch.xlogy(u, 2 * u / (1 + u)) + torch.log(2 / (1 + u)),
    slope_at_infinity=math.log(2),
)


def exact_g(name, log_p, ratio):
    """g_f(p, r) in 80-digit arithmetic; +inf outside the simplex (r p > 1)."""
    with mpmath.workdps(80):
        p = mpmath.exp(mpmath.mpf(log_p))
        q = p * mpmath.mpf(ratio)
        return mpmath.inf if q > 1 else two_point_divergence(name, p, q)


def divergence_of(name):
    return JS if name == "js" else name


# --- monotonicity ----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("name", NAMES)
def test_upper_decreases_and_lower_increases_in_p(name, dtype):
    """p1 < p2  =>  upper(p1) >= upper(p2) and lower(p1) <= lower(p2), from p = 0 to p = 1."""
    smallest = -300.0 if dtype == torch.float64 else -40.0
    log_p = torch.cat([
        torch.tensor([-math.inf]),
        -torch.logspace(math.log10(-smallest), -12, 200, dtype=torch.float64),
        torch.tensor([0.0]),
    ]).to(dtype)
    for delta in (1e-6, 0.01, 0.1, 0.5, 1e3):
        lower, upper = band(log_p, delta, name)
        assert torch.all(upper.diff() <= 0), f"upper rises somewhere, delta={delta}"
        assert torch.all(lower.diff() >= 0), f"lower falls somewhere, delta={delta}"


@pytest.mark.parametrize("name", NAMES)
def test_band_widens_with_delta(name):
    """delta1 < delta2  =>  lower(delta2) <= lower(delta1) and upper(delta2) >= upper(delta1)."""
    p = torch.tensor([1e-9, 1e-3, 0.05, 0.3, 0.5, 0.8, 0.99, 1 - 1e-9], dtype=torch.float64)
    log_p = torch.log(p)
    deltas = (1e-6, 1e-4, 0.001, 0.01, 0.05, 0.1, 0.2, 0.5, 1.0, 3.0, 30.0, 1e3)
    bounds = [band(log_p, delta, name) for delta in deltas]
    for (narrow_lower, narrow_upper), (wide_lower, wide_upper) in itertools.pairwise(bounds):
        assert torch.all(wide_lower <= narrow_lower)
        assert torch.all(wide_upper >= narrow_upper)


# --- properties ------------------------------------------------------------------------------

log_probs = st.one_of(
    st.floats(min_value=-745.0, max_value=0.0),
    st.floats(min_value=-1e-6, max_value=0.0),
    st.just(-math.inf),
)
deltas = st.floats(min_value=-6.0, max_value=3.0).map(lambda exponent: 10.0**exponent)  # DELTA_RANGE
names = st.sampled_from(NAMES + ("js",))
dtypes = st.sampled_from(ALL_FLOATS)


@PROPERTY
@given(log_p=log_probs, delta=deltas, name=names, dtype=dtypes)
def test_band_is_an_interval_around_one_inside_the_simplex(log_p, delta, name, dtype):
    """0 <= lower <= 1 <= upper, never NaN, in every dtype."""
    lower, upper = band(torch.tensor([log_p], dtype=dtype), delta, divergence_of(name))
    assert 0 <= lower.item() <= 1 <= upper.item()


@PROPERTY
@given(log_p=log_probs, delta=deltas, name=names, cap=st.floats(min_value=1.0, max_value=100.0))
def test_upper_max_caps_the_upper_bound_only(log_p, delta, name, cap):
    """upper_max = c: upper = min(upper, c), lower unchanged."""
    x = torch.tensor([log_p], dtype=torch.float64)
    lower, upper = band(x, delta, divergence_of(name))
    capped_lower, capped_upper = band(x, delta, divergence_of(name), upper_max=cap)
    assert capped_lower.item() == lower.item()
    assert capped_upper.item() == min(upper.item(), cap)


FEASIBLE_RANGE = st.floats(min_value=math.log(1e-12), max_value=-1e-10)
INWARD, OUTWARD = 1e-10, 1e-8  # well inside the 1e-9 accuracy contract, well above rounding
NORMAL_TINY = torch.finfo(torch.float64).tiny


@PROPERTY
@given(log_p=FEASIBLE_RANGE, delta=deltas, name=names)
def test_bounds_are_feasible(log_p, delta, name):
    """g_f(p, upper (1 - 1e-10)) <= delta and g_f(p, lower (1 + 1e-10) + tiny) <= delta: the
    returned bounds lie in the trust region up to rounding (tiny: float64's smallest normal)."""
    lower, upper = band(torch.tensor([log_p], dtype=torch.float64), delta, divergence_of(name))
    assert exact_g(name, log_p, upper.item() * (1 - INWARD)) <= delta
    assert exact_g(name, log_p, lower.item() * (1 + INWARD) + NORMAL_TINY) <= delta


@PROPERTY
@given(log_p=FEASIBLE_RANGE, delta=deltas, name=names)
def test_bounds_are_tight(log_p, delta, name):
    """g_f(p, upper (1 + 1e-8)) > delta unless upper = 1/p, and g_f(p, lower (1 - 1e-8)) > delta
    unless lower = 0: no wider band is feasible."""
    lower, upper = band(torch.tensor([log_p], dtype=torch.float64), delta, divergence_of(name))
    inverse_p = 1 / mpmath.exp(mpmath.mpf(log_p))
    if abs(upper.item() / inverse_p - 1) > 1e-15:
        assert exact_g(name, log_p, upper.item() * (1 + OUTWARD)) > delta
    if lower.item() > 0:
        assert exact_g(name, log_p, lower.item() * (1 - OUTWARD)) > delta


# --- dtypes, devices, shapes -----------------------------------------------------------------

LOG_P = [-math.inf, -300.0, -20.0, -3.0, -0.7, -0.05, -1e-9, 0.0]


@pytest.mark.parametrize("dtype", ALL_FLOATS, ids=ALL_FLOAT_IDS)
@pytest.mark.parametrize("name", NAMES)
def test_output_dtype_is_the_input_dtype(name, dtype):
    """float64, float32, bfloat16 and float16 in -> the same dtype out (both bounds)."""
    lower, upper = band(torch.tensor(LOG_P).to(dtype), 0.05, name)
    assert lower.dtype == dtype and upper.dtype == dtype


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "f16"])
@pytest.mark.parametrize("name", NAMES)
def test_half_precision_input_is_computed_in_float32(name, dtype):
    """Band(x) for a 16-bit x equals Band(x as float32) rounded to the 16-bit dtype."""
    x = torch.tensor(LOG_P).to(dtype)
    for got, expected in zip(band(x, 0.05, name), band(x.float(), 0.05, name), strict=True):
        assert torch.equal(got, expected.to(dtype))


@pytest.mark.parametrize("shape", [(), (7,), (2, 3, 4)], ids=["0-d", "1-d", "3-d"])
def test_output_shape_is_the_input_shape(shape):
    """Any shape in -> that shape out, elementwise equal to the flat computation."""
    x = -torch.rand(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 5
    lower, upper = band(x, 0.05)
    assert lower.shape == shape and upper.shape == shape
    flat_lower, flat_upper = band(x.reshape(-1), 0.05)
    assert torch.equal(lower.reshape(-1), flat_lower) and torch.equal(upper.reshape(-1), flat_upper)


@pytest.mark.parametrize("name", NAMES)
def test_empty_input_gives_empty_bounds(name):
    """A tensor with no elements gives two empty tensors of its shape and dtype."""
    x = torch.empty(0, 3, dtype=torch.float32)
    lower, upper = band(x, 0.05, name)
    assert lower.shape == upper.shape == (0, 3)
    assert lower.dtype == upper.dtype == torch.float32


def test_output_stays_on_the_cpu():
    lower, upper = band(torch.tensor(LOG_P), 0.05)
    assert lower.device.type == upper.device.type == "cpu"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", NAMES)
def test_cuda_input_gives_cuda_output_equal_to_cpu(name):
    """Same device out; the values agree with the CPU to float32 rounding."""
    x = torch.tensor(LOG_P, dtype=torch.float32)
    lower, upper = band(x.cuda(), 0.05, name)
    assert lower.is_cuda and upper.is_cuda
    cpu_lower, cpu_upper = band(x, 0.05, name)
    torch.testing.assert_close(lower.cpu(), cpu_lower, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(upper.cpu(), cpu_upper, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_bounds_carry_no_autograd_history(name):
    """No gradient flows through the bounds, even from an input that requires grad."""
    x = torch.tensor([-2.0, -0.5, -0.01], requires_grad=True)
    lower, upper = band(x, 0.05, name)
    assert not lower.requires_grad and not upper.requires_grad
    assert lower.grad_fn is None and upper.grad_fn is None


# --- input checking --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make", [lambda delta: band(torch.zeros(2), delta), lambda delta: Band(delta=delta)], ids=["band", "Band"]
)
@pytest.mark.parametrize(
    "delta", [0, 0.0, -0.05, 9.9e-7, 1e-320, 1000.5, 1e38, 1e308, math.nan, math.inf, True, "0.05", None]
)
def test_delta_must_lie_in_the_tested_range(make, delta):
    """delta outside DELTA_RANGE = [1e-6, 1e3], where the bounds are tested, is refused with a
    message that names the range."""
    with pytest.raises(ValueError, match=r"delta must be a number in \[1e-06, 1000\], got"):
        make(delta)


@pytest.mark.parametrize("name", NAMES)
def test_the_ends_of_the_range_give_bounds(name):
    """delta = 1e-6 and delta = 1e3 (also as the int 1000) are accepted: finite bounds around 1."""
    x = torch.tensor([-50.0, -3.0, -0.7, -1e-9], dtype=torch.float64)
    for delta in (1e-6, 1e3, 1000):
        lower, upper = band(x, delta, name)
        assert torch.all((0 <= lower) & (lower <= 1) & (1 <= upper) & (upper < math.inf)), (delta, lower, upper)


def test_unknown_divergence_lists_the_choices():
    with pytest.raises(ValueError) as error:
        band(torch.zeros(2), 0.05, "kll")
    for name in NAMES:
        assert name in str(error.value)
    assert "'kll'" in str(error.value)


@pytest.mark.parametrize("bad", [math.nan, 0.5, 1e-3, math.inf], ids=["nan", "0.5", "1e-3", "inf"])
def test_nan_or_positive_log_probs_are_rejected(bad):
    with pytest.raises(ValueError, match="old_log_probs"):
        band(torch.tensor([-1.0, bad, -0.1]), 0.05)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("name", NAMES)
def test_tiny_positive_rounding_noise_reads_as_a_certain_token(name, dtype):
    """log-prob 1e-7 (rounding noise of a log-softmax) gives exactly the p = 1 bounds."""
    noisy = band(torch.tensor([1e-7, 1e-5], dtype=dtype), 0.05, name)
    certain = band(torch.zeros(2, dtype=dtype), 0.05, name)
    assert torch.equal(noisy[0], certain[0]) and torch.equal(noisy[1], certain[1])


@pytest.mark.parametrize("name", NAMES + ("js",))
def test_without_validation_nan_gives_nan_and_positive_reads_as_zero(name):
    """validate=False (and so inside torch.compile): no exception; NaN in -> NaN bounds there;
    log-prob > 0 reads as 0."""
    x = torch.tensor([-1.0, math.nan, 0.5, 0.0, -0.2])
    name = divergence_of(name)
    lower, upper = band(x, 0.05, name, validate=False)
    assert torch.isnan(lower[1]) and torch.isnan(upper[1])
    assert lower[2] == lower[3] and upper[2] == upper[3]
    reference = band(x[[0, 3, 4]], 0.05, name)
    assert torch.equal(lower[[0, 3, 4]], reference[0])
    assert torch.equal(upper[[0, 3, 4]], reference[1])


@pytest.mark.parametrize(
    "x",
    [torch.tensor([-1, 0]), torch.tensor([True, False]), [-1.0, -0.5], -0.5],
    ids=["int64", "bool", "list", "float"],
)
def test_old_log_probs_must_be_a_floating_tensor(x):
    with pytest.raises(ValueError, match="old_log_probs"):
        band(x, 0.05)


@pytest.mark.parametrize(
    "x, what",
    [
        (torch.full((3,), -0.5, device="meta"), "meta device"),
        (torch.full((3,), -0.5).to(torch.float8_e4m3fn), "dtype torch.float8_e4m3fn"),
        (torch.full((3,), -0.5).to_sparse(), "layout torch.sparse_coo"),
        (torch.full((2, 2), -0.5).to_sparse_csr(), "layout torch.sparse_csr"),
    ],
    ids=["meta", "float8", "sparse-coo", "sparse-csr"],
)
def test_tensors_without_data_or_arithmetic_are_refused_naming_what_is_accepted(x, what):
    """Issue 17, 9: these raised RuntimeError / NotImplementedError from inside torch."""
    with pytest.raises(ValueError) as error:
        band(x, 0.05)
    assert what in str(error.value) and "float16, bfloat16, float32 or float64" in str(error.value)


@pytest.mark.parametrize("cap", [0.5, 0.0, -1.0, math.nan, True, "10"])
def test_upper_max_must_be_at_least_one(cap):
    with pytest.raises(ValueError, match="upper_max"):
        band(torch.zeros(2), 0.05, upper_max=cap)


@pytest.mark.parametrize("kernel", ["compiled", "AUTO", None, True])
def test_kernel_must_be_one_of_the_choices(kernel):
    with pytest.raises(ValueError, match="kernel must be one of 'auto', 'eager', 'fused', 'native'"):
        band(torch.zeros(2), 0.05, kernel=kernel)


@pytest.mark.parametrize(
    "x, name",
    [(torch.zeros(4, dtype=torch.float64), "kl"), (torch.zeros(4), "hellinger"), (torch.zeros(4), "reverse_kl")],
    ids=["float64", "hellinger", "reverse_kl"],
)
def test_native_kernel_refuses_what_it_does_not_compute(x, name):
    with pytest.raises(ValueError, match="kernel='native' computes kl, tv and chi2"):
        band(x, 0.05, name, kernel="native")


# --- graph safety ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["kl", "reverse_kl"])
def test_band_of_the_halley_solvers_compiles_to_one_graph_and_matches_eager(name):
    """band(..., validate=False) has no data-dependent control flow or host sync: it compiles
    with torch.compile(fullgraph=True) and gives the eager bounds to float32 rounding."""
    torch._dynamo.reset()
    compiled = torch.compile(lambda x: band(x, 0.05, name, validate=False), fullgraph=True)
    x = torch.cat([torch.tensor([-math.inf, 0.0]), -torch.logspace(-9, 1.5, 30)])
    lower, upper = compiled(x)
    eager_lower, eager_upper = band(x, 0.05, name)
    torch.testing.assert_close(lower, eager_lower, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(upper, eager_upper, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["kl", "tv", "chi2", "hellinger", "reverse_kl"])
def test_fused_kernels_give_the_eager_bounds(name):
    """kernel="fused" (torch.compile with dynamic shapes and a symbolic delta) computes the same
    bounds as the eager kernels, ends and saturation included, for four radii in one graph."""
    x = torch.cat([torch.tensor([-math.inf, -200.0, 0.0, -1e-30]), -torch.logspace(-9, 1.5, 60)])
    for delta in (1e-6, 0.05, 0.3, 1e3):
        fused = band(x, delta, name, kernel="fused")
        eager = band(x, delta, name, kernel="eager")
        for got, expected in zip(fused, eager, strict=True):
            torch.testing.assert_close(got, expected, rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["kl", "tv", "chi2", "hellinger", "reverse_kl"])
def test_fused_kernels_give_the_eager_bounds_for_subnormal_p(name):
    """float32 log p in [-104, -100] (p subnormal or 0): the fused bounds are the eager ones, never
    NaN. (Inductor's CPU expm1 is exp - 1, and Kahan's correction of it must not divide by the log
    of a subnormal exp.)"""
    x = -torch.linspace(100.0, 104.0, 4001)
    for delta in (1e-6, 1e-4, 1e-3, 0.05):
        fused = band(x, delta, name, kernel="fused")
        eager = band(x, delta, name, kernel="eager")
        for got, expected in zip(fused, eager, strict=True):
            assert not torch.isnan(got).any(), f"delta={delta}: {int(torch.isnan(got).sum())} NaN"
            torch.testing.assert_close(got, expected, rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["kl", "tv", "chi2", "hellinger", "reverse_kl"])
def test_fused_kernels_compile_once_for_every_radius(name):
    """delta stays symbolic in the fused graph: a new radius runs the kernel already built (no
    Python-level use of delta that torch.compile would specialise on, such as math.log)."""
    stats = torch._dynamo.utils.counters["stats"]
    torch._dynamo.reset()
    x = -torch.logspace(-9, 1.5, 50)
    built = stats["unique_graphs"]
    band(x, 0.05, name, kernel="fused")
    assert stats["unique_graphs"] > built, "no fused kernel was built"
    built = stats["unique_graphs"]
    for delta in (1e-6, 0.3, 1e3):
        band(x, delta, name, kernel="fused")
    assert stats["unique_graphs"] == built


# --- which kernel "auto" takes ----------------------------------------------------------------

band_module = importlib.import_module("bandpo.band")  # the attribute bandpo.band is the function
LARGE = band_module.COMPILE_MIN_TOKENS


@pytest.mark.parametrize("name", ["kl", "tv", "chi2"])
@pytest.mark.parametrize("size", [1, LARGE])
def test_auto_takes_the_cpu_kernels_for_float32_kl_tv_chi2(name, size):
    x = torch.full((size,), -1.0)
    assert band_module.choose_kernel("auto", x, DIVERGENCES[name]) == "native"


@pytest.mark.parametrize(
    "x, name, expected",
    [
        (torch.full((LARGE,), -1.0, dtype=torch.float64), "kl", "fused"),
        (torch.full((LARGE - 1,), -1.0, dtype=torch.float64), "kl", "eager"),
        (torch.full((LARGE,), -1.0), "hellinger", "fused"),
        (torch.full((LARGE - 1,), -1.0), "hellinger", "eager"),
        (torch.full((LARGE,), -1.0), "reverse_kl", "fused"),  # a dedicated (Halley) solver
        (torch.full((LARGE - 1,), -1.0, dtype=torch.float64), "reverse_kl", "eager"),
        (torch.full((LARGE,), -1.0), JS, "eager"),  # the generic solver compiles for minutes
    ],
    ids=[
        "f64-large", "f64-small", "hellinger-large", "hellinger-small", "reverse_kl-large", "reverse_kl-small",
        "user-large",
    ],
)
def test_auto_elsewhere_fuses_large_inputs_of_short_solvers(x, name, expected):
    assert band_module.choose_kernel("auto", x, DIVERGENCES.get(name, name)) == expected


def test_a_user_divergence_named_kl_is_not_the_builtin_kernel():
    impostor = Divergence("kl", lambda u: (u - 1) ** 2)
    x = torch.full((LARGE,), -1.0)
    assert band_module.choose_kernel("auto", x, impostor) == "eager"
    with pytest.raises(ValueError, match="kernel='native'"):
        band(x, 0.05, impostor, kernel="native")


def test_auto_fuses_large_inputs_when_the_cpu_kernels_are_unavailable(monkeypatch):
    monkeypatch.setattr(band_module.cpu_kernels, "available", lambda: False)
    calls = []

    def counting_fused_kernels():
        def run(*args):
            calls.append(args)
            return band_module._ratio_bounds(*args)

        return run

    monkeypatch.setattr(band_module, "_fused_ratio_bounds", counting_fused_kernels)
    band(torch.full((LARGE - 1,), -1.0), 0.05)
    assert calls == []
    band(torch.full((LARGE,), -1.0), 0.05)
    assert len(calls) == 1


def test_generic_solver_divergences_stay_eager_by_default(monkeypatch):
    """kernel="auto" never fuses the generic solver (user divergences): its unrolled graph takes
    minutes to compile."""

    def failing_fused_kernels():
        raise AssertionError("the fused kernels were requested")

    eager_calls = []

    def recorded_eager_kernel(log_p, delta, divergence, upper_max):
        # the generic solver itself on LARGE tokens takes minutes in eager mode too: record, answer cheaply
        eager_calls.append((log_p.shape, divergence))
        return torch.ones_like(log_p), torch.ones_like(log_p)

    monkeypatch.setattr(band_module, "_fused_ratio_bounds", failing_fused_kernels)
    monkeypatch.setattr(band_module, "_ratio_bounds", recorded_eager_kernel)
    band(torch.full((LARGE,), -1.0), 0.05, JS)
    assert eager_calls == [((LARGE,), JS)]
