#!/usr/bin/env bash
# The GPU checks of issue 6 in one call on a lent GPU machine. What earlier sessions ruled out for the ViT-B/16
# training step (bench/RESULTS.md): FlashAttention-2 (5.4% slower than torch's cuDNN choice), coordinate-descent
# tuning (over 200 s to compile), pointwise autotuning, tiled reductions and Programmatic Dependent Launch (the
# same speed); GEMM autotuning was never timed (still tuning after 120 s; cuBLAS beat the Triton templates on
# every large shape it reached). The lead now is the MLP's three passes over its hidden activations outside the
# matrix products (~14% of the step): the GELU forward, its backward and the bias gradient's column sum, which
# Inductor keeps in a kernel of its own; and the copy stacking SDPA's q/k/v gradients into the fused q/k/v
# product's (107 us per layer). The nineteenth session's train.fused_bias_gelu (models/fused_mlp.py) folds the sum
# into the backward's pass, and gpu_step_ab.py's split variant computes q, k and v by three products so that no
# stacking is needed; neither has run on a GPU yet. So, in order:
#   1. bench/gpu_pointwise.py: each pass alone on the step's tensor beside a plain scaling pass, the fused kernels
#      at six tilings, and two hand-written GELU kernels (erf, tanh.approx): memory or erf's arithmetic? Then
#      bench/fused_accuracy.py: the fused kernels' GELU and derivative against float64 on the GPU;
#   2. bench/gpu_step_ab.py: vitkit and timm as they stand, vitkit with the fused kernels, with split q/k/v, and
#      with both (profiled); before timing, each against the plain model's logits and gradients (the fused
#      kernels in fp32 and bf16, each against fp32). The tanh-GELU variants (tanh timm-tanh fused-tanh) are left
#      to AB_VARIANTS;
#   3. bench/gpu_check.py's fashion-mnist-gpu candidates, in what is left of the budget: by default 44 epochs with
#      half the evaluations, from cold caches, then again on the caches it filled (the recipe's warm run took
#      60.5 s from process start in the eighteenth session; bench/gpu_recipe.sh runs the recipe as a user does).
# Usage there: [CANDIDATES="..."] bash bench/gpu.sh [BUDGET_SECONDS] (CANDIDATES="": none). Steps 1 and 2 are
# capped at POINTWISE_SECONDS (120) and AB_SECONDS (300), about 60 s and 180 s expected; BUDGET_SECONDS (480)
# bounds the whole script through step 3, which needs Fashion-MNIST's IDX files in .gpu-data/ (carried). The
# call's timeout_s: 500.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export OUT="${OUT:-$PWD/gpu_out}"
mkdir -p "$OUT"
budget="${1:-480}"
start=$SECONDS
if [ ! -f .gpu-data/train-images-idx3-ubyte.gz ]; then  # said at once, not when step 3 fails
    echo "note: .gpu-data/ lacks Fashion-MNIST's IDX files (carry it: run(..., carry=[\".gpu-data\"])):" \
         "step 3 will fail" | tee "$OUT/no-gpu-data.txt"
fi
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm,power.limit --format=csv 2>&1 \
    | tee "$OUT/nvidia-smi.txt"
python3 -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__)" 2>&1 \
    | tee -a "$OUT/nvidia-smi.txt"
timeout "${POINTWISE_SECONDS:-120}" python3 bench/gpu_pointwise.py --json "$OUT/pointwise.json" 2>&1 \
    | tee "$OUT/pointwise.txt"
timeout 60 python3 bench/fused_accuracy.py 2>&1 | tee "$OUT/fused-accuracy.txt"  # the real kernels' exactness
timeout "${AB_SECONDS:-300}" python3 bench/gpu_step_ab.py \
    --variants ${AB_VARIANTS:-foreach timm fused split fused-split} \
    --compile-limit "${AB_COMPILE_LIMIT:-90}" --profile-variant "${AB_PROFILE:-fused-split}" \
    --json "$OUT/step-ab.json" --profile "$OUT/profile-step-ab.txt" 2>&1 | tee "$OUT/step-ab.txt"
candidates="${CANDIDATES-44-epochs-eval10 44-epochs-eval10-warm}"
if [ -n "$candidates" ]; then
    python3 bench/gpu_check.py --budget "$((budget - (SECONDS - start)))" --fast-timeout "${FAST_TIMEOUT:-125}" \
        --candidates $candidates --b16
fi
echo "gpu.sh: $((SECONDS - start)) s"
