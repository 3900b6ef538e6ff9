#!/usr/bin/env bash
# The whole test suite on a fresh machine: sets up .venv (scripts/setup.sh with the test extra),
# runs the tests, the lint and type gate, builds the docs site strictly, then the verl and OpenRLHF
# integration tests in their own venv (they pin other transformers versions than TRL).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
bash scripts/setup.sh test
if [[ "${1:-}" == --fast ]]; then  # the fast tier for development: core and loss tests, no training
    shift
    exec .venv/bin/python -m pytest -m "not slow" --ignore=tests/integrations "$@"
fi
.venv/bin/python -m pytest --ignore=tests/integrations "$@"
bash scripts/lint.sh  # ruff and mypy (pyproject.toml); either failing fails the suite
bash scripts/docs.sh  # the documentation site, built strictly (a broken link or docstring fails)
INTEGRATIONS_VENV="$PWD/.venv-integrations" bash scripts/test-integrations.sh -q
