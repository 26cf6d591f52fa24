#!/usr/bin/env bash
# Refresh constraints.txt: install slimjax with every extra into a fresh virtualenv without the
# constraints (the newest versions pip resolves), run the whole default test suite there, and only
# if it passes write the exact versions to constraints.txt. Review and commit the diff.
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
git clone -q . "$tmp/src"
cd "$tmp/src"
rm -f constraints.txt
SLIMJAX_UNPINNED=1 bash scripts/test.sh -q
{ echo "# Exact versions the test suite passed with (pip constraints; used by scripts/_setup.sh)."
  echo "# Refresh: bash scripts/refresh_constraints.sh (fresh venv, unpinned install, full test run, then freeze)."
  .venv/bin/pip freeze | grep -v "^-e\|^slimjax\|^nvidia\|^triton" | sort -f; } > "$OLDPWD/constraints.txt"
echo "constraints.txt refreshed from a passing run in $tmp/src"
