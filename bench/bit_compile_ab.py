"""A CNN baseline's training step on the CPU, eager vs channels-last vs torch.compile, timed alternately in one
process (BiT-R26x1 unless --model names another 28-px CNN: ResNet-26, SASA-ResNet-26, AA-ResNet-26).

python bench/bit_compile_ab.py [--model SASA-ResNet-26] [--repeats 3]   (28 px grayscale, batch 64, fused AdamW;
bench/RESULTS.md)
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from vitkit.models import create_model

VARIANTS = {
    "eager": (False, False),
    "eager-cl": (True, False),
    "compile": (False, True),
    "compile-cl": (True, True),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="BiT-R26x1")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10, help="steps per measurement")
    a = ap.parse_args()
    torch.manual_seed(0)
    x, y = torch.randn(64, 1, 28, 28), torch.randint(0, 10, (64,))
    steps = {}
    for name, (channels_last, compiled) in VARIANTS.items():
        model = create_model(a.model, img_size=28, in_chans=1, num_classes=10)
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        model = model.to(memory_format=fmt)
        opt = torch.optim.AdamW(model.parameters(), fused=True)
        fwd = torch.compile(model) if compiled else model
        xx = x.contiguous(memory_format=fmt)

        def step(fwd=fwd, opt=opt, xx=xx) -> None:
            F.cross_entropy(fwd(xx), y).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        for _ in range(3):  # compile and warm up
            step()
        steps[name] = step
    res: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(a.repeats):
        for name, step in steps.items():
            t = time.perf_counter()
            for _ in range(a.steps):
                step()
            res[name].append(len(x) * a.steps / (time.perf_counter() - t))
    for name, v in res.items():
        print(f"{name:11} img/s " + " ".join(f"{r:7.1f}" for r in v))


if __name__ == "__main__":
    main()
