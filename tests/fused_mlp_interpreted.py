"""The fused bias-GELU kernels run by Triton's interpreter on the CPU (tests/test_fused_mlp.py runs this with
TRITON_INTERPRET=1: the interpreter is chosen when the kernels are built, once per process)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from vitkit import create_model
from vitkit.models import fused_mlp


def reference(h: torch.Tensor, b: torch.Tensor, g: torch.Tensor, approximate: str):
    """GELU(h + b), dh and db in float64 (the tanh form as torch writes it: 0.5 x (1 + tanh u))."""
    h64, b64 = h.detach().double().requires_grad_(), b.detach().double().requires_grad_()
    x = h64 + b64
    if approximate == "tanh":
        y = 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
    else:
        y = 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))
    y.backward(g.double())
    return y.detach(), h64.grad, b64.grad


def check_op(shapes=((37, 200), (2100, 130), (3, 11, 96))) -> None:
    """Both GELUs, fp32 and bf16, shapes that fill no tile and several row groups, against float64."""
    assert fused_mlp.load_ops() and fused_mlp.interpreting()
    gen = torch.Generator().manual_seed(0)
    # (M, N): ragged tiles; many rows (several backward row groups of several tiles each); 3-D input
    for shape in shapes:
        assert fused_mlp.rows_per_group(math.prod(shape[:-1])) % fused_mlp.BLOCK_M == 0
        for approximate in ("none", "tanh"):
            for dtype, tol in ((torch.float32, 2e-6), (torch.bfloat16, 8e-3)):
                h = (3 * torch.randn(shape, generator=gen)).to(dtype).requires_grad_()
                b = torch.randn(shape[-1], generator=gen).to(dtype).requires_grad_()
                g = torch.randn(shape, generator=gen).to(dtype)
                y = fused_mlp.bias_gelu(h, b, approximate)
                y.backward(g)
                y = y.detach()
                ry, rdh, rdb = reference(h, b, g, approximate)
                where = f"{shape} {approximate} {dtype}"
                assert y.dtype == dtype and h.grad.dtype == dtype and b.grad.dtype == dtype, where
                # each element within a few units of its dtype's rounding (bf16: 2**-8 relative), scaled by
                # the largest value; db sums M rows (fp32 partial sums), so it is held to its own scale
                for name, got, want in (("y", y, ry), ("dh", h.grad, rdh), ("db", b.grad, rdb)):
                    err = float((got.double() - want).abs().max() / want.abs().max())
                    assert err < tol, f"{where}: {name} relative error {err:.2e} (tolerance {tol:.0e})"
                # the kernel's own forward is the plain path's function to rounding
                plain = F.gelu(h.detach().float() + b.detach().float(), approximate=approximate)
                assert float((y.float() - plain).abs().max()) <= float(plain.abs().max()) * tol, where


def check_cases() -> None:
    """What a training step gives the kernels besides: autocast's bf16 h with an fp32 bias (fp32 db), a stride-0
    gradient (y.sum()), and rows past 16 tiles a group (the cap on a backward program's rows)."""
    gen = torch.Generator().manual_seed(1)
    h = (3 * torch.randn(70, 96, generator=gen)).bfloat16().requires_grad_()
    b = torch.randn(96, generator=gen).requires_grad_()
    y = fused_mlp.bias_gelu(h, b)
    y.float().sum().backward()  # the gradient reaches the op as ones expanded: stride 0
    assert y.dtype == torch.bfloat16 and h.grad.dtype == torch.bfloat16 and b.grad.dtype == torch.float32
    ry, rdh, rdb = reference(h, b, torch.ones(70, 96), "none")
    for name, got, want, tol in (("y", y, ry, 8e-3), ("dh", h.grad, rdh, 8e-3), ("db", b.grad, rdb, 1e-6)):
        err = float((got.detach().double() - want).abs().max() / want.abs().max())
        assert err < tol, f"bf16 h, fp32 bias, stride-0 gradient: {name} relative error {err:.2e}"
    cap, fused_mlp.MAX_TILES_PER_GROUP = fused_mlp.MAX_TILES_PER_GROUP, 2  # the cap, reached with fewer rows
    try:
        m = 64 * fused_mlp.BLOCK_M * 2 + 300  # more rows than 64 capped groups hold
        assert fused_mlp.rows_per_group(m) == 2 * fused_mlp.BLOCK_M
        h = torch.randn(m, 20, generator=gen).requires_grad_()
        b = torch.randn(20, generator=gen).requires_grad_()
        g = torch.randn(m, 20, generator=gen)
        fused_mlp.bias_gelu(h, b).backward(g)
    finally:
        fused_mlp.MAX_TILES_PER_GROUP = cap
    _, rdh, rdb = reference(h, b, g, "none")
    assert float((h.grad.double() - rdh).abs().max()) < 1e-5 * float(rdh.abs().max())
    assert float((b.grad.double() - rdb).abs().max()) < 1e-5 * float(rdb.abs().max())


def check_model() -> None:
    """A small ViT with its MLPs fused: the same logits and gradients as without (fp32), and the kernel runs."""
    torch.manual_seed(0)
    model = create_model("ViT-Ti/4", img_size=16, in_chans=3, num_classes=5, depth=2)
    x = torch.randn(3, 3, 16, 16)
    model(x).square().sum().backward()
    plain = [p.grad.clone() for p in model.parameters()]
    plain_out = model(x).detach()
    assert fused_mlp.set_fused_bias_gelu(model) == 2
    calls = []
    op = fused_mlp._OP
    fused_mlp._OP = lambda *a: calls.append(1) or op(*a)
    try:
        model.zero_grad()
        out = model(x)
        out.square().sum().backward()
    finally:
        fused_mlp._OP = op
    assert len(calls) == 2, f"the fused kernel ran {len(calls)} times for 2 blocks"
    torch.testing.assert_close(out, plain_out, rtol=1e-5, atol=1e-5)
    for (name, p), want in zip(model.named_parameters(), plain):
        torch.testing.assert_close(p.grad, want, rtol=1e-4, atol=1e-5, msg=lambda m, n=name: f"{n}: {m}")
    assert fused_mlp.set_fused_bias_gelu(model, False) == 2
    assert not any(getattr(m, "fused_bias_gelu", False) for m in model.modules())


if __name__ == "__main__":
    check_op()  # the normal CDF by its polynomial (the default)
    fused_mlp.POLY_CDF = False  # through erf: one shape
    check_op(((37, 200),))
    fused_mlp.POLY_CDF = True
    check_cases()
    check_model()
    print("fused bias-GELU under the interpreter: ok")
