"""The paper's Figures 3-4 in miniature: ViT against its ResNet (BiT) baseline as the training set grows.

    python bench/data_scaling.py                                   # 2%, 10%, 50% of Fashion-MNIST, 800 steps
    python bench/data_scaling.py --fractions 0.05 1.0 --steps 2000 --recipes fashion-mnist

Each recipe (`fashion-mnist`: the default ViT; `fashion-mnist-bit`: BiT-R26x1 in the same setting) trains on
`data.subset` = each fraction of every class for the same number of optimizer steps (the paper keeps the
hyper-parameters of every subset; small subsets are then seen for many epochs, where overfitting shows), with a
fixed validation split held out first (`data.holdout`, the same images for every fraction) on which the best
checkpoint is chosen, as the paper's early stopping on validation accuracy. Prints, per fraction and recipe, the
final test top-1 and the test top-1 of the checkpoint the validation split chose; `--json FILE` keeps them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time

from vitkit.config import apply_overrides
from vitkit.data.datasets import load_dataset
from vitkit.recipes import get_recipe
from vitkit.train.loop import train


def run_one(recipe: str, fraction: float, steps: int, holdout: float, evals: int) -> dict:
    """One training run on `fraction` of the training classes; its summary's numbers."""
    cfg = get_recipe(recipe)
    cfg = apply_overrides(cfg, [f"data.holdout={holdout}", f"data.subset={fraction}", f"train.steps={steps}"])
    splits = load_dataset(cfg.data, img_size=cfg.model.img_size, seed=cfg.train.seed)
    epochs = steps * cfg.train.batch_size / len(splits.train)
    every = max(1, round(epochs / evals))  # about `evals` evaluations whatever the subset's size
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, eval_every=every, log_every=10_000))
    t0 = time.perf_counter()
    s = train(cfg, None, splits=splits)
    return {
        "recipe": recipe,
        "model": s["model"],
        "fraction": fraction,
        "train_images": len(splits.train),
        "epochs": round(epochs, 2),
        "test_top1": s["test_top1"],
        "best_val_top1": s["best_val_top1"],
        "test_top1_at_best_val": s["best_test_top1"],
        "train_seconds": s["train_seconds"],
        "wall_seconds": time.perf_counter() - t0,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipes", nargs="+", default=["fashion-mnist", "fashion-mnist-bit"])
    ap.add_argument("--fractions", nargs="+", type=float, default=[0.02, 0.1, 0.5])
    ap.add_argument("--steps", type=int, default=800, help="optimizer steps of every run (default 800)")
    ap.add_argument(
        "--holdout", type=float, default=1 / 12, help="validation share (default 1/12: 5,000 images)"
    )
    ap.add_argument("--evals", type=int, default=5, help="about this many evaluations per run (default 5)")
    ap.add_argument("--json", metavar="FILE")
    a = ap.parse_args()
    if not 0 < a.holdout <= 0.5:
        ap.error(
            f"--holdout {a.holdout}: the best checkpoint is chosen on a held-out split; give 0 < F <= 0.5"
        )
    logging.basicConfig(level=logging.WARNING)
    rows = []
    for fraction in a.fractions:
        for recipe in a.recipes:
            rows.append(run_one(recipe, fraction, a.steps, a.holdout, a.evals))
            r = rows[-1]
            print(f"{r['recipe']:<18} {r['fraction']:>6.0%} {r['train_images']:>6} images {r['epochs']:>7.1f} "
                  f"epochs: test {r['test_top1']:.2%}, at best val {r['test_top1_at_best_val']:.2%} "
                  f"({r['train_seconds']:.0f} s)", flush=True)  # fmt: skip
    print(f"\n{'fraction':>8} {'images':>7} " + " ".join(f"{m:>34}" for m in a.recipes))
    print(f"{'':>8} {'':>7} " + " ".join(f"{'final / at best val (test top-1)':>34}" for _ in a.recipes))
    for fraction in a.fractions:
        cells = [r for r in rows if r["fraction"] == fraction]
        line = f"{fraction:>8.0%} {cells[0]['train_images']:>7} "
        line += " ".join(f"{r['test_top1']:>24.2%} / {r['test_top1_at_best_val']:>6.2%}" for r in cells)
        print(line)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"steps": a.steps, "holdout": a.holdout, "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
