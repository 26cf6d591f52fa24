#!/usr/bin/env bash
# Shared set-up: create .venv if missing and install slimjax (with the extras given as $1) at the
# exact versions of constraints.txt (the versions the test suite passed with). SLIMJAX_UNPINNED=1
# installs without the constraints (what scripts/refresh_constraints.sh does).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
  # setuptools >= 77 reads the SPDX license field when a wheel is built without isolation (slow test)
  .venv/bin/python -m pip install -q --upgrade pip "setuptools>=77"
fi
extras=${1:-}
stamp=".venv/.slimjax-installed${extras:+-$extras}"
pins=()
if [ "${SLIMJAX_UNPINNED:-0}" != 1 ] && [ -f constraints.txt ]; then pins=(-c constraints.txt); fi
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ constraints.txt -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q "${pins[@]}" -e ".${extras:+[$extras]}"
  touch "$stamp"
fi
