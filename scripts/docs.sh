#!/usr/bin/env bash
# Builds the documentation site strictly (any warning fails: a broken link or anchor, a missing page,
# a docstring griffe cannot parse) into site/. Needs .venv (scripts/setup.sh); installs the `docs`
# extra of pyproject.toml into it when missing, by name, so bandpo itself is not reinstalled.
#
#   scripts/docs.sh [mkdocs build args...]        e.g. -d /tmp/site
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
python=.venv/bin/python
if ! "$python" -c "import mkdocs, material, mkdocstrings, mkdocstrings_handlers.python, include_markdown, mkdocs_jupyter" 2>/dev/null; then
    mapfile -t requirements < <("$python" -c "
import tomllib
with open('pyproject.toml', 'rb') as file:
    print('\n'.join(tomllib.load(file)['project']['optional-dependencies']['docs']))")
    "$python" -m pip install --quiet --disable-pip-version-check "${requirements[@]}"
fi
# NO_MKDOCS_2_WARNING: Material's banner about MkDocs 2.0 says nothing about this site
NO_MKDOCS_2_WARNING=1 "$python" -m mkdocs build --strict --clean --site-dir site "$@"
