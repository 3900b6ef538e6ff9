#!/usr/bin/env bash
# Tests of the verl and OpenRLHF integrations, in their own venv (verl pins transformers < 5.11,
# OpenRLHF pins 5.15 and GPU-only packages; neither may share the TRL venv).
#
#   scripts/test-integrations.sh [pytest args...]
#
# INTEGRATIONS_VENV  venv location (default: ~/.cache/bandpo/venv-integrations; reused if present)
# TORCH_SPEC         torch installed first (default: torch==2.13.0, the CPU wheel on this project's
#                    machines), so that nothing pulls a CUDA build of torch
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${INTEGRATIONS_VENV:-$HOME/.cache/bandpo/venv-integrations}"
python="${PYTHON:-python3.11}"

if [[ ! -x "$venv/bin/python" ]]; then
    "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip install --quiet --disable-pip-version-check)

if ! "$venv/bin/python" -c "import torch" 2>/dev/null; then
    "${pip[@]}" "${TORCH_SPEC:-torch==2.13.0}"
fi
# torch stays pinned so that no dependency swaps in another (CUDA) build
"${pip[@]}" "${TORCH_SPEC:-torch==2.13.0}" "verl>=0.9,<0.10" "ray>=2.41" "deepspeed>=0.17" pytest
# OpenRLHF's own requirements (flash-attn, vllm, pinned transformers) are GPU-only or clash with verl's;
# its PolicyLoss needs only torch and deepspeed.
"${pip[@]}" --no-deps "openrlhf>=0.11,<0.12"
"${pip[@]}" -e "$repo"

cd "$repo"
exec "$venv/bin/python" -m pytest tests/integrations/test_verl.py tests/integrations/test_openrlhf.py "$@"
