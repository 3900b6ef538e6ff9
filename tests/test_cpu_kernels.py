"""The native CPU kernels (bandpo.cpu_kernels) compute the eager bounds, for every length, thread
split, layout, radius and instruction-set variant; they are built when the package is installed (an
optional extension: an install without a working C compiler succeeds, and bandpo falls back to
PyTorch's kernels), and nothing compiles at run time. Their accuracy against the 50-digit reference
is in tests/test_divergences.py."""

from __future__ import annotations

import importlib.util
import logging
import math
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest
import torch

import bandpo
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
    """By band(kernel="native") (the widest instruction set) and by every variant the CPU runs."""
    exact = band(x.double(), delta, name, kernel="eager", **options)
    native = band(x, delta, name, kernel="native", **options)
    variants = [
        cpu_kernels.ratio_bounds(x, delta, DIVERGENCES[name], options.get("upper_max"), instruction_set)
        for instruction_set in cpu_kernels.instruction_sets()
    ]
    for bounds in [native, *variants]:
        for got, reference in zip(bounds, exact, strict=True):
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
        for got, expected in zip(native, eager, strict=True):
            assert got.dtype == dtype
            torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_kernel_numbers_are_the_builtin_divergences_only():
    assert [cpu_kernels.divergence_code(DIVERGENCES[name]) for name in NATIVE] == [0, 1, 2]
    assert cpu_kernels.divergence_code(DIVERGENCES["hellinger"]) is None


def test_the_widest_instruction_set_the_cpu_runs_is_the_default():
    """Every build has the baseline variant (no instructions beyond the target's default); x86-64
    builds by GCC or Clang add AVX2+FMA and AVX-512F, used where the CPU supports them."""
    sets = cpu_kernels.instruction_sets()
    assert sets[-1] == "baseline" and set(sets) <= set(cpu_kernels.INSTRUCTION_SETS)
    x = llm_like_log_probs(1000)
    for name in NATIVE:
        default = band(x, 0.05, name, kernel="native")
        widest = cpu_kernels.ratio_bounds(x, 0.05, DIVERGENCES[name], None, sets[0])
        assert all(torch.equal(a, b) for a, b in zip(default, widest, strict=True))


def test_an_instruction_set_the_build_or_cpu_lacks_is_refused(monkeypatch):
    """The kernel refuses (-3) a variant this CPU lacks, and a variant number past those the build has:
    asked for on every machine, since a CPU that runs all three variants leaves none missing."""
    missing = [name for name in cpu_kernels.INSTRUCTION_SETS if name not in cpu_kernels.instruction_sets()]
    monkeypatch.setattr(cpu_kernels, "INSTRUCTION_SETS", (*cpu_kernels.INSTRUCTION_SETS, "unbuilt"))
    for name in [*missing, "unbuilt"]:
        with pytest.raises(cpu_kernels.NativeKernelError, match="returned -3"):
            cpu_kernels.ratio_bounds(torch.zeros(4), 0.05, DIVERGENCES["kl"], None, name)
    with pytest.raises(ValueError, match="instruction_set"):
        cpu_kernels.ratio_bounds(torch.zeros(4), 0.05, DIVERGENCES["kl"], None, "sse9")


# --- how the kernels are built and found ---------------------------------------------------------


def test_the_installed_package_has_the_extension():
    """The development install (scripts/setup.sh: pip install -e, with a C compiler) builds the
    extension next to bandpo's sources, with OpenMP on Linux (GCC)."""
    spec = importlib.util.find_spec(cpu_kernels.EXTENSION)
    assert spec is not None and spec.origin is not None
    assert Path(spec.origin).parent == Path(bandpo.__file__).parent
    assert cpu_kernels.available()
    if sys.platform == "linux":
        assert cpu_kernels.openmp()


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads /proc/self/maps (Linux)")
def test_the_kernels_share_the_openmp_runtime_pytorch_loaded():
    """The extension needs libgomp.so.1, which the loader resolves to the copy PyTorch's wheel brought:
    one OpenMP runtime, one thread pool, in the process."""
    torch_thread_count = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        band(llm_like_log_probs(cpu_kernels.PARALLEL_MIN_TOKENS + 1), 0.05, "kl", kernel="native")
    finally:
        torch.set_num_threads(torch_thread_count)
    mapped = {line.split()[-1] for line in Path("/proc/self/maps").read_text().splitlines() if "libgomp" in line}
    assert len({os.path.realpath(path) for path in mapped}) <= 1, mapped


@pytest.fixture
def extension_not_built(monkeypatch):
    """bandpo as installed where the extension did not build."""
    monkeypatch.setattr(cpu_kernels, "EXTENSION", "bandpo._no_such_extension")
    cpu_kernels.load.cache_clear()
    cpu_kernels.available.cache_clear()
    yield
    cpu_kernels.load.cache_clear()
    cpu_kernels.available.cache_clear()


def test_without_the_extension_auto_warns_once_and_uses_pytorch(extension_not_built, caplog):
    x = llm_like_log_probs(1000)
    with caplog.at_level(logging.WARNING, logger="bandpo.cpu_kernels"):
        lower, upper = band(x, 0.05, "kl")
        band(x, 0.05, "kl")
    assert [record.message for record in caplog.records if "CPU kernels unavailable" in record.message]
    assert len(caplog.records) == 1
    eager_lower, eager_upper = band(x, 0.05, "kl", kernel="eager")
    assert torch.equal(lower, eager_lower) and torch.equal(upper, eager_upper)


def test_without_the_extension_the_native_kernel_says_how_to_get_it(extension_not_built):
    with pytest.raises(cpu_kernels.NativeKernelError, match="were not built") as raised:
        band(llm_like_log_probs(10), 0.05, "kl", kernel="native")
    assert "C compiler" in str(raised.value) and "reinstall" in str(raised.value)


def test_a_library_built_from_another_version_of_the_source_is_refused(extension_not_built, monkeypatch, tmp_path):
    """An in-place build (pip install -e) left behind by a change of cpu_kernels.c is not run: its
    entry points may not match this module's calls."""
    monkeypatch.setattr(cpu_kernels, "EXTENSION", "bandpo._cpu_kernels")
    edited = tmp_path / "cpu_kernels.c"
    edited.write_bytes(cpu_kernels.SOURCE.read_bytes() + b"/* edited */\n")
    monkeypatch.setattr(cpu_kernels, "SOURCE", edited)
    with pytest.raises(cpu_kernels.NativeKernelError, match="another version of .*pip install -e"):
        band(llm_like_log_probs(10), 0.05, "kl", kernel="native")
    assert not cpu_kernels.available()


def test_loading_the_kernels_runs_no_program(monkeypatch):
    """Nothing is compiled at run time: the kernels load and run with no PATH and no subprocess."""

    def no_programs(*args, **kwargs):
        raise AssertionError(f"bandpo ran a program: {args}")

    monkeypatch.setattr(subprocess, "Popen", no_programs)
    monkeypatch.setenv("PATH", "")
    cpu_kernels.load.cache_clear()
    cpu_kernels.available.cache_clear()
    try:
        assert cpu_kernels.available()
        assert_bounds_equal_the_float64_eager_ones(llm_like_log_probs(100), 0.05, "kl")
    finally:
        cpu_kernels.load.cache_clear()
        cpu_kernels.available.cache_clear()


# --- install tests: a wheel of this checkout, built and installed into a temporary directory ------

REPO = Path(__file__).resolve().parents[1]
PIP = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]


def build_and_install(tmp_path: Path, env: dict[str, str]) -> tuple[Path, Path, str]:
    """(wheel, site directory, build log) for a wheel of the checkout's sources built with ``env``
    (a copy of them, so that no build output lands in the checkout), installed with --target."""
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy2(REPO / name, source / name)
    shutil.copytree(
        REPO / "src", source / "src", ignore=shutil.ignore_patterns("*.so", "*.pyd", "__pycache__", "*.egg-info")
    )
    built = subprocess.run(
        [*PIP, "wheel", "-v", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "wheels"), str(source)],
        env=env, capture_output=True, text=True, timeout=300,
    )
    log = built.stdout + built.stderr
    assert built.returncode == 0, log[-5000:]
    (wheel,) = (tmp_path / "wheels").glob("bandpo-*.whl")
    site = tmp_path / "site"
    installed = subprocess.run(
        [*PIP, "install", "--no-deps", "--no-index", "--target", str(site), str(wheel)],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr
    return wheel, site, log


def run_without_a_compiler(tmp_path: Path, site: Path, script: str) -> None:
    """``script`` in a fresh interpreter that imports bandpo from ``site``, with no compiler on
    PATH (an empty directory) and no $CC."""
    empty = tmp_path / "empty-path"
    empty.mkdir()
    env = {key: value for key, value in os.environ.items() if key not in ("CC", "CXX", "PYTHONPATH")}
    env.update(PATH=str(empty), PYTHONPATH=str(site), OMP_NUM_THREADS="2")
    prologue = f"""
        import shutil, torch, bandpo
        from pathlib import Path
        from bandpo import band, cpu_kernels
        assert Path(bandpo.__file__).is_relative_to({str(site)!r}), bandpo.__file__
        assert not any(shutil.which(name) for name in ("cc", "gcc", "clang", "c++"))
        # more tokens than cpu_kernels.PARALLEL_MIN_TOKENS (threads), fewer than band.COMPILE_MIN_TOKENS
        # (kernel="auto" without the kernels is eager, not torch.compile, which needs a compiler)
        torch.manual_seed(0)
        x = torch.cat([-torch.rand(40_000) ** 4, torch.rand(20_000) * -69.0, torch.tensor([0.0, -1e-30])])
    """
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(prologue) + textwrap.dedent(script)],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_wheel_carries_the_kernels_and_runs_them_without_a_compiler(tmp_path):
    env = {key: value for key, value in os.environ.items() if key != "CC"}
    wheel, site, _ = build_and_install(tmp_path, env)
    names = zipfile.ZipFile(wheel).namelist()
    assert [name for name in names if name.startswith("bandpo/_cpu_kernels.")], names
    assert not wheel.name.endswith("-none-any.whl")  # a platform wheel
    run_without_a_compiler(tmp_path, site, f"""
        import sys
        assert cpu_kernels.available() and cpu_kernels.instruction_sets() == {cpu_kernels.instruction_sets()!r}
        assert Path(cpu_kernels.load()._name).is_relative_to(Path(bandpo.__file__).parent)
        for name in ("kl", "tv", "chi2"):
            native = band(x, 0.05, name, kernel="native")
            eager = band(x.double(), 0.05, name, kernel="eager")
            for got, expected in zip(native, eager):
                torch.testing.assert_close(got.double(), expected.float().double(), rtol=2e-5, atol=1e-6)
        if sys.platform == "linux":  # threaded, on the one OpenMP runtime of the process (PyTorch's)
            assert cpu_kernels.openmp() and torch.get_num_threads() == 2
            maps = Path("/proc/self/maps").read_text().splitlines()
            assert len({{line.split()[-1] for line in maps if "libgomp" in line}}) == 1
    """)


def test_a_failed_build_installs_with_a_warning_and_falls_back_to_pytorch(tmp_path):
    wheel, site, log = build_and_install(tmp_path, {**os.environ, "CC": "false"})
    assert "WARNING: bandpo: building the optional extension bandpo._cpu_kernels" in log
    assert not [name for name in zipfile.ZipFile(wheel).namelist() if "_cpu_kernels." in name]
    run_without_a_compiler(tmp_path, site, """
        import pytest
        assert not cpu_kernels.available()
        auto, eager = band(x, 0.05, "kl"), band(x, 0.05, "kl", kernel="eager")
        assert all(torch.equal(a, b) for a, b in zip(auto, eager))
        with pytest.raises(cpu_kernels.NativeKernelError, match="were not built"):
            band(x, 0.05, "kl", kernel="native")
    """)


def test_a_compiler_without_openmp_builds_single_threaded_kernels(tmp_path):
    """Where -fopenmp fails (Apple's clang, say), the kernels are built without it and run on the
    calling thread."""
    compiler = tmp_path / "cc-without-openmp"
    compiler.write_text(f'#!/bin/sh\nfor arg; do [ "$arg" = -fopenmp ] && exit 1; done\nexec {shutil.which("gcc") or shutil.which("cc")} "$@"\n')
    compiler.chmod(0o755)
    wheel, site, log = build_and_install(tmp_path, {**os.environ, "CC": str(compiler)})
    assert "WARNING: bandpo" not in log and "without OpenMP" in log
    run_without_a_compiler(tmp_path, site, """
        assert cpu_kernels.available() and not cpu_kernels.openmp()
        for name in ("kl", "tv", "chi2"):
            native = band(x, 0.05, name, kernel="native")
            eager = band(x.double(), 0.05, name, kernel="eager")
            for got, expected in zip(native, eager):
                torch.testing.assert_close(got.double(), expected.float().double(), rtol=2e-5, atol=1e-6)
    """)
