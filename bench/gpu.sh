#!/usr/bin/env bash
# The GPU checks of issues 3 and 6 in one call on a lent GPU machine (see bench/gpu_check.py).
# Usage there: bash bench/gpu.sh [BUDGET_SECONDS]; Fashion-MNIST IDX files in .gpu-data/ (carried).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export OUT="${OUT:-$PWD/gpu_out}"
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm,power.limit --format=csv 2>&1 | tee "$OUT/nvidia-smi.txt"
python3 -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__)" 2>&1 | tee -a "$OUT/nvidia-smi.txt"
python3 bench/gpu_check.py --budget "${1:-560}"
