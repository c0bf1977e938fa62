"""Operators per training step outside the model: what a launch-bound GPU step pays for (issue 6).

Counts the aten operators torch.profiler records over a few training steps of a recipe's data pipeline,
optimizer and bookkeeping, with the model shrunk to one tiny block (compiled, so its own operators are few) and
synthetic images of the recipe's size. Fewer operators are fewer kernel launches on a GPU.
Usage: python bench/step_ops.py [--recipe fashion-mnist-best] [--steps 5]
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch

from vitkit.data.datasets import load_dataset
from vitkit.recipes import get_recipe
from vitkit.train import distributed as D
from vitkit.train.trainer import Trainer


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--recipe", default="fashion-mnist-best")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=64)
    a = ap.parse_args()
    run = get_recipe(a.recipe)
    if run.model.arch != "vit":
        raise SystemExit(f"{a.recipe}: a {run.model.arch} model; step_ops shrinks a ViT (depth, width)")
    m = dataclasses.replace(run.model, depth=1, embed_dim=32, num_heads=2, mlp_dim=64)
    data = dataclasses.replace(run.data, dataset="synthetic")
    train = dataclasses.replace(
        run.train, batch_size=a.batch_size, micro_batch_size=0, compile=True, steps=100
    )
    cfg = dataclasses.replace(run, model=m, data=data, train=train)
    splits = load_dataset(cfg.data, img_size=m.img_size, seed=0)
    tr = Trainer(cfg, None, splits, D.DistInfo(), torch.device("cpu"))
    for _ in range(3):  # compile and warm up
        tr.train_step()
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(a.steps):
            tr.train_step()
    events = prof.key_averages()
    total = sum(e.count for e in events if e.key.startswith("aten::")) / a.steps
    t = time.perf_counter()
    for _ in range(20):
        tr.train_step()
    ms = (time.perf_counter() - t) / 20 * 1000
    print(
        f"{a.recipe}: {total:.0f} aten operators per step (nested calls included), {ms:.1f} ms per CPU step"
    )
    for e in sorted(events, key=lambda e: -e.count)[:12]:
        print(f"  {e.key:40} {e.count / a.steps:7.1f}")


if __name__ == "__main__":
    main()
