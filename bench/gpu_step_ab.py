"""A/B of the ViT-B/16 training step on a GPU (issue 6), beside timm, in one process.

Variants (bf16-pure and compiled unless said; same weights; timed alternately), chosen with --variants:
  conv     the patch embedding forced to the strided conv (vitkit's CUDA path before the sixth session; with
           this session's multi-tensor gradient copies, which the first A/B's conv variant did not have);
  loop     bf16 gradients copied to the fp32 master one tensor at a time (vitkit before the sixth session);
  foreach  vitkit as it stands (matrix-product patch embedding on CUDA, multi-tensor gradient copies);
  graphs   foreach, compiled with mode="reduce-overhead" (CUDA graphs);
  flash    foreach with attention forced to SDPA's FlashAttention-2 kernels (torch 2.11 picks cuDNN's on an H200:
           15.2% of the step in the sixth session's profile), traced afresh through an Attention subclass
           (ninth session: 5.4% slower than foreach);
  cdt      foreach compiled with options={"coordinate_descent_tuning": True}: Inductor tunes its generated kernels
           (GELU forward and backward, LayerNorm, the q/k/v gradient assembly: ~25% of that profile, ~2.5-2.9 TB/s;
           ninth session: still compiling after 200 s on an H200, beyond a device session's means);
  flash-cdt  flash and cdt together;
  mapw     foreach compiled with options={"max_autotune_pointwise": True}: Inductor benchmarks a few block sizes
           for each generated pointwise/reduction kernel only (a cheaper tuning than cdt's; fourteenth session:
           compiled in 27 s, the same speed as foreach);
  tile     foreach with Inductor's 2-D tiled reductions (triton.tile_reductions, prefer_nd_tiling, and
           tiling_prevents_reduction_fusion off): lets a column reduction (a bias gradient: the sum over the
           B*N rows) share one kernel with the pointwise work producing its input (the GELU backward: 331 + 94 us
           per layer in two kernels in the fourteenth session's profile), and tiles the q/k/v gradient's
           transposing copy (110 us per layer); eighteenth session: the same speed as foreach (1.180x timm against
           1.179x in a second measurement), the two kernels still two;
  pdl      foreach with Programmatic Dependent Launch in Inductor's kernels (triton.enable_pdl: Hopper lets a
           kernel start while the one before it finishes, for the gaps between ~1,000 kernels a step); eighteenth
           session: 1.180x timm against foreach's 1.174x in the same call, within the spread;
  tile-pdl tile and pdl together (eighteenth session: 1.181x);
  mag      foreach compiled with Inductor's GEMM autotuning (max_autotune_gemm: cuBLAS beside Triton matrix-product
           templates, which can take the GELU into their epilogue); eighteenth session: still tuning at a 120 s
           compile limit (13.9-17.6 s per shape), so never timed; cuBLAS beat the templates on every large shape;
  timm     timm's VisionTransformer with bf16 autocast (AMP), compiled (default mode);
  tanh, timm-tanh  foreach and timm with the tanh GELU (model.mlp_act=gelu_tanh, the official JAX code's and flax's
           default; timm gets nn.GELU(approximate="tanh"), the function of its act_layer "gelu_tanh"): whether erf's
           arithmetic, not memory, holds the GELU kernels back (bench/gpu_pointwise.py times the passes alone);
           tanh is compared with timm-tanh, and the table's last lines give tanh/foreach and timm-tanh/timm;
  fused    foreach with train.fused_bias_gelu (models/fused_mlp.py): fc1's bias and the GELU in one Triton kernel
           each way, the bias gradient's column sum inside the GELU backward's pass (the 133 us per layer of the
           third pass over the hidden activations; nineteenth session, not yet run on a GPU);
  fused-tanh  tanh and fused together (compared with timm-tanh);
  split    foreach with q, k and v from three matrix products on row slices of the qkv weight (SplitQkvAttention;
           the same parameters): each comes out of its product as a contiguous (B, N, D), so SDPA's gradients
           come back in that layout, and the kernel stacking them into the fused product's (B, N, 3D) gradient
           (clone_permute_stack: 107 us per layer in the eighteenth session's profile, at copy speed) has nothing
           to do; the cost: the input's gradient arrives as three products to sum (nineteenth session, not yet
           run on a GPU);
  fused-split  fused and split together.
A variant whose Inductor options this torch lacks is reported and skipped.
Each variant's compiled-graph count is printed and saved (a variant reusing another's graphs would show 0).
Before timing: ViT-B/16 and R50+ViT-B/16 float64 logits on CUDA against the CPU (the patch paths differ), and
the two patch embeddings' fp32 difference on the device. Sixth session: `--variants conv foreach timm`, then
`--variants loop foreach graphs timm`; ninth: `--variants foreach flash timm`; fourteenth: `--variants foreach
timm mapw --compile-limit 90 --profile-variant mapw`; eighteenth: `--variants foreach timm tile pdl tile-pdl mag
--compile-limit 120 --profile-variant tile-pdl` (bench/RESULTS.md).
Usage on a CPU: --smoke (tiny, no compile), --smoke-compile (tiny, compiled: each variant's graph count).
"""

from __future__ import annotations

import argparse
import json
import signal
import time
from dataclasses import replace

import torch
import torch.nn.functional as F

from vitkit.models import build_model, fused_mlp, model_config
from vitkit.models.layers import Attention, PatchEmbed
from vitkit.perf import benchmark as B
from vitkit.train.master import Bf16Copy

VARIANTS = (
    "conv",
    "loop",
    "foreach",
    "graphs",
    "flash",
    "cdt",
    "flash-cdt",
    "mapw",
    "tile",
    "pdl",
    "tile-pdl",
    "mag",
    "timm",
    "tanh",
    "timm-tanh",
    "fused",
    "fused-tanh",
    "split",
    "fused-split",
)
CDT = {"coordinate_descent_tuning": True}
TILE = {
    "triton.tile_reductions": True,
    "triton.prefer_nd_tiling": True,
    "triton.tiling_prevents_reduction_fusion": False,
}
TIMM = ("timm", "timm-tanh")
TANH = ("tanh", "timm-tanh", "fused-tanh")
FUSED = ("fused", "fused-tanh", "fused-split")
SPLIT = ("split", "fused-split")
INDUCTOR_OPTIONS = {
    "cdt": CDT,
    "flash-cdt": CDT,
    "mapw": {"max_autotune_pointwise": True},
    "tile": TILE,
    "pdl": {"triton.enable_pdl": True},
    "tile-pdl": {**TILE, "triton.enable_pdl": True},
    "mag": {
        "max_autotune_gemm": True,
        "max_autotune_gemm_backends": "ATEN,TRITON",
        "benchmark_epilogue_fusion": True,
    },
}


def unknown_options(options: dict[str, object]) -> list[str]:
    """The keys of `options` this torch's Inductor config lacks (torch.compile would refuse them)."""
    import torch._inductor.config as config

    def has(key: str) -> bool:
        node: object = config
        for part in key.split("."):
            try:
                node = getattr(node, part)
            except AttributeError:
                return False
        return True

    return [k for k in options if not has(k)]


class ConvPatchEmbed(PatchEmbed):
    """PatchEmbed that always runs the strided conv (vitkit's CPU path)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, N, D)


class LoopBf16Copy(Bf16Copy):
    """Bf16Copy with the one-tensor-at-a-time gradient accumulation it had before the sixth session."""

    @torch.no_grad()
    def accumulate_grads(self) -> None:
        for m, w in zip(self._master_params, self._work_params):
            if w.grad is None:
                continue
            if m.grad is None:
                m.grad = w.grad.float()
            else:
                m.grad.add_(w.grad)
            w.grad = None


class FlashAttention(Attention):
    """Attention run inside `sdpa_kernel(FLASH_ATTENTION)`: its own class, so torch.compile traces it afresh
    (an identical compile of the same classes would reuse the foreach variant's graphs, cuDNN attention
    included)."""

    def forward(self, *args, **kwargs):
        from torch.nn.attention import SDPBackend, sdpa_kernel

        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            return super().forward(*args, **kwargs)


class SplitQkvAttention(Attention):
    """Attention with q, k and v from three matrix products on row slices of the qkv weight (see `split`); the
    explicit, partial-query and relative paths are Attention's own."""

    def forward(self, x: torch.Tensor, return_attn: bool = False, num_queries: int | None = None):
        keyed_drop = self.training and self.attn_drop.p > 0
        if return_attn or num_queries is not None or hasattr(self, "rel_pos") or keyed_drop:
            return super().forward(x, return_attn, num_queries)
        B, N, C = x.shape
        w, b = self.qkv.weight, self.qkv.bias
        q, k, v = (
            F.linear(x, w[i * C : (i + 1) * C], None if b is None else b[i * C : (i + 1) * C])
            .view(B, N, self.num_heads, self.head_dim)
            .transpose(1, 2)
            for i in range(3)
        )  # (B, H, N, hd) each: views of contiguous (B, N, D)
        x = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, N, C)  # (B, N, D)
        return self.proj_drop(self.proj(x))


def save(res: dict, path: str | None) -> None:
    """Write the results so far (rewritten after each phase)."""
    if path:
        with open(path, "w") as f:
            json.dump(res, f, indent=1)


class CompileLimit(BaseException):
    """A variant's compilation ran past --compile-limit (a BaseException: code catching Exception or OSError
    inside the compiler does not swallow it)."""


def over_limit(signum: int, frame: object) -> None:
    """SIGALRM: a variant's compilation ran past --compile-limit."""
    raise CompileLimit("compilation and warm-up ran past --compile-limit")


def graphs_compiled() -> int:
    """Graphs Dynamo has compiled in this process (to show each variant compiled its own)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def device_checks(dev: torch.device, smoke: bool) -> dict[str, float]:
    """float64 logits on `dev` vs the CPU, and the two patch embeddings' fp32 difference on `dev`."""
    out = {}
    names = ("ViT-Ti/16",) if smoke else ("ViT-B/16", "R50+ViT-B/16")
    for name in names:
        cfg = model_config(name, img_size=32) if smoke else model_config(name)
        cpu = build_model(cfg).double().eval()
        there = build_model(cfg).double().eval().to(dev)
        there.load_state_dict(cpu.state_dict())
        x = torch.randn(2, 3, *cfg.img_size, dtype=torch.float64)
        with torch.no_grad():
            out[f"{name} float64 logits max diff vs cpu"] = float(
                (cpu(x) - there(x.to(dev)).cpu()).abs().max()
            )
    pe = build_model(model_config("ViT-B/16")).patch_embed.to(dev)
    conv = ConvPatchEmbed(pe.img_size, pe.patch_size, pe.in_chans, pe.proj.out_channels).to(dev)
    conv.load_state_dict(pe.state_dict())
    x = torch.randn(4, 3, *pe.img_size, device=dev)
    with torch.no_grad():
        out["patch embedding fp32 max diff, conv vs this device's path"] = float(
            (conv(x) - pe(x)).abs().max()
        )
    return out


def fused_checks(dev: torch.device) -> dict[str, float | str]:
    """The fused bias-GELU kernels (eager) on `dev`: ViT-B/16 logits and gradients (largest difference relative to
    that tensor's largest gradient) of fp32 fused, bf16 plain and bf16 fused, each against fp32 plain; a note
    where they do not run."""
    probe = torch.empty(1, device=dev)
    if not (fused_mlp.load_ops() and fused_mlp.runs_on(probe)):
        return {"fused bias-GELU": f"does not run on {dev.type} here"}
    torch.manual_seed(0)
    m = build_model(model_config("ViT-B/16")).to(dev)
    x = torch.randn(4, 3, 224, 224, device=dev)

    def run(dtype: torch.dtype, fused: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
        w = m.to(dtype)
        fused_mlp.set_fused_bias_gelu(w, fused)
        w.zero_grad()
        y = w(x.to(dtype))
        y.float().square().mean().backward()
        return y.detach().float(), [p.grad.float() for p in w.parameters()]

    ref_y, ref_g = run(torch.float32, False)
    out: dict[str, float | str] = {}
    for dtype, fused in ((torch.float32, True), (torch.bfloat16, False), (torch.bfloat16, True)):
        y, g = run(dtype, fused)
        name = f"{str(dtype).removeprefix('torch.')} {'fused' if fused else 'plain'} vs fp32 plain"
        out[f"{name}: logits max diff"] = float((y - ref_y).abs().max())
        out[f"{name}: max relative grad diff"] = max(
            float((a - b).abs().max() / b.abs().max().clamp_min(1e-30)) for a, b in zip(g, ref_g)
        )
    # the compiled path (Inductor traces the custom ops), as train.precision=auto runs it: bf16 autocast, fp32
    # bias; two blocks of ViT-B/16, compiled fused against eager fused (and eager plain, for the scale)
    small = build_model(replace(model_config("ViT-B/16"), depth=2)).to(dev)

    def autocast_step(f, fused: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
        fused_mlp.set_fused_bias_gelu(small, fused)
        small.zero_grad()
        with torch.autocast(dev.type, dtype=torch.bfloat16):
            y = f(x)
        y.float().square().mean().backward()
        return y.detach().float(), [p.grad.float() for p in small.parameters()]

    plain_y, plain_g = autocast_step(small, False)
    eager_y, eager_g = autocast_step(small, True)
    try:
        comp_y, comp_g = autocast_step(torch.compile(small), True)
    except Exception as e:  # the eager numbers above still count
        out["bf16 autocast, 2 blocks, compiled fused"] = f"{type(e).__name__}: {str(e)[:500]}"
        comp_y, comp_g = eager_y, eager_g
    pairs = (("compiled fused", (comp_y, comp_g)), ("eager plain", (plain_y, plain_g)))
    for name, (y, g) in pairs if comp_g is not eager_g else pairs[1:]:
        out[f"bf16 autocast, 2 blocks, {name} vs eager fused: logits max diff"] = float(
            (y - eager_y).abs().max()
        )
        out[f"bf16 autocast, 2 blocks, {name} vs eager fused: max relative grad diff"] = max(
            float((a - b).abs().max() / b.abs().max().clamp_min(1e-30)) for a, b in zip(g, eager_g)
        )
    return out


def split_checks(dev: torch.device, smoke: bool) -> dict[str, float]:
    """SplitQkvAttention against Attention on `dev`, fp32, same weights, training mode: logits and the largest
    gradient difference relative to that tensor's largest gradient."""
    cfg = model_config("ViT-Ti/16", img_size=32) if smoke else model_config("ViT-B/16")
    torch.manual_seed(0)
    m = build_model(cfg).to(dev).train()
    x = torch.randn(4, cfg.in_chans, *cfg.img_size, device=dev)
    outs = []
    for cls in (Attention, SplitQkvAttention):
        for blk in m.blocks:
            blk.attn.__class__ = cls
        m.zero_grad()
        y = m(x)
        y.square().mean().backward()
        outs.append((y.detach(), [p.grad.clone() for p in m.parameters()]))
    (y0, g0), (y1, g1) = outs
    return {
        "split qkv fp32 logits max diff": float((y0 - y1).abs().max()),
        "split qkv fp32 max relative grad diff": max(
            float((a - b).abs().max() / a.abs().max().clamp_min(1e-30)) for a, b in zip(g0, g1)
        ),
    }


def flash_impls() -> dict[str, str]:
    """The flash-attention implementations this torch can swap in for SDPA's FlashAttention-2 (FA3, FA4: lead for
    the attention's 15% of the step) and whether each activates here (each needs its own package), then restored."""
    try:
        from torch.nn import attention as A

        names = A.list_flash_attention_impls()
    except (ImportError, AttributeError):
        return {"flash impls": "none: this torch has no registry of them"}
    out = {}
    for n in names:
        try:
            A.activate_flash_attention_impl(n)
            out[f"flash impl {n}"] = "activates"
        except Exception as e:
            out[f"flash impl {n}"] = f"{type(e).__name__}: {str(e)[:200]}"
        finally:
            A.restore_flash_attention_impl(_raise_warn=False)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--smoke", action="store_true", help="ViT-Ti/16, 32 px, batch 8, CPU, no compile")
    ap.add_argument(
        "--smoke-compile", action="store_true", help="--smoke, compiled (checks each variant compiles)"
    )
    ap.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    ap.add_argument("--json")
    ap.add_argument("--profile", help="torch.profiler table of one variant's step (--profile-variant)")
    ap.add_argument(
        "--profile-variant", default="foreach", choices=VARIANTS, help="(foreach if this one failed)"
    )
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--compile-limit",
        type=int,
        default=0,
        help="seconds for each variant's compilation and warm-up; one over it is dropped, the rest timed (0: none)",
    )
    a = ap.parse_args()
    a.smoke = a.smoke or a.smoke_compile
    dev = torch.device("cpu" if a.smoke else "cuda")
    cfg = model_config("ViT-Ti/16", img_size=32) if a.smoke else model_config("ViT-B/16")
    batch, compile = (8, a.smoke_compile) if a.smoke else (256, True)
    t0 = time.perf_counter()
    res: dict = {"device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"}
    res["torch"] = torch.__version__
    try:  # a failing check is reported; the timing still runs
        res["checks"] = device_checks(dev, a.smoke)
    except Exception as e:
        res["checks"] = {"error": f"{type(e).__name__}: {str(e)[:500]}"}
    try:
        res["checks"].update(split_checks(dev, a.smoke))
    except Exception as e:
        res["checks"]["split qkv"] = f"{type(e).__name__}: {str(e)[:500]}"
    try:
        res["checks"].update(fused_checks(dev))
    except Exception as e:
        res["checks"]["fused bias-GELU"] = f"{type(e).__name__}: {str(e)[:500]}"
    res["checks"].update(flash_impls())
    for k, v in res["checks"].items():
        print(f"{k}: {v:.2e}" if isinstance(v, float) else f"{k}: {v}")
    torch.manual_seed(0)
    ref = build_model(cfg).to(dev)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, cfg.in_chans, *cfg.img_size, generator=g).to(dev)
    y = torch.randint(0, cfg.num_classes, (batch,), generator=g).to(dev)
    runs, skipped = {}, {}
    for name in a.variants:
        vcfg = replace(cfg, mlp_act="gelu_tanh") if name in TANH else cfg
        m = B.timm_twin(vcfg).to(dev) if name in TIMM else build_model(vcfg).to(dev)
        m.load_state_dict(ref.state_dict())
        if name == "conv":
            m.patch_embed.__class__ = ConvPatchEmbed
        if name in FUSED:
            fused_mlp.set_fused_bias_gelu(m)
        if name in SPLIT:
            for blk in m.blocks:
                blk.attn.__class__ = SplitQkvAttention
        if name in ("flash", "flash-cdt"):
            for blk in m.blocks:
                blk.attn.__class__ = FlashAttention
        B.Bf16Copy = LoopBf16Copy if name == "loop" else Bf16Copy  # the class train_step builds
        mode = "reduce-overhead" if name == "graphs" else None
        # options make a backend of their own: compiled afresh, with the tuning applied by construction
        options = INDUCTOR_OPTIONS.get(name)
        lacking = unknown_options(options or {})
        if lacking:
            skipped[name] = f"torch {torch.__version__} has no Inductor option {', '.join(lacking)}"
            print(f"{name}: skipped: {skipped[name]}")
            continue
        dtype = "bf16" if name in TIMM else "bf16-pure"
        runs[name] = B.train_step(m, x, y, dtype, compile=compile, compile_mode=mode, compile_options=options)
    B.Bf16Copy = Bf16Copy
    res["errors"], res["graphs_compiled"] = dict(skipped), {}
    save(res, a.json)
    for name, fn in list(runs.items()):  # compile and warm each; a variant that fails is reported, not fatal
        before, t = graphs_compiled(), time.perf_counter()
        signal.signal(signal.SIGALRM, over_limit)
        # fires again every 5 s should one signal land where it is not seen
        signal.setitimer(signal.ITIMER_REAL, a.compile_limit, 5.0 if a.compile_limit else 0.0)
        try:
            for _ in range(3):
                fn()
            if dev.type == "cuda":
                torch.cuda.synchronize()
        except (Exception, CompileLimit) as e:
            signal.setitimer(signal.ITIMER_REAL, 0)
            res["errors"][name] = f"{type(e).__name__}: {str(e)[:500]}"
            del runs[name]
            print(f"{name}: failed: {res['errors'][name]}")
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        res["graphs_compiled"][name] = graphs_compiled() - before
        print(
            f"{name}: {res['graphs_compiled'][name]} graphs compiled, {time.perf_counter() - t:.0f} s",
            flush=True,
        )
        save(res, a.json)  # what is known so far survives a timeout
    timings = B.time_alternately(runs, dev, batch, warmup=1, repeats=a.repeats, min_seconds=1.0)
    flops, peak = B.train_flops_per_image(cfg), B.peak_tflops(dev)
    for name, t in timings.items():
        s = t.summary()
        res[name] = {**s, "mfu": s["median"] * flops / 1e12 / peak if peak else None, "all": t.img_s}
    profiled = a.profile_variant if a.profile_variant in runs else "foreach" if "foreach" in runs else None
    if a.profile and profiled:
        with open(a.profile, "w") as f:
            f.write(f"variant {profiled}\n" + B.profile_table(runs[profiled], dev) + "\n")
        res["profiled"] = profiled
    elif a.profile:
        print(f"--profile: no profile written (neither {a.profile_variant} nor foreach was run)")
    res["seconds"] = time.perf_counter() - t0
    save(res, a.json)
    print(
        f"{'variant':11} {'img/s':>9} {'min':>9} {'max':>9} {'MFU':>6} {'vs timm':>8}  (tanh: vs timm-tanh)"
    )
    for name in runs:
        r = res[name]
        base = res.get("timm-tanh" if name in TANH else "timm", {}).get("median")
        mfu = f"{r['mfu']:.1%}" if r["mfu"] else "-"
        ratio = f"{r['median'] / base:.3f}" if base else "-"
        print(f"{name:11} {r['median']:>9.1f} {r['min']:>9.1f} {r['max']:>9.1f} {mfu:>6} {ratio:>8}")
    res["tanh_gain"] = {}  # what the tanh GELU (and the fused kernels) change, in each library
    for tanh, erf in (
        ("tanh", "foreach"),
        ("timm-tanh", "timm"),
        ("fused", "foreach"),
        ("fused-tanh", "tanh"),
    ):
        if tanh in runs and erf in runs:
            res["tanh_gain"][tanh] = res[tanh]["median"] / res[erf]["median"]
            print(f"{tanh} / {erf}: {res['tanh_gain'][tanh]:.3f}")
    save(res, a.json)
    print(f"({res['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
