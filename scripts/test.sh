#!/usr/bin/env bash
# The whole test suite on a fresh machine: creates .venv (CPU torch first, so that nothing pulls a
# CUDA build), installs bandpo with its TRL and test extras, runs the tests, then runs the verl and
# OpenRLHF integration tests in their own venv (they pin other transformers versions).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check torch==2.13.0
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[trl,test]'
.venv/bin/python -m pytest --ignore=tests/integrations "$@"
INTEGRATIONS_VENV="$PWD/.venv-integrations" scripts/test-integrations.sh -q
