#!/usr/bin/env bash
# Set up (.venv with [dev,milp,docs], plus torch + transformers for the trace-recorder tests where a
# CPU torch can be installed) and run the default test suite (not slow, not gpu).
# `bash scripts/test.sh --slow` also runs the slow tests, with XLA's default code generation; other
# arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/_setup.sh dev,milp,docs
if [ ! -f .venv/.slimjax-traces ] && [ "${SLIMJAX_SKIP_TORCH:-0}" != 1 ]; then
  # The recorder tests need torch + transformers. Pin the CPU build (a plain `torch` pulls a
  # multi-GB CUDA build); where it cannot be installed the recorder tests skip with a reason.
  pins=()
  if [ "${SLIMJAX_UNPINNED:-0}" != 1 ] && [ -f constraints.txt ]; then pins=(-c constraints.txt); fi
  if .venv/bin/python -m pip install -q "${pins[@]}" "torch==2.13.0" && .venv/bin/python -m pip install -q "${pins[@]}" "transformers>=4.45"; then
    touch .venv/.slimjax-traces
  else
    echo "note: torch/transformers not installed; the trace-recorder tests will be skipped"
  fi
fi
export WANDB_MODE=offline WANDB_SILENT=true
marker="not slow and not gpu"
# The default run compiles with XLA flags that generate code faster (tests/conftest.py); the full
# run (--slow) compiles every program as users do (SLIMJAX_TEST_XLA_OPT=default).
if [ "${1:-}" = "--slow" ]; then marker="not gpu"; export SLIMJAX_TEST_XLA_OPT=${SLIMJAX_TEST_XLA_OPT:-default}; shift; fi
workers=$(.venv/bin/python -c 'import os; print(min(4, os.cpu_count() or 1))')
# --dist worksteal: each worker starts on a contiguous half of the tests (a file's tests share their
# compiled programs) and the idle one takes work from the other's end. Not loadfile: with xdist 3.8
# a crashed worker under loadfile/loadscope can leave the run waiting forever (pytest-xdist #784, #1378).
exec .venv/bin/python -m pytest -m "$marker" -n "$workers" --dist worksteal "$@"
