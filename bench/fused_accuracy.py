"""How exact the fused bias-GELU kernels (models/fused_mlp.py) are: GELU and its derivative on fp32 inputs across
[-12, 12] against float64, with the normal CDF by its polynomial (the default) and through erf, beside torch's own
fp32 GELU on the same device. On CUDA the real kernels; on a CPU run it under Triton's interpreter:
TRITON_INTERPRET=1 python bench/fused_accuracy.py (numpy's exp and erf there, not the GPU's)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from vitkit.models import fused_mlp


def main() -> None:
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not fused_mlp.load_ops() or not fused_mlp.runs_on(torch.empty(0, device=dev)):
        raise SystemExit(f"the fused kernels do not run on {dev} here (on a CPU: TRITON_INTERPRET=1)")
    x = torch.linspace(-12, 12, 200_001, dtype=torch.float64).float()  # (n,) the fp32 inputs
    x64 = x.double()  # their exact values
    cdf = 0.5 * (1 + torch.erf(x64 / math.sqrt(2)))
    want = x64 * cdf
    dwant = cdf + x64 * torch.exp(-x64 * x64 / 2) / math.sqrt(2 * math.pi)
    h = x.reshape(-1, 1).to(dev)  # (n, 1): one column, zero bias
    b = torch.zeros(1, device=dev)
    print(f"{dev}, {len(x):,} fp32 points on [-12, 12], max |error| against float64")
    print(f"{'GELU':34} {'value':>9} {'derivative':>11}")
    for poly in (True, False):
        fused_mlp.POLY_CDF = poly
        y = torch.ops.vitkit.bias_gelu(h, b, "none").flatten().double().cpu()
        dy, _ = torch.ops.vitkit.bias_gelu_backward(torch.ones_like(h), h, b, "none")
        err, derr = (y - want).abs().max(), (dy.flatten().double().cpu() - dwant).abs().max()
        name = "fused, CDF polynomial (default)" if poly else "fused, erf"
        print(f"{name:34} {float(err):>9.2e} {float(derr):>11.2e}")
    fused_mlp.POLY_CDF = True
    xt = x.to(dev).requires_grad_()
    F.gelu(xt).backward(torch.ones_like(xt))
    err = (F.gelu(x.to(dev)).double().cpu() - want).abs().max()
    derr = (xt.grad.detach().double().cpu() - dwant).abs().max()
    print(f"{'torch F.gelu, fp32':34} {float(err):>9.2e} {float(derr):>11.2e}")


if __name__ == "__main__":
    main()
