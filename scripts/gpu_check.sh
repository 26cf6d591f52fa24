#!/usr/bin/env bash
# GPU check: run the tests marked `gpu` and the benchmark on a machine with a GPU, writing the
# figures to ${OUT:-experiments/bench}. Usage: bash scripts/gpu_check.sh [extra bench args]
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-experiments/bench}
mkdir -p "$out"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
"$PY" -c "import jax; print('jax', jax.__version__, jax.devices())" 2>&1 | tee "$out/gpu_env.txt"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >> "$out/gpu_env.txt" 2>&1 || true
"$PY" -m pytest -q -m gpu -p no:cacheprovider tests/test_gpu.py 2>&1 | tee "$out/gpu_tests.txt"
"$PY" scripts/bench.py --json "$out/bench_gpu.json" "$@" 2>&1 | tee "$out/bench_gpu.txt"
"$PY" scripts/bench.py --parts t --sizes 256,1024,4096,16384,65536 --json "$out/throughput_gpu.json" 2>&1 | tee "$out/throughput_gpu.txt"
