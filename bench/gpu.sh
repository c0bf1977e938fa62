#!/usr/bin/env bash
# The GPU checks of issue 6 in one call on a lent GPU machine: first the ViT-B/16 training step beside timm
# (bench/gpu_step_ab.py, with a profile; ninth session: FlashAttention-2 measured 5.4% slower than torch's cuDNN
# choice, and Inductor's coordinate-descent tuning compiled for over 200 s; fourteenth: "mapw", its cheaper
# pointwise tuning, the same speed as foreach; so none of them is run by default; "tile" and "pdl", two Inductor
# options untried on a GPU, are, and "tile" is profiled if it compiles), then bench/gpu_check.py's
# fashion-mnist-gpu candidates in what is left of the budget: flip TTA on the recipe (whose records keep the plain
# top-1, so it measures the recipe too), the same again with the compile caches the first filled (a user's second
# run: the start-up without compiling), on 40 epochs, then "s2" (its ViT-B/16 inference phase is off: `--b16` with
# no names; measured before: see bench/RESULTS.md).
# Usage there: bash bench/gpu.sh [BUDGET_SECONDS]; Fashion-MNIST IDX files in .gpu-data/ (carried).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export OUT="${OUT:-$PWD/gpu_out}"
mkdir -p "$OUT"
budget="${1:-560}"
start=$SECONDS
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm,power.limit --format=csv 2>&1 | tee "$OUT/nvidia-smi.txt"
python3 -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__)" 2>&1 | tee -a "$OUT/nvidia-smi.txt"
timeout "${AB_SECONDS:-260}" python3 bench/gpu_step_ab.py --variants ${AB_VARIANTS:-foreach timm tile pdl} \
    --compile-limit "${AB_COMPILE_LIMIT:-90}" --profile-variant "${AB_PROFILE:-tile}" \
    --json "$OUT/step-ab.json" --profile "$OUT/profile-step-ab.txt" 2>&1 | tee "$OUT/step-ab.txt"
python3 bench/gpu_check.py --budget "$((budget - (SECONDS - start)))" \
    --candidates ${CANDIDATES:-tta tta-warm 40-epochs-tta s2} --b16
