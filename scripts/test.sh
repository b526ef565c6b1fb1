#!/usr/bin/env bash
# The test command: set up (idempotent), lint, type-check, check the layer rules (pyproject.toml),
# then the whole pytest suite,
# which uses the real Qwen artifacts and tiny generated checkpoints. Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check edge_qwen scripts tests benchmarks
.venv/bin/mypy
.venv/bin/lint-imports --no-cache
exec .venv/bin/python -m pytest "$@"
