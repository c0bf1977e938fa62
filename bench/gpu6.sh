#!/usr/bin/env bash
# Sixth session's GPU call (one H200/H100 lease, <= 600 s): fashion-mnist-best to its end (issue 3), the patch
# embedding A/B on ViT-B/16 training beside timm (issue 6), and a hybrid fashion-mnist-gpu candidate (issue 6).
# Usage there: bash bench/gpu6.sh; Fashion-MNIST IDX files in .gpu-data/ (carried).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export OUT="${OUT:-$PWD/gpu_out}"
mkdir -p "$OUT"
t0=$(date +%s)
left() { echo $(( ${1} - ($(date +%s) - t0) )); }
{
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm,power.limit --format=csv
python3 -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__)"
echo "== 1. fashion-mnist-best, 100 epochs ($(date -u +%T))"
CHECK=0 bash bench/gpu_best.sh 340
echo "== 2. patch embedding A/B, ViT-B/16 train ($(date -u +%T), $(left 590) s left)"
timeout 190 python3 bench/gpu_patch_ab.py --json "$OUT/ab.json" --profile "$OUT/profile-b16-matmul.txt"
hy=$(left 585)
echo "== 3. hybrid fashion-mnist-gpu candidate ($(date -u +%T), ${hy} s left)"
if [ "$hy" -gt 40 ]; then
  run=/tmp/vitkit-hybrid
  s=$(date +%s.%N)
  timeout "$(( hy < 90 ? hy : 90 ))" python3 -m vitkit train --recipe fashion-mnist-gpu --device cuda \
    --data-dir .gpu-data --out "$run" --overwrite --no-progress --no-report --set 'model.backbone=(2,)' \
    --set model.patch_size=1 --set train.compile=true 2>&1 | tail -6
  echo "hybrid wall $(python3 -c "import time; print(round(time.time() - $s, 1))") s"
  cp "$run"/summary.json "$OUT"/hybrid-summary.json; cp "$run"/metrics.jsonl "$OUT"/hybrid-metrics.jsonl
fi
echo "== done ($(date -u +%T))"
} 2>&1 | tee "$OUT/log.txt"
