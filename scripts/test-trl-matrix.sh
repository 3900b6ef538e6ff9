#!/usr/bin/env bash
# The TRL tests (tests/test_trl*.py) on each older TRL release of the tested matrix, in .venv itself
# (scripts/setup.sh; it holds TRL 1.16, which the main suite tests): each release is installed alone,
# without dependencies, into its own folder that goes first on PYTHONPATH, so only trl is swapped and
# .venv is never modified. Before testing, every requirement the release declares is checked against
# what .venv has, so a release that would need another transformers, accelerate or datasets fails
# here by name instead of testing against the wrong stack.
#
#   scripts/test-trl-matrix.sh [pytest args...]
#
# TRL_MATRIX          the releases (default: "1.12.0 1.13.0 1.14.2"; 1.16.0 is .venv's own and runs in the
#                     main suite; 1.15 is in the supported range but untested on CPU: its fused LM head
#                     needs Triton)
# TRL_MATRIX_DIR      where the releases are installed (default: .trl-matrix in the repository; reused)
# TRL_MATRIX_RESULTS  also writes the outcome as JSON there (docs/compatibility.md renders
#                     benchmarks/results/cpu/trl-matrix.json)
#
# Prints one summary line per release and fails if any release fails.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="$repo/.venv/bin/python"
read -r -a releases <<< "${TRL_MATRIX:-1.12.0 1.13.0 1.14.2}"
overlays="${TRL_MATRIX_DIR:-$repo/.trl-matrix}"
results="${TRL_MATRIX_RESULTS:-}"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
cd "$repo"

summary=()
rows=()
failed=0
for release in "${releases[@]}"; do
    overlay="$overlays/trl-$release"
    if [[ ! -d "$overlay/trl" ]]; then
        "$python" -m pip install --quiet --disable-pip-version-check --no-deps --target "$overlay" "trl==$release"
    fi
    log="$(mktemp)"
    start=$SECONDS
    set +e
    # the release's own requirements, checked against .venv; then its tests (subprocesses inherit PYTHONPATH)
    PYTHONPATH="$repo/src:$overlay" "$python" - "$release" <<'EOF' 2>&1 | tee "$log" &&
import sys
from importlib.metadata import PackageNotFoundError, requires, version

from packaging.requirements import Requirement

import trl

release = sys.argv[1]
if trl.__version__ != release or version("trl") != release:
    sys.exit(f"trl {release}: imported {trl.__version__} from {trl.__file__} (metadata {version('trl')})")
unmet = []
for requirement in map(Requirement, requires("trl") or []):
    if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
        continue  # an optional extra's requirement
    try:
        installed = version(requirement.name)
    except PackageNotFoundError:
        installed = None
    if installed is None or not requirement.specifier.contains(installed, prereleases=True):
        unmet.append(f"{requirement} (installed: {installed})")
if unmet:
    sys.exit(f"trl {release} needs what .venv does not have: {'; '.join(unmet)}")
print(f"trl {release}: every requirement met by .venv")
EOF
    PYTHONPATH="$repo/src:$overlay" "$python" -m pytest tests/test_trl*.py -p no:cacheprovider "$@" 2>&1 | tee -a "$log"
    status=${PIPESTATUS[0]}
    set -e
    seconds=$((SECONDS - start))
    result="$(grep -E '^=* *[0-9]+ (passed|failed|errors?|skipped)' "$log" | tail -n 1 | tr -d '=' | sed 's/^ *//; s/ *$//')"
    if [[ -z "$result" ]]; then result="$(grep -E '^trl .*(needs|imported)' "$log" | tail -n 1)"; fi
    rm -f "$log"
    if [[ $status -eq 0 && -n "$result" ]]; then verdict=PASS; else verdict=FAIL; failed=1; fi
    summary+=("TRL $release: $verdict, ${result:-exit $status} ($seconds s)")
    rows+=("$release" "$verdict" "${result:-exit $status}" "$seconds")
done
echo
echo "TRL matrix on .venv (transformers $("$python" -c 'import transformers; print(transformers.__version__)')):"
printf '  %s\n' "${summary[@]}"
if [[ -n "$results" ]]; then
    "$python" - "$results" "${rows[@]}" <<'EOF'
import datetime
import json
import platform
import sys
from importlib.metadata import version

path, cells = sys.argv[1], sys.argv[2:]
runs = [
    {"trl": cells[i], "verdict": cells[i + 1], "pytest": cells[i + 2], "seconds": int(cells[i + 3])}
    for i in range(0, len(cells), 4)
]
record = {
    "date": datetime.date.today().isoformat(),
    "python": platform.python_version(),
    "stack": {name: version(name) for name in ("torch", "transformers", "accelerate", "datasets")},
    "runs": runs,
}
with open(path, "w") as file:
    json.dump(record, file, indent=2)
    file.write("\n")
print(f"wrote {path}")
EOF
fi
exit $failed
