#!/usr/bin/env bash
# Idempotent set-up shared by the README's two commands: a virtual environment in .venv with
# edge-qwen and its test extras, then the real Qwen artifacts (sha256-verified, cached in
# ~/.cache/edge-qwen). The first run builds llama-cpp-python from source (~6 min on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
stamp=.venv/.edge-qwen-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "setup: installing edge-qwen into .venv (first time builds llama.cpp; a few minutes)" >&2
    CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)} \
        .venv/bin/python -m pip install -q -e ".[test]"
    touch "$stamp"
fi
.venv/bin/python scripts/fetch_assets.py >&2
