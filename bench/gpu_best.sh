#!/usr/bin/env bash
# fashion-mnist-best alone on a lent GPU (issue 3), after a check that the model compiles into one graph.
# Usage there: bash bench/gpu_best.sh [SECONDS]; Fashion-MNIST IDX files in .gpu-data/ (carried).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export OUT="${OUT:-$PWD/gpu_out}"
mkdir -p "$OUT"
dev="${DEVICE:-cuda}"
[ "${CHECK:-1}" = 1 ] && timeout 120 python3 - "$dev" <<'PY' || echo "fullgraph check: skipped or no answer"
import sys, time, torch
from vitkit import keyed_random
from vitkit.models import build_model
from vitkit.recipes import get_recipe
dev = torch.device(sys.argv[1])
cfg = get_recipe("fashion-mnist-best").model
m = build_model(cfg).to(dev).train()
t = time.perf_counter()
try:
    c = torch.compile(m, fullgraph=True, dynamic=False)
    x = torch.randn(8, 1, 28, 28, device=dev)
    with torch.autocast(dev.type, dtype=torch.bfloat16), keyed_random.keyed(3, torch.arange(8, device=dev)):
        c(x).float().sum().backward()
    print(f"fullgraph compile ok ({time.perf_counter() - t:.0f} s), torch {torch.__version__}")
except Exception as e:
    print(f"fullgraph compile FAILED: {type(e).__name__}: {str(e)[:1500]}")
PY
run=/tmp/vitkit-best
rm -rf "$run"
timeout "${1:-260}" python3 -m vitkit train --recipe fashion-mnist-best --device "$dev" --data-dir .gpu-data \
  --out "$run" --overwrite --no-progress --no-report --set train.eval_every=5 ${EXTRA:-} 2>&1 | tail -25
cp "$run"/metrics.jsonl "$run"/summary.json "$run"/config.json "$OUT"/ 2>/dev/null
python3 - "$run" <<'PY'
import json, sys
ev = [json.loads(l) for l in open(sys.argv[1] + "/metrics.jsonl") if '"split"' in l]
print("evals:", [(round(e["epoch"]), e["top1"], round(e["time"])) for e in ev])
PY
