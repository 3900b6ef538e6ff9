#!/usr/bin/env bash
# The lint and type gate: ruff (rules in pyproject.toml [tool.ruff]) on every Python file and notebook,
# and mypy ([tool.mypy]) on src/bandpo. Either one failing fails the script. Needs .venv
# (scripts/setup.sh); installs ruff and mypy into it by name when missing.
#
#   scripts/lint.sh            check
#   scripts/lint.sh --fix      let ruff fix what it can first (review the diff)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
python=.venv/bin/python
if ! "$python" -c "import ruff, mypy" 2>/dev/null; then
    "$python" -m pip install --quiet --disable-pip-version-check "ruff>=0.15" "mypy>=1.18"
fi
"$python" -m ruff check "$@" .
"$python" -m mypy  # files and options from pyproject.toml
