"""A/B of the patch embedding on the ViT-B/16 training step (issue 6's GPU lead), beside timm, in one process.

Variants, timed alternately (bench/RESULTS.md, fourth session: the strided convolution took 5.5% of the step):
  conv    vitkit with `PatchEmbed.proj` run as a conv with kernel = stride = P (its CPU path), bf16-pure, compiled;
  matmul  the same weights, the patches flattened and projected by one matrix product (its CUDA path since the
          sixth session's A/B), bf16-pure, compiled;
  timm    timm's VisionTransformer, same weights, bf16 autocast (AMP), compiled.
Usage on a GPU: python bench/gpu_patch_ab.py [--json FILE] [--profile FILE]; on a CPU: --smoke.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from vitkit.models import build_model, model_config
from vitkit.models.layers import PatchEmbed, patchify_project
from vitkit.perf.benchmark import (
    peak_tflops,
    profile_table,
    time_alternately,
    timm_twin,
    train_flops_per_image,
    train_step,
)


class ConvPatchEmbed(PatchEmbed):
    """PatchEmbed that always runs the strided conv (vitkit's CPU path; on CUDA before the sixth session)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, N, D)


class MatmulPatchEmbed(PatchEmbed):
    """PatchEmbed that always runs one matrix product (vitkit's CUDA path since the sixth session)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return patchify_project(x, self.proj)  # (B, N, D)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument(
        "--smoke", action="store_true", help="ViT-Ti/16 at 32 px, batch 8, on the CPU, no compile"
    )
    ap.add_argument("--json")
    ap.add_argument("--profile", help="torch.profiler table of the matmul variant's step")
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    dev = torch.device("cpu" if a.smoke else "cuda")
    cfg = model_config("ViT-Ti/16", img_size=32) if a.smoke else model_config("ViT-B/16")
    batch, compile = (8, False) if a.smoke else (256, True)
    t0 = time.perf_counter()
    torch.manual_seed(0)
    conv = build_model(cfg).to(dev)
    matmul = build_model(cfg).to(dev)
    matmul.load_state_dict(conv.state_dict())
    conv.patch_embed.__class__ = ConvPatchEmbed
    matmul.patch_embed.__class__ = MatmulPatchEmbed
    twin = timm_twin(cfg).to(dev)
    twin.load_state_dict(conv.state_dict())
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, cfg.in_chans, *cfg.img_size, generator=g).to(dev)
    y = torch.randint(0, cfg.num_classes, (batch,), generator=g).to(dev)
    with torch.no_grad():  # fp32 check of the two embeddings on this device
        diff = float((matmul.patch_embed(x) - conv.patch_embed(x)).abs().max())
    runs = {
        "conv": train_step(conv, x, y, "bf16-pure", compile=compile),
        "matmul": train_step(matmul, x, y, "bf16-pure", compile=compile),
        "timm": train_step(twin, x, y, "bf16", compile=compile),
    }
    timings = time_alternately(runs, dev, batch, warmup=3, repeats=a.repeats, min_seconds=1.0)
    flops, peak = train_flops_per_image(cfg), peak_tflops(dev)
    res = {
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "torch": torch.__version__,
    }
    res["max_abs_diff_patch_embed_fp32"] = diff
    for name, t in timings.items():
        s = t.summary()
        res[name] = {**s, "mfu": s["median"] * flops / 1e12 / peak if peak else None, "all": t.img_s}
    res["ratio_conv_vs_timm"] = res["conv"]["median"] / res["timm"]["median"]
    res["ratio_matmul_vs_timm"] = res["matmul"]["median"] / res["timm"]["median"]
    res["ratio_matmul_vs_conv"] = res["matmul"]["median"] / res["conv"]["median"]
    res["seconds"] = time.perf_counter() - t0
    if a.profile:
        with open(a.profile, "w") as f:
            f.write(profile_table(runs["matmul"], dev) + "\n")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)
    print(f"{'variant':8} {'img/s':>9} {'min':>9} {'max':>9} {'MFU':>6}")
    for name in runs:
        r = res[name]
        mfu = f"{r['mfu']:.1%}" if r["mfu"] else "-"
        print(f"{name:8} {r['median']:>9.1f} {r['min']:>9.1f} {r['max']:>9.1f} {mfu:>6}")
    print(
        f"conv/timm {res['ratio_conv_vs_timm']:.3f}  matmul/timm {res['ratio_matmul_vs_timm']:.3f}  "
        f"matmul/conv {res['ratio_matmul_vs_conv']:.3f}  patch-embed max diff {diff:.1e}  ({res['seconds']:.0f} s)"
    )


if __name__ == "__main__":
    main()
