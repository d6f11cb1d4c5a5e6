#!/usr/bin/env bash
# The prepared GPU check: fits in 8 minutes on one CUDA machine and writes its results to $OUT
# (commit them to benchmarks/results/gpu/). Run from the project's root on a machine with a
# GPU, CIFAR-100 under $NAS_DATA_DIR (default /tmp/data) and nas's requirements importable:
#   OUT=/some/folder NAS_DATA_DIR=/tmp/data bash benchmarks/gpu_check.sh
# 1. train img/s of the 10k, 50k and 500k hand designs of conv-shape and mbconv-shape with the
#    space defaults (bf16, channels_last, the spaces' [recipe]), without and with torch.compile;
# 2. `nas search --budget 50000 --time 4m` with the CUDA defaults: its printed plan beside what ran.
set -uo pipefail
OUT=${OUT:-benchmarks/results/gpu}
export NAS_DATA_DIR=${NAS_DATA_DIR:-/tmp/data}
export PYTHONUNBUFFERED=1 PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}"
# the training additions under test (EMA of the weights, alternating flip, flip TTA) on top of each space's recipe
RECIPE=${RECIPE:-'{"ema": 0.99, "alt_flip": true, "tta": "flip"}'}
mkdir -p "$OUT"
start=$(date +%s)
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; python3 -c "import torch; print('torch', torch.__version__)"; } \
  > "$OUT/machine.txt" 2>&1
# no compile everywhere, compile where it has time (compiling costs ~20-60 s a model)
timeout 150 python3 benchmarks/gpu_throughput.py --spaces conv-shape,mbconv-shape --budgets 10k,50k,500k \
  --compile no --recipe "$RECIPE" --json "$OUT/throughput.json" 2>&1 | tee "$OUT/throughput.txt"
timeout 100 python3 benchmarks/gpu_throughput.py --spaces conv-shape --budgets 50k,500k --compile yes --recipe "$RECIPE" \
  --json "$OUT/throughput-compiled.json" 2>&1 | tee -a "$OUT/throughput.txt"
timeout 300 python3 -m nas search --budget 50000 --time 4m --storage "$OUT/search.log" \
  2>&1 | tee "$OUT/search.txt"
echo "gpu_check: done in $(( $(date +%s) - start )) s" | tee -a "$OUT/machine.txt"
