"""Worst relative error of bandpo.band against the 50-digit reference, per divergence, delta, dtype.

    python benchmarks/band_accuracy.py [--points 60] [--kernels eager native fused] [--deltas ...] [--divergences ...]

p runs log-spaced over [1e-12, 1 - 1e-10] (dense near both ends), delta over the documented range
[1e-6, 1e3] (bandpo.band.DELTA_RANGE); the reference is computed for the exact input value (the
float32-rounded one for float32). Errors are relative, with the
absolute floors of the accuracy target (1e-12 for float64, 1e-6 for float32) for bounds near 0.
Targets: 1e-9 (float64) and 2e-5 (float32). Each kernel runs where it applies (native: kl, tv and
chi2 in float32; fused compiles once per divergence and dtype, in seconds for every built-in one).
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import mpmath
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from mp_reference import reference_bounds  # noqa: E402

import bandpo  # noqa: E402
from bandpo import cpu_kernels  # noqa: E402

TARGETS = {torch.float64: (1e-9, 1e-12), torch.float32: (2e-5, 1e-6)}
DELTAS = (1e-6, 1e-4, 0.01, 0.05, 0.5, 10.0, 1e3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--points", type=int, default=60)
    parser.add_argument("--kernels", nargs="+", default=["eager", "native"], choices=["eager", "native", "fused"])
    parser.add_argument("--deltas", nargs="+", type=float, default=DELTAS)
    parser.add_argument("--divergences", nargs="+", default=list(bandpo.DIVERGENCES), choices=list(bandpo.DIVERGENCES))
    args = parser.parse_args()
    half = args.points // 2
    log_p = np.concatenate([np.log(np.logspace(-12, -1e-9, half)), np.log1p(-np.logspace(-10, -0.3, args.points - half))])
    print(f"{'divergence':<11} {'delta':>6} {'dtype':<8} {'kernel':<7} {'max rel err':>12} {'target':>8}")
    for name, delta, (dtype, (target, floor)), kernel in itertools.product(
        args.divergences, args.deltas, TARGETS.items(), args.kernels
    ):
        x = torch.tensor(log_p, dtype=dtype)
        if kernel == "native" and not cpu_kernels.supports(x, bandpo.DIVERGENCES[name]):
            continue
        lower, upper = bandpo.band(x, delta, name, kernel=kernel)
        worst = 0.0
        for value_lower, value_upper, exact_x in zip(lower.tolist(), upper.tolist(), x.double().tolist(), strict=True):
            exact_lower, exact_upper = reference_bounds(name, exact_x, delta)
            for value, exact in ((value_lower, exact_lower), (value_upper, exact_upper)):
                error = abs(mpmath.mpf(value) - exact) / max(abs(exact), mpmath.mpf(floor / target))
                worst = max(worst, float(error))
        status = "ok" if worst <= target else "MISSED"
        print(f"{name:<11} {delta:>6g} {str(dtype)[6:]:<8} {kernel:<7} {worst:>12.2e} {target:>8.0e} {status}")


if __name__ == "__main__":
    main()
