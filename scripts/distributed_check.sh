#!/usr/bin/env bash
# Multi-process check by hand: the same run on NPROC local processes (jax.distributed, gloo on CPU,
# coordinator on 127.0.0.1) and on one process; prints J and placements side by side per solver.
# Usage: bash scripts/distributed_check.sh [overrides...]
#   NPROC=2 (processes), OUT=/tmp/slimjax-distributed (run directories),
#   PYTHON (default: .venv/bin/python, set up first by scripts/_setup.sh, so a fresh clone works)
#   e.g. NPROC=3 bash scripts/distributed_check.sh batch_size=96 "solvers=[successive,popularity]"
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${PYTHON:-}" ]; then PY=$PYTHON; else bash scripts/_setup.sh; PY=.venv/bin/python; fi
NPROC=${NPROC:-2}
OUT=${OUT:-/tmp/slimjax-distributed}
rm -rf "$OUT" && mkdir -p "$OUT"
args=(batch_size=64 "solvers=[successive,popularity]" output.figures=false "$@")
port=$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export WANDB_MODE=offline PYTHONUNBUFFERED=1
echo "[distributed_check] $NPROC processes (coordinator 127.0.0.1:$port): ${args[*]}"
pids=()
for ((i = 0; i < NPROC; i++)); do
  "$PY" -m slimjax.app "${args[@]}" distributed=true "coordinator.address=127.0.0.1:$port" \
    "coordinator.num_processes=$NPROC" "coordinator.process_id=$i" "hydra.run.dir=$OUT/multi" \
    > "$OUT/process_$i.log" 2>&1 &
  pids+=($!)
done
status=0
for i in "${!pids[@]}"; do
  if ! wait "${pids[$i]}"; then echo "[distributed_check] process $i failed:"; tail -20 "$OUT/process_$i.log"; status=1; fi
done
[ "$status" = 0 ] || exit 1
echo "[distributed_check] one process"
"$PY" -m slimjax.app "${args[@]}" "hydra.run.dir=$OUT/single" > "$OUT/single.log" 2>&1 || { tail -20 "$OUT/single.log"; exit 1; }
"$PY" - "$OUT" <<'PY'
import sys
from pathlib import Path

import numpy as np
from slimjax import app

out = Path(sys.argv[1])
one, many = app.read_results(out / "single"), app.read_results(out / "multi")
print(f"{'solver':<16}{'rows':>6}{'chunks':>8}{'max |dJ|/J':>14}{'placements equal':>20}")
ok = True
for s in sorted(set(one.solver)):
    a = one[one.solver == s].sort_values("instance")
    b = many[many.solver == s].sort_values("instance")
    rel = float(np.max(np.abs(b.J.to_numpy() - a.J.to_numpy()) / np.abs(a.J.to_numpy())))
    xa, xb = app.read_placements(out / "single", s), app.read_placements(out / "multi", s)
    same = int((xa == xb).all(axis=(1, 2, 3)).sum())
    print(f"{s:<16}{len(b):>6}{b.chunk.nunique():>8}{rel:>14.2e}{f'{same}/{len(xa)}':>20}")
    ok &= len(a) == len(b) and rel <= 1e-6  # J to float32 rounding (other batch shapes, other programs)
print("[distributed_check]", "OK: the processes' results equal one process's" if ok else "MISMATCH")
sys.exit(0 if ok else 1)
PY
