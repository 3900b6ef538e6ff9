"""Throughput and accuracy of bandpo.band against the published bisection and plain clipping.

    python benchmarks/band_speed.py [--sizes 1e4 1e5 1e6 1e7] [--device cpu|cuda] [--divergences kl tv chi2]

For each N, old log-probs are drawn like an LLM's sampled tokens (most near p = 1, a long tail
down to p = 1e-8). Prints million tokens per second, the time relative to one exp+clamp pass
over the same tensor (the cost of plain ratio clipping), the speed-up over the bisection
baseline measured in the same run, the maximum relative error against a float64 reference
(bandpo's float64 path, itself checked against 50-digit mpmath in tests/test_divergences.py), and
the time relative to kl's on the same kernel, against the target that every built-in divergence
costs at most 2x kl (``ok`` / ``MISSED``; kl is always timed, as that reference). Each divergence
is timed with every kernel that applies: ``eager`` (PyTorch operations), ``fused`` (torch.compile;
compiled in the untimed warm-up call) and, on the CPU for kl, tv and chi2, ``native``
(bandpo.cpu_kernels). Each method is timed in blocks of consecutive calls, in three sweeps
over all methods, and reported as the median call, so that a noisy machine slows all of them alike.
"""

from __future__ import annotations

import argparse
import functools
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bisection_baseline import bisection_kl_bounds  # noqa: E402

import bandpo  # noqa: E402
from bandpo import cpu_kernels  # noqa: E402

DELTA = 0.05
KL_RATIO_TARGET = 2.0
"""Every built-in divergence should cost at most this many times kl's time on the same kernel."""
FLOORS = {torch.float32: 1e-6, torch.float64: 1e-12}


def sample_old_log_probs(n: int, device: str, dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    head = -torch.rand(n, generator=generator).pow(4) * 0.5  # p in ~[0.6, 1]
    tail = torch.rand(n, generator=generator) * torch.log(torch.tensor(1e-8))  # p in [1e-8, 1]
    pick_tail = torch.rand(n, generator=generator) < 0.3
    return torch.where(pick_tail, tail, head).to(device=device, dtype=dtype)


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def median_seconds(methods: dict, device: str, calls: int, sweeps: int = 3) -> dict:
    """Median seconds per call of each method: ``sweeps`` passes over all methods, each timing a
    block of ``calls`` consecutive calls after an untimed one (consecutive calls keep the memory
    allocator in the steady state of that method; the sweeps spread a noisy machine's slow spells
    over all methods)."""
    times = {name: [] for name in methods}
    for _ in range(sweeps):
        for name, fn in methods.items():
            fn()
            for _ in range(calls):
                synchronize(device)
                start = time.perf_counter()
                fn()
                synchronize(device)
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def max_relative_error(bounds, reference, floor: float) -> float:
    worst = 0.0
    for value, exact in zip(bounds, reference, strict=True):
        value, exact = value.double(), exact.double()
        finite = torch.isfinite(exact)
        error = (value[finite] - exact[finite]).abs() / exact[finite].abs().clamp_min(floor / 2e-5)
        worst = max(worst, error.max().item())
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=float, nargs="+", default=[1e4, 1e5, 1e6, 1e7])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--divergences", nargs="+", default=list(bandpo.DIVERGENCES), choices=list(bandpo.DIVERGENCES))
    parser.add_argument("--baseline-max-n", type=float, default=1e6, help="skip the slow baseline above this N")
    parser.add_argument("--calls", type=int, default=10, help="calls per block at N = 1e5 (fewer for larger N, at least 2)")
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    cpu = platform.processor() or platform.machine()
    print(f"# device={args.device} ({torch.cuda.get_device_name() if args.device == 'cuda' else cpu}), "
          f"threads={torch.get_num_threads()}, torch {torch.__version__}, dtype={args.dtype}, delta={DELTA}")
    if args.device == "cpu":
        native = (
            f"{cpu_kernels.instruction_sets()[0]} variant, {'OpenMP' if cpu_kernels.openmp() else 'single-threaded'}"
            if cpu_kernels.available()
            else "not built"
        )
        print(f"# native kernels: {native}")
    names = ["kl"] + [name for name in args.divergences if name != "kl"]  # kl: the reference of "x kl"
    kl_target = f"x kl (<={KL_RATIO_TARGET:g})"
    print(f"{'N':>9} {'method':<22} {'ms/call':>9} {'Mtok/s':>8} {'x exp+clamp':>12} {'speedup vs bisect':>18} "
          f"{'max rel err':>12} {kl_target:>14}")
    for n in [int(size) for size in args.sizes]:
        x = sample_old_log_probs(n, args.device, dtype)
        reference = {name: bandpo.band(x.double(), DELTA, name, kernel="eager") for name in names}
        methods = {"exp+clamp (clip)": lambda x=x: torch.exp(x).clamp_(0.8, 1.28)}
        errors, kernels = {}, {}  # kernels: method -> (divergence, kernel)
        if n <= args.baseline_max_n:
            methods["kl bisection (published)"] = functools.partial(bisection_kl_bounds, x, DELTA)
            errors["kl bisection (published)"] = max_relative_error(bisection_kl_bounds(x, DELTA), reference["kl"], FLOORS[dtype])
        for name in names:
            for kernel in ("eager", "fused", "native"):
                if kernel == "native" and not cpu_kernels.supports(x, bandpo.DIVERGENCES[name]):
                    continue
                run = functools.partial(bandpo.band, x, DELTA, name, validate=False, kernel=kernel)
                methods[f"{name} ({kernel})"] = run
                errors[f"{name} ({kernel})"] = max_relative_error(run(), reference[name], FLOORS[dtype])
                kernels[f"{name} ({kernel})"] = (name, kernel)
        seconds = median_seconds(methods, args.device, calls=max(2, min(args.calls, int(args.calls * 1e5 / n))))
        clip_time, bisect_time = seconds["exp+clamp (clip)"], seconds.get("kl bisection (published)")
        for method, time_per_call in seconds.items():
            speedup = f"{bisect_time / time_per_call:18.1f}" if bisect_time else f"{'-':>18}"
            err = f"{errors[method]:12.2e}" if method in errors else f"{'-':>12}"
            print(f"{n:>9} {method:<22} {time_per_call * 1e3:9.3f} {n / time_per_call / 1e6:8.1f} "
                  f"{time_per_call / clip_time:12.2f} {speedup} {err} {kl_ratio(method, kernels, seconds)}")


def kl_ratio(method: str, kernels: dict, seconds: dict) -> str:
    """The time of ``method`` over kl's on the same kernel, with the target's verdict (14 wide)."""
    if method not in kernels:
        return f"{'-':>14}"
    name, kernel = kernels[method]
    kl_time = seconds.get(f"kl ({kernel})")
    if kl_time is None:  # no kl on this kernel
        return f"{'-':>14}"
    ratio = seconds[method] / kl_time
    if name == "kl":
        return f"{ratio:7.2f}{'':7}"
    return f"{ratio:7.2f} {'ok' if ratio <= KL_RATIO_TARGET else 'MISSED':<6}"


if __name__ == "__main__":
    main()
