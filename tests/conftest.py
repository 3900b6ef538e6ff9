"""Test-session settings: no network; the ``slow`` tier.

``pytest -m "not slow" --ignore=tests/integrations`` is the fast inner loop (the operator, the rules,
the loss and their helpers; docs/development.md gives its time). Slow are the tests that train or load
models (whole modules, `SLOW_MODULES`), the few core tests that compile with torch.compile or
build the native extension (`SLOW_TESTS`, every parametrization included), and every parametrization
whose ``kernel`` is ``"fused"`` (torch.compile).
"""

import os
import tempfile

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
if "PYTEST_XDIST_WORKER" in os.environ:
    # A torch.compile cache per pytest-xdist worker: two processes compiling the same graph into one
    # cache can leave a truncated library there that later loads fail on ("file too short").
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(
        os.environ.get("TORCHINDUCTOR_CACHE_DIR") or os.path.join(tempfile.gettempdir(), "torchinductor"),
        os.environ["PYTEST_XDIST_WORKER"],
    )
    # The cores shared among the workers (read by torch when it is first imported, after this file), so
    # that the workers' OpenMP threads together do not outnumber the cores.
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // workers)))

SLOW_MODULES = {
    "test_callbacks.py", "test_cli_check.py", "test_cli_train.py", "test_crash_consistency.py", "test_data.py",
    "test_evaluate.py", "test_files.py", "test_plots.py", "test_settings.py", "test_trl.py", "test_trl_config.py",
}
"""Test modules that build trainers, load tiny models or run the command line end to end."""
SLOW_TESTS = {
    "test_band.py::test_band_of_the_halley_solvers_compiles_to_one_graph_and_matches_eager",
    "test_band.py::test_fused_kernels_give_the_eager_bounds",
    "test_band.py::test_fused_kernels_give_the_eager_bounds_for_subnormal_p",
    "test_band.py::test_fused_kernels_compile_once_for_every_radius",
    "test_cpu_kernels.py::test_a_library_built_from_another_version_of_the_source_is_refused",
    "test_cpu_kernels.py::test_a_wheel_carries_the_kernels_and_runs_them_without_a_compiler",
    "test_cpu_kernels.py::test_a_failed_build_installs_with_a_warning_and_falls_back_to_pytorch",
    "test_cpu_kernels.py::test_a_compiler_without_openmp_builds_single_threaded_kernels",
}
"""Core tests that compile (torch.compile, a C compiler): file::function."""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Marks the slow tests; a `SLOW_TESTS` entry whose module was collected but matches no test
    (renamed, removed) is an error, so the fast tier never silently grows."""
    unmatched = set(SLOW_TESTS)
    collected_modules = set()
    for item in items:
        module = item.path.name
        collected_modules.add(module)
        key = f"{module}::{item.originalname}" if isinstance(item, pytest.Function) else ""
        callspec = getattr(item, "callspec", None)
        compiles = callspec is not None and callspec.params.get("kernel") == "fused"
        if module in SLOW_MODULES or key in SLOW_TESTS or compiles:
            item.add_marker(pytest.mark.slow)
        unmatched.discard(key)
    stale = sorted(entry for entry in unmatched if entry.split("::")[0] in collected_modules)
    if stale and not config.getoption("keyword"):
        raise pytest.UsageError(f"tests/conftest.py SLOW_TESTS names tests that do not exist: {stale}")
