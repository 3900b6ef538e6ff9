#!/usr/bin/env bash
# The whole test suite on a fresh machine: sets up .venv (scripts/setup.sh with the test extra),
# runs the tests, then the verl and OpenRLHF integration tests in their own venv (they pin other
# transformers versions than TRL).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
bash scripts/setup.sh test
.venv/bin/python -m pytest --ignore=tests/integrations "$@"
bash scripts/docs.sh  # the documentation site, built strictly (a broken link or docstring fails)
INTEGRATIONS_VENV="$PWD/.venv-integrations" bash scripts/test-integrations.sh -q
