"""Throughput and accuracy of bandpo.band against the published bisection and plain clipping.

    python benchmarks/band_speed.py [--sizes 1e4 1e5 1e6 1e7] [--device cpu|cuda] [--divergences kl tv chi2]

For each N, old log-probs are drawn like an LLM's sampled tokens (most near p = 1, a long tail
down to p = 1e-8). Prints million tokens per second, the time relative to one exp+clamp pass
over the same tensor (the cost of plain ratio clipping), the speed-up over the bisection
baseline measured in the same run, and the maximum relative error against a float64 reference
(bandpo's float64 path, itself checked against 50-digit mpmath in tests/test_band.py). Each
divergence is timed with the eager kernels (``compiled=False``) and the fused ones
(``compiled=True``; compilation happens in the untimed warm-up call).
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bisection_baseline import bisection_kl_bounds  # noqa: E402

import bandpo  # noqa: E402

DELTA = 0.05
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


def seconds_per_call(fn, device: str, min_time: float = 0.3, max_repeats: int = 50) -> float:
    fn()
    synchronize(device)
    repeats, start = 0, time.perf_counter()
    while repeats < max_repeats and (repeats < 3 or time.perf_counter() - start < min_time):
        fn()
        repeats += 1
    synchronize(device)
    return (time.perf_counter() - start) / repeats


def max_relative_error(bounds, reference, floor: float) -> float:
    worst = 0.0
    for value, exact in zip(bounds, reference):
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
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    cpu = platform.processor() or platform.machine()
    print(f"# device={args.device} ({torch.cuda.get_device_name() if args.device == 'cuda' else cpu}), "
          f"threads={torch.get_num_threads()}, torch {torch.__version__}, dtype={args.dtype}, delta={DELTA}")
    print(f"{'N':>9} {'method':<22} {'ms/call':>9} {'Mtok/s':>8} {'x exp+clamp':>12} {'speedup vs bisect':>18} {'max rel err':>12}")
    for n in [int(size) for size in args.sizes]:
        x = sample_old_log_probs(n, args.device, dtype)
        reference = {name: bandpo.band(x.double(), DELTA, name, compiled=False) for name in args.divergences}
        clip_time = seconds_per_call(lambda: torch.exp(x).clamp_(0.8, 1.28), args.device)
        bisect_time = None
        rows = [("exp+clamp (clip)", clip_time, None)]
        if n <= args.baseline_max_n:
            bisect_time = seconds_per_call(lambda: bisection_kl_bounds(x, DELTA), args.device, max_repeats=3)
            rows.append(("kl bisection (published)", bisect_time, max_relative_error(bisection_kl_bounds(x, DELTA), reference["kl"], FLOORS[dtype])))
        for name in args.divergences:
            for kernels, compiled in (("eager", False), ("fused", True)):
                run = lambda name=name, compiled=compiled: bandpo.band(x, DELTA, name, validate=False, compiled=compiled)  # noqa: E731
                error = max_relative_error(run(), reference[name], FLOORS[dtype])
                rows.append((f"{name} ({kernels})", seconds_per_call(run, args.device), error))
        for method, seconds, error in rows:
            speedup = f"{bisect_time / seconds:18.1f}" if bisect_time else f"{'-':>18}"
            err = f"{error:12.2e}" if error is not None else f"{'-':>12}"
            print(f"{n:>9} {method:<22} {seconds * 1e3:9.3f} {n / seconds / 1e6:8.1f} {seconds / clip_time:12.2f} {speedup} {err}")


if __name__ == "__main__":
    main()
