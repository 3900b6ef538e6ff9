#!/usr/bin/env bash
# What we run on a lent GPU machine (its python3 has CUDA torch): the CUDA checks and GPU timings.
# Results go to $OUT (or ./gpu-results).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
out="${OUT:-gpu-results}"; mkdir -p "$out"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$out/device.txt"
python3 scripts/gpu_check.py 2>&1 | tee "$out/gpu_check.txt"
python3 benchmarks/band_speed.py --device cuda --sizes 1e5 1e6 1e7 --baseline-max-n 1e7 2>&1 | tee "$out/band_speed_cuda.txt"
python3 benchmarks/loss_overhead.py --device cuda 2>&1 | tee "$out/loss_overhead_cuda.txt"
