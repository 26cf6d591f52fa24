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
# An up-to-date stamp of an install whose extras include every requested one is enough.
covered() {
  local st=$1 have want
  [ -f "$st" ] && ! [ pyproject.toml -nt "$st" ] && ! [ constraints.txt -nt "$st" ] || return 1
  have=",${st#.venv/.slimjax-installed},"; have=${have/,-/,}
  for want in ${extras//,/ }; do [[ "$have" == *",$want,"* ]] || return 1; done
}
ok=0
for st in "$stamp" .venv/.slimjax-installed*; do if covered "$st"; then ok=1; break; fi; done
if [ "$ok" = 0 ]; then
  # not --no-compile: where PYTHONDONTWRITEBYTECODE is set (as here) no .pyc would ever be written,
  # and every process (each test subprocess) would compile jax, hydra, torch... from source again
  .venv/bin/python -m pip install -q "${pins[@]}" -e ".${extras:+[$extras]}"
  touch "$stamp"
fi
