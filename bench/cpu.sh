#!/usr/bin/env bash
# The CPU benchmarks of bench/RESULTS.md, in one go (2 threads, batch 32, 224 px; ratios in one process).
# Usage: bash bench/cpu.sh [RUN_DIR of a fashion-mnist run, for the fast path's accuracy cost] > log
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
T=${THREADS:-2}
for m in ViT-S/16 ViT-B/16; do
  $PY -m vitkit bench --model "$m" --batch-size 32 --compare timm --threads "$T" --repeats 5
  $PY -m vitkit bench --model "$m" --batch-size 32 --compare timm --threads "$T" --repeats 5 --fast
done
$PY -m vitkit bench --recipe fashion-mnist --mode train --compare timm --threads "$T" --repeats 5 --min-seconds 3
if [ -n "${1:-}" ]; then
  $PY bench/fast_accuracy.py "$1" --threads "$T"
  $PY bench/time_to_accuracy.py --run "$1"
fi
