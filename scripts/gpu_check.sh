#!/usr/bin/env bash
# GPU check: on a machine with a GPU, the throughput curve, the tests marked `gpu`, then the
# benchmark (quick sizes, no HiGHS), each writing its figures to ${OUT:-experiments/bench}.
# Usage: bash scripts/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-experiments/bench}
mkdir -p "$out"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
{ "$PY" -c "import jax; print('jax', jax.__version__, jax.devices())"; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; } > "$out/gpu_env.txt" 2>&1
"$PY" scripts/bench.py --parts t --sizes ${SIZES:-2048,8192,32768} --chunk 8192 --json "$out/throughput_gpu.json" 2>&1 | tee "$out/throughput_gpu.txt"
"$PY" -m pytest -q -m gpu -p no:cacheprovider tests/test_gpu.py 2>&1 | tee "$out/gpu_tests.txt"
"$PY" scripts/bench.py --quick --parts acdb --milp-n 0 --json "$out/bench_gpu.json" 2>&1 | tee "$out/bench_gpu.txt"
