#!/usr/bin/env bash
# Runs examples/quickstart.ipynb headless in .venv's own kernel, offline, as CI does. Fails when a cell
# raises, when the whole run exceeds NOTEBOOK_TIMEOUT seconds (default 900), or when the committed
# notebook carries outputs (it is kept cleared). Needs .venv (scripts/setup.sh); installs nbclient and
# ipykernel into it when missing, by name, so bandpo itself is not reinstalled, and wandb, so that the
# notebook's Weights & Biases cell runs too (offline: WANDB_MODE=offline).
#
#   scripts/notebook.sh [EXECUTED.ipynb]        also writes the executed notebook there (up to a failing cell)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_MODE=offline WANDB_SILENT=true
python=.venv/bin/python
notebook=examples/quickstart.ipynb
timeout_s="${NOTEBOOK_TIMEOUT:-900}"
if ! "$python" -c "import nbclient, ipykernel, wandb" 2>/dev/null; then
    "$python" -m pip install --quiet --disable-pip-version-check "nbclient>=0.10" "ipykernel>=6.29" "wandb>=0.19"
fi
start=$SECONDS
timeout "$timeout_s" "$python" - "$notebook" "$timeout_s" "${1:-}" <<'EOF'
import sys

import nbformat
from nbclient import NotebookClient

path, timeout_s, executed_path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
notebook = nbformat.read(path, as_version=4)
stale = [index for index, cell in enumerate(notebook.cells)
         if cell.cell_type == "code" and (cell.outputs or cell.execution_count is not None)]
if stale:
    sys.exit(f"{path}: cells {stale} carry outputs; clear them before committing (the notebook is kept cleared)")
# "python3" is the kernel of the interpreter running this script (.venv); a failing cell raises CellExecutionError
client = NotebookClient(notebook, timeout=timeout_s, kernel_name="python3", resources={"metadata": {"path": "examples"}})
try:
    client.execute()
finally:  # the executed cells, up to a failing one
    if executed_path:
        nbformat.write(notebook, executed_path)
EOF
echo "$notebook ran in $((SECONDS - start)) s"
