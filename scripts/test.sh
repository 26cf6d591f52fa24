#!/usr/bin/env bash
# Set up (.venv with [dev,milp]) and run the default test suite (not slow, not gpu).
# `bash scripts/test.sh --slow` also runs the slow tests; other arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/_setup.sh dev,milp
export WANDB_MODE=offline WANDB_SILENT=true
marker="not slow and not gpu"
if [ "${1:-}" = "--slow" ]; then marker="not gpu"; shift; fi
workers=$(.venv/bin/python -c 'import os; print(min(4, os.cpu_count() or 1))')
exec .venv/bin/python -m pytest -m "$marker" -n "$workers" --dist loadfile "$@"
