"""Start-up (compilation) and step time of a recipe's model compiled whole or block by block, on the CPU.

Builds the recipe's Trainer on synthetic images (batch 128, fp32) with train.compile_scope=model, then =blocks,
each in a fresh process with Inductor's caches off, and prints the start-up plus two steps, a median step and an
evaluation. Usage: python bench/compile_scope.py [--recipe fashion-mnist-gpu]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
import time


def measure(recipe: str, scope: str) -> str:
    """One measurement, in this process."""
    import torch

    from vitkit.data.datasets import load_dataset
    from vitkit.recipes import get_recipe
    from vitkit.train import distributed as D
    from vitkit.train.trainer import Trainer

    run = get_recipe(recipe)
    data = dataclasses.replace(run.data, dataset="synthetic", synthetic_size=2048)
    train = dataclasses.replace(
        run.train, batch_size=128, steps=20, compile=True, compile_scope=scope, device="cpu", precision="fp32"
    )
    cfg = dataclasses.replace(run, data=data, train=train)
    splits = load_dataset(cfg.data, img_size=cfg.model.img_size, seed=0)
    t = time.perf_counter()
    tr = Trainer(cfg, None, splits, D.DistInfo(), torch.device("cpu"))
    for _ in range(2):
        tr.train_step()
    start = time.perf_counter() - t
    steps = []
    for _ in range(7):
        t = time.perf_counter()
        tr.train_step()
        steps.append(time.perf_counter() - t)
    t = time.perf_counter()
    tr.evaluate()
    ev = time.perf_counter() - t
    step = sorted(steps)[3] * 1000
    return f"{recipe:20} {scope:7} {start:20.1f} {step:13.0f} {ev:11.1f}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--recipe", default="fashion-mnist-gpu")
    ap.add_argument("--scope", help=argparse.SUPPRESS)  # internal: measure one scope in this process
    a = ap.parse_args()
    if a.scope:
        print(measure(a.recipe, a.scope))
        return
    env = dict(os.environ, TORCHINDUCTOR_FORCE_DISABLE_CACHES="1")
    print(f"{'recipe':20} {'scope':7} {'start-up + 2 steps s':>20} {'step ms (med)':>13} {'evaluate s':>11}")
    for scope in ("model", "blocks"):
        cmd = [sys.executable, __file__, "--recipe", a.recipe, "--scope", scope]
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout
        print(out.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
