#!/usr/bin/env bash
# The main job, offline: the real Qwen2.5-Coder-0.5B-Instruct (Q4_K_M) answers a prompt.
#   ./scripts/demo.sh ["your prompt"]  [extra edge-qwen run options]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
model=$(.venv/bin/python scripts/fetch_assets.py --only gguf --json | .venv/bin/python -c 'import json,sys; print(json.load(sys.stdin)["gguf"])')
prompt=${1:-"Write a Python function to implement binary search."}
shift || true
exec .venv/bin/edge-qwen run "$model" "$prompt" --stream "$@"
