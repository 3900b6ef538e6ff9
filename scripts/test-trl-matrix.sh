#!/usr/bin/env bash
# The TRL tests (tests/test_trl*.py) on each TRL release of the tested matrix, in ONE extra venv where
# only trl is swapped between runs: every release of the matrix accepts the same transformers,
# accelerate and datasets, so nothing else moves. bandpo itself is not installed there: the tests
# import the working tree (PYTHONPATH=src, with the native kernels that .venv built in place).
#
#   scripts/test-trl-matrix.sh [pytest args...]
#
# TRL_MATRIX         the TRL releases (default: "1.12.0 1.13.0 1.14.2 1.16.0"; 1.15 is in the
#                    supported range but untested on CPU: its fused LM head needs Triton)
# TRL_MATRIX_VENV    venv location (default: .venv-trl-matrix in the repository; reused if present)
# TORCH_SPEC         torch installed first (default: torch==2.13.0, the CPU wheel on this project's
#                    machines), so that nothing pulls a CUDA build of torch
#
# Prints one summary line per release and fails if any release fails.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${TRL_MATRIX_VENV:-$repo/.venv-trl-matrix}"
python="${PYTHON:-python3.11}"
read -r -a releases <<< "${TRL_MATRIX:-1.12.0 1.13.0 1.14.2 1.16.0}"
torch_spec="${TORCH_SPEC:-torch==2.13.0}"

if [[ ! -x "$venv/bin/python" ]]; then
    "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip install --quiet --disable-pip-version-check)
"${pip[@]}" "$torch_spec"
# bandpo's dependencies with its trl and test extras, as pyproject.toml lists them (a no-op once there)
requirements="$(mktemp)"
trap 'rm -f "$requirements"' EXIT
"$venv/bin/python" -c '
import sys, tomllib
project = tomllib.load(open(sys.argv[1], "rb"))["project"]
extras = project["optional-dependencies"]
print("\n".join(project["dependencies"] + extras["trl"] + extras["test"]))
' "$repo/pyproject.toml" > "$requirements"
"${pip[@]}" "$torch_spec" -r "$requirements"

export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export PYTHONPATH="$repo/src${PYTHONPATH:+:$PYTHONPATH}"
cd "$repo"
summary=()
failed=0
for release in "${releases[@]}"; do
    "${pip[@]}" "$torch_spec" "trl==$release"
    log="$(mktemp)"
    start=$SECONDS
    set +e
    "$venv/bin/python" -m pytest tests/test_trl*.py -p no:cacheprovider "$@" 2>&1 | tee "$log"
    status=${PIPESTATUS[0]}
    set -e
    installed="$("$venv/bin/python" -c 'import trl; print(trl.__version__)')"
    result="$(grep -E '^=* *[0-9]+ (passed|failed|errors?|skipped)' "$log" | tail -n 1 | tr -d '=' | sed 's/^ *//; s/ *$//')"
    rm -f "$log"
    if [[ $status -eq 0 && "$installed" == "$release" ]]; then verdict=PASS; else verdict=FAIL; failed=1; fi
    summary+=("TRL $release (installed $installed): $verdict, ${result:-no pytest summary, exit $status} ($((SECONDS - start)) s)")
done
echo
echo "TRL matrix, transformers $("$venv/bin/python" -c 'import transformers; print(transformers.__version__)'):"
printf '  %s\n' "${summary[@]}"
exit $failed
