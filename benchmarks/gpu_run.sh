#!/usr/bin/env bash
# The one command for the lent GPU machine (run from the repository root there, $OUT comes back):
#   run(command="bash benchmarks/gpu_run.sh", carry=[".whl"], timeout_s=600)
# 1. flax 0.12.8 from the carried wheels (.whl/, ignored) into /tmp/site, only if the image's flax cannot
#    trace our model (everything else gpu.py needs, jax with its CUDA plugin and numpy, is on the image);
# 2. benchmarks/gpu.py under GPU_BUDGET_S (default 280 s, compiles included) -> $OUT/gpu.{json,md,jsonl}, $OUT/log
#    (copy gpu.json and gpu.md to benchmarks/results/);
# 3. benchmarks/train_throughput.py under TRAIN_BUDGET_S (default 180 s) -> $OUT/train.log, train_throughput.{json,md}.
# Local check: PY=/tmp/gpuenv/bin/python OUT=/tmp/g GPU_ARGS=--smoke FORCE_WHEELS=1 bash benchmarks/gpu_run.sh
# Budgets and the hard timeouts around them keep the whole command under 600 s.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
PY=${PY:-python3}
GPU_BUDGET_S=${GPU_BUDGET_S:-280}
TRAIN_BUDGET_S=${TRAIN_BUDGET_S:-180}
export PYTHONUNBUFFERED=1
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
# Can the image's jax/flax trace our model? (CPU, a few seconds: imports, then a 2-layer model's init.)
CHECK='import sys; sys.path.insert(0, "benchmarks"); import gpu, jax.numpy as jnp; gpu.random_params(gpu.model_config("smoke"), jnp.bfloat16)'
if [ -n "${FORCE_WHEELS:-}" ] || ! JAX_PLATFORMS=cpu $PY -c "$CHECK" 2>/tmp/import_error.txt; then
  echo "[gpu_run] the image's packages cannot import the model; installing .whl/"; tail -3 /tmp/import_error.txt 2>/dev/null
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 3
  export PYTHONPATH=/tmp/site:$PYTHONPATH
  JAX_PLATFORMS=cpu $PY -c "$CHECK" || exit 4
fi
{
  date; nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv
  $PY -c 'import jax, flax, numpy; print("jax", jax.__version__, "flax", flax.__version__, "numpy", numpy.__version__); print(jax.devices())'
} 2>&1 | tee "$OUT/log"
set -o pipefail
timeout -k 10 $((GPU_BUDGET_S + 45)) $PY benchmarks/gpu.py --out "$OUT" --budget_s "$GPU_BUDGET_S" ${GPU_ARGS:-} 2>&1 | tee -a "$OUT/log"
echo "[gpu_run] gpu.py exit $?"
# --- training throughput (benchmarks/train_throughput.py, written by the training core helper) ---------
# Random weights (real ones cannot travel), bf16 compute with f32 master weights, scanned layers with full
# rematerialisation (what a large-v3 fine-tune needs to fit); each row is printed as it finishes.
if [ -f benchmarks/train_throughput.py ]; then
  timeout -k 10 "$TRAIN_BUDGET_S" $PY benchmarks/train_throughput.py --device gpu --no_torch --random_init \
    --dtype bfloat16 --models base large-v3-turbo large-v3 --batch 16 --target_tokens 100 --variants scan_remat \
    --warmup 2 --repeats 5 --out "$OUT/train_throughput" 2>&1 | tee "$OUT/train.log"
  echo "[gpu_run] train_throughput.py exit $?"
else
  echo "[gpu_run] benchmarks/train_throughput.py not present: training throughput not run" | tee "$OUT/train.log"
fi
cat "$OUT/gpu.md" 2>/dev/null  # the reply's output tail ends with the table
