#!/usr/bin/env bash
# Build the handbook (mkdocs.yml, docs/) into site/, strictly: any warning fails the build.
# Sets up .venv with the docs extra first (scripts/_setup.sh), so it works on a fresh clone.
# Arguments go to `mkdocs build` (e.g. --site-dir DIR); `bash scripts/docs.sh serve` previews it.
# PYTHON=/path/to/python uses that interpreter instead (it needs the docs extra).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${PYTHON:-}" ]; then PY=$PYTHON; else bash scripts/_setup.sh docs; PY=.venv/bin/python; fi
export NO_MKDOCS_2_WARNING=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [ "${1:-}" = "serve" ]; then shift; exec "$PY" -m mkdocs serve "$@"; fi
exec "$PY" -m mkdocs build --strict "$@"
