#!/usr/bin/env bash
# GPU check: on a machine with a GPU, in order of importance, each step under its own time limit
# and writing its figures to ${OUT:-experiments/bench} as it goes:
#   1. the throughput of successive (defaults, and the plain paper method) vs batch size;
#   2. the tests marked `gpu` (tests/test_gpu.py);
#   3. the benchmark's objective, hull-vs-dense and deepseek_v3 parts (no HiGHS, no NumPy solver);
#   4. the throughput of other successive configurations (where the time goes);
#   5. the scaling curves (batch size, E, capacity units) with their figures.
# Usage: bash scripts/gpu_check.sh    (SIZES, CONFIGS, DIAG_CONFIGS, DIAG_SIZES override the sizes)
# PYTHON: an interpreter with slimjax and a GPU jaxlib; default .venv/bin/python (scripts/_setup.sh
# sets it up with the dev extra; add the CUDA jaxlib to it yourself: pip install 'jax[cuda12]').
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-experiments/bench}
mkdir -p "$out"
if [ -n "${PYTHON:-}" ]; then PY=$PYTHON; else bash scripts/_setup.sh dev; PY=.venv/bin/python; fi
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
{ "$PY" -c "import jax; print('jax', jax.__version__, jax.devices())"; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; } > "$out/gpu_env.txt" 2>&1
step() {  # step SECONDS NAME command...
  local limit=$1 name=$2; shift 2
  local t0=$SECONDS
  timeout "$limit" "$@" 2>&1 | tee "$out/$name.txt"
  echo "[gpu_check] $name: exit ${PIPESTATUS[0]} after $((SECONDS - t0)) s (limit $limit s)" | tee -a "$out/$name.txt"
}
step "${T1:-200}" throughput_gpu "$PY" scripts/bench.py --parts t --sizes "${SIZES:-8192,32768}" \
  --configs "${CONFIGS:-successive,plain}" --chunk 65536 --json "$out/throughput_gpu.json"
step "${T2:-120}" gpu_tests "$PY" -m pytest -q -m gpu -p no:cacheprovider tests/test_gpu.py
step "${T3:-120}" bench_gpu "$PY" scripts/bench.py --quick --parts acd --json "$out/bench_gpu.json"
step "${T4:-120}" throughput_gpu_configs "$PY" scripts/bench.py --parts t --sizes "${DIAG_SIZES:-16384}" \
  --configs "${DIAG_CONFIGS:-plain+polish,best-of,best-of-norevisit}" --chunk 65536 --json "$out/throughput_gpu_configs.json"
step "${T5:-200}" scaling_gpu "$PY" scripts/bench.py --parts ts --sizes "${CURVE_SIZES:-1,16,256,4096,16384,65536}" \
  --chunk 65536 --experts 4,8,12,16 --scaling-batch 1024 --plots "$out" --json "$out/scaling_gpu.json"
