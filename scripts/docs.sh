#!/usr/bin/env bash
# Build the handbook (mkdocs.yml, docs/) into site/, strictly: any warning fails the build.
# Needs the docs extra (pip install -e '.[docs]'; bash scripts/test.sh installs it). Arguments go
# to `mkdocs build` (e.g. --site-dir DIR); `bash scripts/docs.sh serve` previews it instead.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${PYTHON:-}" ]; then PY=$PYTHON; elif [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
export NO_MKDOCS_2_WARNING=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [ "${1:-}" = "serve" ]; then shift; exec "$PY" -m mkdocs serve "$@"; fi
exec "$PY" -m mkdocs build --strict "$@"
