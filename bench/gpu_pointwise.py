"""Are the ViT-B/16 step's GELU kernels bound by memory or by erf's arithmetic? (issue 6, a lent GPU)

The eighteenth session's profile of the ViT-B/16 training step (224 px, batch 256, bf16) spends ~14% of it on the
MLP's hidden activations outside the matrix products: the GELU forward (241 us per layer for 2 x 310 MB: 2.6 TB/s),
its backward (325 us for 3 x 310 MB: 2.9 TB/s) and the bias gradient's column sum (133 us), where a device-to-device
copy reaches ~4.3 TB/s on an H200 (KINDS.md). Erf in fp32 costs ~20-40 instructions per element on the CUDA cores:
155M elements may take as long as moving them. This times each pass alone, compiled by Inductor as in the step, on
the step's (B*N, 4D) = (50432, 3072) bf16 tensor, beside a plain scaling pass (the memory floor of a pointwise
pass), vitkit's fused bias-GELU kernels (train.fused_bias_gelu: the backward with the bias gradient's column sum,
at six tilings) and two hand-written Triton GELU kernels of one tiling: the exact one (erf) and the tanh one through the
hardware's tanh.approx.f32 (one instruction). If the erf kernels run well under the scaling pass's bandwidth and the
approximate one near it, the arithmetic is the cost. TB/s is counted on the fewest bytes a pass must move (each
input read once, each output written once), so a pass that Inductor splits in two kernels shows less. Each result
is checked against float64 on the same inputs first (relative error; over 1e-2, the pass is reported, not timed),
and each time is that of 10 calls queued between two CUDA events (the launches overlap the kernels).

Usage there: python bench/gpu_pointwise.py [--json FILE]; on a CPU, --smoke (small tensor, no Triton kernel;
vitkit's fused ones too under TRITON_INTERPRET=1, which checks them, not their speed).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics

import torch
import torch.nn.functional as F


def gelu_backward_sum(h: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The GELU backward of gradient `g` at `h` and the bias gradient's column sum, as the step's backward has
    them."""
    dh = torch.ops.aten.gelu_backward(g, h)
    return dh, dh.float().sum(0)


PASSES = {  # name: (function, bytes moved in units of one tensor, what it is)
    "scale": (lambda h, g: h * 2.0, 2, "read and write once: the floor of a pointwise pass"),
    "gelu": (lambda h, g: F.gelu(h), 2, "erf GELU forward (vitkit's and timm's default)"),
    "gelu_tanh": (
        lambda h, g: F.gelu(h, approximate="tanh"),
        2,
        "tanh GELU forward (the official JAX code's)",
    ),
    "gelu_bwd": (lambda h, g: torch.ops.aten.gelu_backward(g, h), 3, "erf GELU backward"),
    "gelu_tanh_bwd": (
        lambda h, g: torch.ops.aten.gelu_backward(g, h, approximate="tanh"),
        3,
        "tanh GELU backward",
    ),
    "gelu_bwd_sum": (gelu_backward_sum, 3, "erf GELU backward and the bias gradient's column sum"),
}


def triton_gelu_kernels() -> dict:
    """GELU forward in hand-written Triton, one tiling: "erf" (tl.math.erf) and "tanh_approx" (tanh.approx.f32);
    empty where Triton cannot run."""
    try:
        import triton
        import triton.language as tl
    except ImportError:
        return {}

    @triton.jit
    def kernel(x_ptr, y_ptr, n, BLOCK: tl.constexpr, APPROX: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        x = tl.load(x_ptr + offs, mask=mask).to(tl.float32)
        if APPROX:
            inner = 0.7978845608028654 * (x + 0.044715 * x * x * x)
            t = tl.inline_asm_elementwise(
                "tanh.approx.f32 $0, $1;", "=r,r", [inner], dtype=tl.float32, is_pure=True, pack=1
            )
            y = 0.5 * x * (1.0 + t)
        else:
            y = 0.5 * x * (1.0 + tl.math.erf(x * 0.7071067811865476))
        tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)

    def make(approx: bool):
        def run(h: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
            y = torch.empty_like(h)
            n = h.numel()
            kernel[(triton.cdiv(n, 4096),)](h, y, n, BLOCK=4096, APPROX=approx, num_warps=8)
            return y

        return run

    return {"triton_gelu": make(False), "triton_gelu_tanh_approx": make(True)}


# (rows, columns, warps); the first is vitkit's. The first four give a thread 32 elements (the backward then
# needs 128 registers: 4 blocks an SM, by ptxas for sm_90), the last two 16 (64-72 registers: more resident)
TILES = ((32, 128, 4), (16, 256, 4), (64, 128, 8), (32, 256, 8), (32, 128, 8), (16, 128, 4))


def fused_kernels() -> dict:
    """vitkit's fused bias-GELU kernels (models/fused_mlp.py, zero bias) as the step calls them, exact (the normal
    CDF by its polynomial) and tanh; the exact ones with libdevice's erf instead ("erf"), and at other tilings
    (rows x columns / warps); empty where they cannot run."""
    from vitkit.models import fused_mlp

    if not fused_mlp.load_ops():
        return {}
    import triton

    from vitkit.models.fused_mlp_kernels import backward_kernel, forward_kernel

    def op(approximate: str, backward: bool):
        def run(h: torch.Tensor, g: torch.Tensor):
            b = torch.zeros(h.shape[-1], device=h.device, dtype=h.dtype)
            if not backward:
                return torch.ops.vitkit.bias_gelu(h, b, approximate)
            dh, part = torch.ops.vitkit.bias_gelu_backward(g, h, b, approximate)
            return dh, part.sum(0)

        return run

    def tiled(bm: int, bn: int, warps: int, backward: bool, poly: bool = True):
        def run(h: torch.Tensor, g: torch.Tensor):
            m, n = h.shape
            b = torch.zeros(n, device=h.device, dtype=h.dtype)
            out = torch.empty_like(h)
            if not backward:
                grid = (triton.cdiv(m, bm), triton.cdiv(n, bn))
                forward_kernel[grid](h, b, out, m, n, BM=bm, BN=bn, TANH=False, POLY=poly, num_warps=warps)
                return out
            rows = fused_mlp.rows_per_group(m, bm)
            part = torch.empty((triton.cdiv(m, rows), n), device=h.device, dtype=torch.float32)
            grid = (triton.cdiv(m, rows), triton.cdiv(n, bn))
            backward_kernel[grid](
                g, h, b, out, part, m, n, ROWS=rows, BM=bm, BN=bn, TANH=False, POLY=poly, num_warps=warps
            )
            return out, part.sum(0)

        return run

    out = {
        "fused_gelu": op("none", False),
        "fused_gelu_bwd_sum": op("none", True),
        "fused_gelu_tanh": op("tanh", False),
        "fused_gelu_tanh_bwd_sum": op("tanh", True),
        "fused_gelu erf": tiled(*TILES[0], False, poly=False),
        "fused_gelu_bwd_sum erf": tiled(*TILES[0], True, poly=False),
    }
    for bm, bn, warps in TILES[1:]:
        out[f"fused_gelu {bm}x{bn}/w{warps}"] = tiled(bm, bn, warps, False)
        out[f"fused_gelu_bwd_sum {bm}x{bn}/w{warps}"] = tiled(bm, bn, warps, True)
    return out


def reference(name: str, h: torch.Tensor, g: torch.Tensor):
    """The pass in float64 (the first output where there are two)."""
    name = name.split(" ")[0].removeprefix("fused_")  # a fused kernel computes its plain pass's function
    h64, g64 = h.double(), g.double()
    cdf = 0.5 * (1 + torch.erf(h64 / math.sqrt(2)))
    pdf = torch.exp(-0.5 * h64 * h64) / math.sqrt(2 * math.pi)
    inner = math.sqrt(2 / math.pi) * (h64 + 0.044715 * h64**3)
    t = torch.tanh(inner)
    if name == "scale":
        return h64 * 2
    if name in ("gelu", "triton_gelu"):
        return h64 * cdf
    if name in ("gelu_tanh", "triton_gelu_tanh_approx"):
        return 0.5 * h64 * (1 + t)
    if name in ("gelu_bwd", "gelu_bwd_sum"):  # else: the tanh backward
        return g64 * (cdf + h64 * pdf)
    dinner = math.sqrt(2 / math.pi) * (1 + 3 * 0.044715 * h64 * h64)
    return g64 * (0.5 * (1 + t) + 0.5 * h64 * (1 - t * t) * dinner)


def time_us(fn, h, g, dev: torch.device, reps: int, queued: int = 10) -> list[float]:
    """Per-call times in microseconds, each the mean of `queued` calls between two CUDA events (the host clock on a
    CPU), after a warm-up."""
    import time

    for _ in range(3):
        fn(h, g)
    out = []
    for _ in range(reps):
        if dev.type == "cuda":
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            for _ in range(queued):
                fn(h, g)
            b.record()
            b.synchronize()
            out.append(a.elapsed_time(b) * 1e3 / queued)
        else:
            t = time.perf_counter()
            for _ in range(queued):
                fn(h, g)
            out.append((time.perf_counter() - t) * 1e6 / queued)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--smoke", action="store_true", help="CPU, a small tensor, no Triton kernel")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--json")
    a = ap.parse_args()
    dev = torch.device("cpu" if a.smoke else "cuda")
    rows, cols = (256, 384) if a.smoke else (256 * 197, 3072)
    gen = torch.Generator(device=dev).manual_seed(0)
    h = torch.randn(rows, cols, device=dev, generator=gen).to(torch.bfloat16)
    g = torch.randn(rows, cols, device=dev, generator=gen).to(torch.bfloat16)
    tensor_bytes = h.numel() * h.element_size()
    fns = {name: torch.compile(fn, dynamic=False) for name, (fn, _, _) in PASSES.items()}
    what = {name: (n, text) for name, (_, n, text) in PASSES.items()}
    kernels = {} if a.smoke else triton_gelu_kernels()
    fns.update(kernels)
    what["triton_gelu"] = (2, "erf GELU forward, hand-written Triton (the control of the next)")
    what["triton_gelu_tanh_approx"] = (2, "tanh GELU forward, hand-written Triton, tanh.approx.f32")
    fused = {} if a.smoke and os.environ.get("TRITON_INTERPRET") != "1" else fused_kernels()
    fns.update(fused)
    for name in fused:
        base = name.split(" ")[0]
        tag = name.split(" ")[1] if " " in name else ""
        how = " with libdevice's erf" if tag == "erf" else f" at {tag}" if tag else ""
        what[name] = (3 if base.endswith("bwd_sum") else 2, f"vitkit's fused bias-GELU, {base[6:]}{how}")
    res: dict = {
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "shape": [rows, cols],
    }
    res["torch"] = torch.__version__
    for name, fn in fns.items():
        try:
            out = fn(h, g)
            first = out[0] if isinstance(out, tuple) else out
            ref = reference(name, h, g)
            err = float((first.double() - ref).norm() / ref.norm())
            if isinstance(out, tuple):  # the column sum too
                ref_sum = ref.sum(0)
                err = max(err, float((out[1].double() - ref_sum).norm() / ref_sum.norm()))
            if not err < 1e-2:  # bf16 outputs land near 2e-3; NaN fails too
                raise ValueError(f"relative error {err:.2e} against float64: not timed")
            ts = time_us(fn, h, g, dev, a.reps)
        except Exception as e:  # one failing pass is reported, the rest still run
            res[name] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
            continue
        n, text = what[name]
        med = statistics.median(ts)
        res[name] = {
            "us": med,
            "min_us": min(ts),
            "TB_s": n * tensor_bytes / med / 1e6,
            "rel_err": err,
            "what": text,
        }
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)
    floor = res.get("scale", {}).get("TB_s")
    print(
        f"{res['device']}, torch {res['torch']}, ({rows}, {cols}) bf16, {tensor_bytes / 1e6:.0f} MB a tensor"
    )
    print(f"{'pass':30} {'us':>9} {'TB/s':>6} {'vs scale':>8} {'rel err':>8}  what")
    for name in fns:
        r = res[name]
        if "error" in r:
            print(f"{name:30} failed: {r['error']}")
            continue
        vs = f"{r['TB_s'] / floor:.2f}" if floor else "-"
        print(f"{name:30} {r['us']:>9.1f} {r['TB_s']:>6.2f} {vs:>8} {r['rel_err']:>8.1e}  {r['what']}")


if __name__ == "__main__":
    main()
