#!/usr/bin/env bash
# The whole test suite on a fresh machine: sets up .venv (scripts/setup.sh with the test extra), runs
# the tests, the lint and type gate, builds the docs site strictly, executes the quickstart notebook,
# runs the TRL tests on the older TRL releases of the matrix, then the verl and OpenRLHF integration
# tests in their own venv (they pin other transformers versions than TRL). Prints each phase's time.
#
#   scripts/test.sh [pytest args...]      everything (the pytest arguments go to the main suite)
#   scripts/test.sh --fast [pytest args]  the fast tier for development: core and loss tests, no training
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1

phase_times=()
report_times() {
    [[ ${#phase_times[@]} -gt 0 ]] && printf 'phase %s\n' "${phase_times[@]}"
    return 0
}
trap report_times EXIT
phase() {  # phase NAME COMMAND...: runs the command, records "NAME: N s" (a failure stops the suite)
    local name=$1 start=$SECONDS
    shift
    "$@"
    phase_times+=("$name: $((SECONDS - start)) s")
}

phase setup bash scripts/setup.sh test
# every core (pytest-xdist), whole files per worker so that module fixtures are built once
parallel=(-n auto --dist loadfile)
if [[ "${1:-}" == --fast ]]; then
    shift
    phase fast-tier .venv/bin/python -m pytest "${parallel[@]}" -m "not slow" --ignore=tests/integrations "$@"
    exit 0
fi
phase tests .venv/bin/python -m pytest "${parallel[@]}" --ignore=tests/integrations "$@"
phase lint bash scripts/lint.sh          # ruff and mypy (pyproject.toml); either failing fails the suite
phase docs bash scripts/docs.sh          # the documentation site, built strictly (a broken link or docstring fails)
phase notebook bash scripts/notebook.sh  # examples/quickstart.ipynb, executed offline in .venv's kernel
phase trl-matrix bash scripts/test-trl-matrix.sh -q  # TRL 1.12.0, 1.13.0, 1.14.2 swapped into .venv
phase integrations env INTEGRATIONS_VENV="$PWD/.venv-integrations" bash scripts/test-integrations.sh -q
