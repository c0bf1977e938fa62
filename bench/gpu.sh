#!/usr/bin/env bash
# The GPU checks of issue 6 in one call on a lent GPU machine: first the ViT-B/16 training step beside timm
# (bench/gpu_step_ab.py, with a profile; ninth session: FlashAttention-2 measured 5.4% slower than torch's cuDNN
# choice, and Inductor's coordinate-descent tuning compiled for over 200 s; fourteenth: "mapw", its cheaper
# pointwise tuning, the same speed as foreach; so none of them is run by default), with Inductor's options untried
# on a GPU: "tile" (2-D tiled reductions: a bias gradient's sum in the kernel producing its input), "pdl"
# (Programmatic Dependent Launch), both together (profiled if it compiles) and "mag" (GEMM autotuning with Triton
# templates, GELU in their epilogue; last, dropped at the compile limit); then bench/gpu_check.py's
# fashion-mnist-gpu candidates in what is left of the budget ("40-epochs-tta": 8 epochs less, the recipe's flip
# TTA; its ViT-B/16 inference phase is off: `--b16` with no names; measured before: see bench/RESULTS.md).
# The recipe itself, seeds one after another, is bench/gpu_recipe.sh's.
# Usage there: bash bench/gpu.sh [BUDGET_SECONDS]; Fashion-MNIST IDX files in .gpu-data/ (carried).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export OUT="${OUT:-$PWD/gpu_out}"
mkdir -p "$OUT"
budget="${1:-470}"
start=$SECONDS
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm,power.limit --format=csv 2>&1 | tee "$OUT/nvidia-smi.txt"
python3 -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__)" 2>&1 | tee -a "$OUT/nvidia-smi.txt"
timeout "${AB_SECONDS:-360}" python3 bench/gpu_step_ab.py --variants ${AB_VARIANTS:-foreach timm tile pdl tile-pdl mag} \
    --compile-limit "${AB_COMPILE_LIMIT:-120}" --profile-variant "${AB_PROFILE:-tile-pdl}" \
    --json "$OUT/step-ab.json" --profile "$OUT/profile-step-ab.txt" 2>&1 | tee "$OUT/step-ab.txt"
python3 bench/gpu_check.py --budget "$((budget - (SECONDS - start)))" --fast-timeout "${FAST_TIMEOUT:-125}" \
    --candidates ${CANDIDATES:-40-epochs-tta} --b16
