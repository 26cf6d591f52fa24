#!/usr/bin/env bash
# Set up (.venv, install) and run the main job: `slimjax` on its embedded default config.
# Extra arguments are passed to slimjax (Hydra overrides), e.g. `bash scripts/run.sh batch_size=32`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/_setup.sh
exec .venv/bin/slimjax "$@"
