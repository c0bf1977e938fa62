"""A/B of the ViT-B/16 training step's overheads on a GPU (issue 6), beside timm, in one process.

After the sixth session's patch-embedding A/B (bench/gpu_patch_ab.py), the step ran 60.2 ms of GPU time in
62.8 ms of wall time, with about 150 one-tensor copy kernels per step turning the bf16 gradients into fp32.
Variants, all bf16-pure and compiled, same weights, timed alternately:
  loop       gradients copied to the fp32 master one tensor at a time (vitkit before this change);
  foreach    multi-tensor copies (vitkit's `Bf16Copy.accumulate_grads` now);
  graphs     foreach, and the model compiled with mode="reduce-overhead" (CUDA graphs);
  timm       timm's VisionTransformer with bf16 autocast (AMP), compiled (default mode).
Usage on a GPU: python bench/gpu_step_ab.py [--json FILE]; on a CPU: --smoke.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from vitkit.models import build_model, model_config
from vitkit.perf import benchmark as B
from vitkit.train.master import Bf16Copy


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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--smoke", action="store_true", help="ViT-Ti/16, 32 px, batch 8, CPU, no compile")
    ap.add_argument("--json")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip", nargs="*", default=[], help="variants to leave out")
    a = ap.parse_args()
    dev = torch.device("cpu" if a.smoke else "cuda")
    cfg = model_config("ViT-Ti/16", img_size=32) if a.smoke else model_config("ViT-B/16")
    batch, compile = (8, False) if a.smoke else (256, True)
    t0 = time.perf_counter()
    torch.manual_seed(0)
    ref = build_model(cfg).to(dev)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, cfg.in_chans, *cfg.img_size, generator=g).to(dev)
    y = torch.randint(0, cfg.num_classes, (batch,), generator=g).to(dev)
    runs = {}
    for name in ("loop", "foreach", "graphs", "timm"):
        if name in a.skip:
            continue
        m = B.timm_twin(cfg).to(dev) if name == "timm" else build_model(cfg).to(dev)
        m.load_state_dict(ref.state_dict())
        B.Bf16Copy = LoopBf16Copy if name == "loop" else Bf16Copy  # the class train_step builds
        mode = "reduce-overhead" if name == "graphs" else None
        dtype = "bf16" if name == "timm" else "bf16-pure"
        runs[name] = B.train_step(m, x, y, dtype, compile=compile, compile_mode=mode)
    B.Bf16Copy = Bf16Copy
    errors = {}
    for name, fn in list(runs.items()):  # compile and warm each; a variant that fails is reported, not fatal
        try:
            for _ in range(3):
                fn()
            if dev.type == "cuda":
                torch.cuda.synchronize()
        except Exception as e:
            errors[name] = f"{type(e).__name__}: {str(e)[:500]}"
            del runs[name]
            print(f"{name}: failed: {errors[name]}")
    timings = B.time_alternately(runs, dev, batch, warmup=1, repeats=a.repeats, min_seconds=1.0)
    flops, peak = B.train_flops_per_image(cfg), B.peak_tflops(dev)
    res: dict = {"device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"}
    res["torch"] = torch.__version__
    res["errors"] = errors
    for name, t in timings.items():
        s = t.summary()
        res[name] = {**s, "mfu": s["median"] * flops / 1e12 / peak if peak else None, "all": t.img_s}
    res["seconds"] = time.perf_counter() - t0
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)
    base = res.get("timm", {}).get("median")
    print(f"{'variant':8} {'img/s':>9} {'min':>9} {'max':>9} {'MFU':>6} {'vs timm':>8}")
    for name in runs:
        r = res[name]
        mfu = f"{r['mfu']:.1%}" if r["mfu"] else "-"
        ratio = f"{r['median'] / base:.3f}" if base else "-"
        print(f"{name:8} {r['median']:>9.1f} {r['min']:>9.1f} {r['max']:>9.1f} {mfu:>6} {ratio:>8}")
    print(f"({res['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
