"""The compiled CPU kernels (bandpo.cpu_kernels) compute the eager bounds, for every length, thread
split, layout and radius, and are built once, cached on disk, and given up cleanly without a
compiler. Their accuracy against the 50-digit reference is in tests/test_divergences.py."""

from __future__ import annotations

import logging
import math

import pytest
import torch

from bandpo import DIVERGENCES, band, cpu_kernels

NATIVE = ("kl", "tv", "chi2")


def llm_like_log_probs(n: int, seed: int = 0) -> torch.Tensor:
    """Mostly confident tokens, a long tail down to p = 1e-30, and the ends p = 0 and p = 1."""
    generator = torch.Generator().manual_seed(seed)
    head = -torch.rand(n, generator=generator).pow(4)
    tail = torch.rand(n, generator=generator) * math.log(1e-30)
    x = torch.where(torch.rand(n, generator=generator) < 0.3, tail, head)
    x[:3] = torch.tensor([-math.inf, 0.0, -1e-30])[: min(n, 3)]
    return x


def assert_bounds_equal_the_float64_eager_ones(x: torch.Tensor, delta: float, name: str, **options):
    native = band(x, delta, name, kernel="native", **options)
    exact = band(x.double(), delta, name, kernel="eager", **options)
    for got, reference in zip(native, exact):
        assert got.dtype == torch.float32 and got.shape == x.shape
        torch.testing.assert_close(got.double(), reference.float().double(), rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("delta", [1e-6, 1e-4, 0.01, 0.05, 0.3, 2.0, 100.0, 1e3])
@pytest.mark.parametrize("name", NATIVE)
def test_native_bounds_equal_the_eager_ones(name, delta):
    """Every regime, over the whole of bandpo.band.DELTA_RANGE = [1e-6, 1e3]."""
    assert_bounds_equal_the_float64_eager_ones(llm_like_log_probs(20_000), delta, name)


@pytest.mark.parametrize("delta", [1e-6, 0.05, 1e3])
@pytest.mark.parametrize("name", NATIVE)
def test_native_bounds_in_the_far_tail_overflow_only_where_the_bound_does(name, delta):
    """log p in [-200, -80]: p^(-1/2), p and (1 - p) / p leave the float32 range before the bounds
    do (chi2's sqrt(delta (1 - p) / p) stays finite down to log p = -177 + log(1 / delta)); the
    bounds are the float64 ones rounded to float32, +inf where those exceed float32."""
    x = -torch.linspace(80.0, 200.0, 2401)
    assert_bounds_equal_the_float64_eager_ones(x, delta, name)


def test_the_kernel_refuses_a_kl_step_count_it_does_not_unroll(monkeypatch):
    """The C kernel unrolls kl's Halley loop for 2 and 3 steps (divergences.kl_halley_steps) and
    reports any other count instead of running a different one."""
    monkeypatch.setattr(cpu_kernels, "kl_halley_steps", lambda dtype: 4)
    with pytest.raises(cpu_kernels.NativeKernelError, match="returned -2"):
        band(llm_like_log_probs(10), 0.05, "kl", kernel="native")


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("n", [1, 15, 16, 17, 33, 1000, cpu_kernels.PARALLEL_MIN_TOKENS + 7])
def test_every_length_and_thread_split_is_covered_exactly_once(n, threads):
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for name in NATIVE:
            assert_bounds_equal_the_float64_eager_ones(llm_like_log_probs(n, seed=n), 0.05, name)
    finally:
        torch.set_num_threads(previous)


def test_strided_and_multidimensional_input():
    x = llm_like_log_probs(4 * 64).reshape(4, 64)[:, ::2]
    assert not x.is_contiguous()
    for name in NATIVE:
        assert_bounds_equal_the_float64_eager_ones(x, 0.05, name)


@pytest.mark.parametrize("name", NATIVE)
def test_upper_max_caps_the_upper_bound(name):
    assert_bounds_equal_the_float64_eager_ones(llm_like_log_probs(500), 0.05, name, upper_max=10.0)
    _, upper = band(llm_like_log_probs(500), 0.05, name, kernel="native", upper_max=10.0)
    assert upper.max() == 10.0


@pytest.mark.parametrize("name", NATIVE)
def test_without_validation_nan_gives_nan_and_positive_reads_as_zero(name):
    x = torch.tensor([math.nan, 0.5, 0.0, -1.0] * 9)  # past one 32-token block
    lower, upper = band(x, 0.05, name, kernel="native", validate=False)
    certain_lower, certain_upper = band(torch.zeros(1), 0.05, name, kernel="eager")
    assert torch.isnan(lower[::4]).all() and torch.isnan(upper[::4]).all()
    assert torch.equal(lower[1::4], lower[2::4]) and torch.equal(upper[1::4], upper[2::4])
    torch.testing.assert_close(lower[2:3], certain_lower)
    assert torch.all(upper[2::4] == certain_upper)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_input_goes_through_float32(dtype):
    x = llm_like_log_probs(100).to(dtype)
    for name in NATIVE:
        native = band(x, 0.05, name, kernel="native")
        eager = band(x, 0.05, name, kernel="eager")
        for got, expected in zip(native, eager):
            assert got.dtype == dtype
            torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_the_library_is_built_once_and_reused_from_the_cache(monkeypatch):
    cpu_kernels.load()
    built = list(cpu_kernels._cache_dir().glob("cpu_kernels-*.so"))
    assert len(built) == 1

    def no_compiling(*args):
        raise AssertionError("the cached library was rebuilt")

    monkeypatch.setattr(cpu_kernels, "_compile", no_compiling)
    cpu_kernels.load.cache_clear()
    try:
        cpu_kernels.load()
    finally:
        cpu_kernels.load.cache_clear()
    assert list(cpu_kernels._cache_dir().glob("cpu_kernels-*.so")) == built


@pytest.fixture
def no_compiler(monkeypatch, tmp_path):
    """A machine whose C compiler does not exist, with an empty kernel cache."""
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    monkeypatch.setenv("BANDPO_CACHE_DIR", str(tmp_path / "cache"))
    cpu_kernels.load.cache_clear()
    cpu_kernels.available.cache_clear()
    yield
    cpu_kernels.load.cache_clear()
    cpu_kernels.available.cache_clear()


def test_without_a_compiler_auto_warns_once_and_uses_pytorch(no_compiler, caplog):
    x = llm_like_log_probs(1000)
    with caplog.at_level(logging.WARNING, logger="bandpo.cpu_kernels"):
        lower, upper = band(x, 0.05, "kl")
        band(x, 0.05, "kl")
    assert [record.message for record in caplog.records if "CPU kernels unavailable" in record.message]
    assert len(caplog.records) == 1
    eager_lower, eager_upper = band(x, 0.05, "kl", kernel="eager")
    assert torch.equal(lower, eager_lower) and torch.equal(upper, eager_upper)


def test_without_a_compiler_the_native_kernel_raises(no_compiler):
    with pytest.raises(cpu_kernels.NativeKernelError, match="building bandpo's CPU kernels failed"):
        band(llm_like_log_probs(10), 0.05, "kl", kernel="native")


def test_kernel_numbers_are_the_builtin_divergences_only():
    assert [cpu_kernels.divergence_code(DIVERGENCES[name]) for name in NATIVE] == [0, 1, 2]
    assert cpu_kernels.divergence_code(DIVERGENCES["hellinger"]) is None
