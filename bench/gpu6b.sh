#!/usr/bin/env bash
# Sixth session's second GPU call: the CUDA patch embedding checked against the CPU's conv in float64, and the
# training step's gradient-copy and CUDA-graph A/B (bench/gpu_step_ab.py). Usage there: bash bench/gpu6b.sh
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export OUT="${OUT:-$PWD/gpu_out}"
mkdir -p "$OUT"
{
timeout 40 python3 - <<'PY'
import torch
from vitkit.models import build_model, model_config
torch.manual_seed(0)
for name in ("ViT-B/16", "R50+ViT-B/16"):
    cpu = build_model(model_config(name)).double().eval()
    gpu = build_model(model_config(name)).double().eval().cuda()
    gpu.load_state_dict(cpu.state_dict())
    x = torch.randn(2, 3, 224, 224, dtype=torch.float64)
    with torch.no_grad():
        a, b = cpu(x), gpu(x.cuda()).cpu()
    print(f"{name}: float64 logits, CUDA (matrix-product patch embedding) vs CPU (conv): max diff "
          f"{float((a - b).abs().max()):.2e}, max |logit| {float(a.abs().max()):.2f}")
PY
timeout 170 python3 bench/gpu_step_ab.py --json "$OUT/step-ab.json"
} 2>&1 | tee "$OUT/log6b.txt"
