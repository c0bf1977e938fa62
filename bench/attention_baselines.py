"""The paper's attention baselines beside their ResNet control, BiT and the ViT: one recipe, one epoch count.

    python bench/attention_baselines.py                  # fashion-mnist-sasa, 4 epochs, the five models below
    python bench/attention_baselines.py --models AA-ResNet-26 ResNet-26 --epochs 2
    python bench/attention_baselines.py --reuse          # read the runs already in runs/attn-* instead

Each model is trained by `vitkit train --recipe R --model M --epochs E` into runs/attn-<model> (the recipe's
data, optimizer, schedule and batch; `--model` swaps the architecture, resetting the ViT's options for a CNN),
one after another so that none shares the cores. Prints per-epoch test top-1, the final top-1, training seconds
per epoch and the analytic GFLOPs per image; writes bench/results/attention_baselines.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

MODELS = ["SASA-ResNet-26", "AA-ResNet-26", "ResNet-26", "BiT-R26x1", "ViT-fmnist"]


def run_dir(model: str) -> str:
    return os.path.join("runs", "attn-" + model.replace("/", "_"))


def train(model: str, recipe: str, epochs: int, out: str) -> None:
    """`vitkit train` for one model (the default recipe's ViT for 'ViT-fmnist')."""
    cmd = [sys.executable, "-m", "vitkit", "train", "--recipe", recipe, "--epochs", str(epochs), "--out", out]
    if model == "ViT-fmnist":
        cmd[cmd.index(recipe)] = "fashion-mnist"  # the default recipe's own ViT and its own settings
    else:
        cmd += ["--model", model]
    cmd += ["--overwrite", "--no-progress"]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def summarise(model: str, out: str) -> dict:
    """Per-epoch test accuracy and timing of a finished run."""
    with open(os.path.join(out, "summary.json")) as f:
        summary = json.load(f)
    with open(os.path.join(out, "metrics.jsonl")) as f:
        evals = [r for r in (json.loads(line) for line in f if line.strip()) if r.get("split") == "test"]
    with open(os.path.join(out, "config.json")) as f:
        config = json.load(f)
    from vitkit.config import ModelConfig, from_dict
    from vitkit.models import count_params, forward_macs

    cfg = from_dict(ModelConfig, config["model"])
    return {
        "model": model,
        "name": cfg.name,
        "params": count_params(cfg),
        "gflops_per_image": 2 * forward_macs(cfg) / 1e9,
        "epoch_top1": [round(r["top1"], 4) for r in evals],
        "test_top1": summary["test_top1"],
        "train_seconds": summary["train_seconds"],
        "seconds_per_epoch": summary["train_seconds"] / max(summary["epochs"], 1e-9),
        "train_img_s": summary["train_img_s"],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=MODELS)
    ap.add_argument("--recipe", default="fashion-mnist-sasa")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--reuse", action="store_true", help="summarise existing runs, train only missing ones")
    ap.add_argument("--json", default="bench/results/attention_baselines.json")
    a = ap.parse_args()
    rows = []
    for model in a.models:
        out = run_dir(model)
        if not (a.reuse and os.path.exists(os.path.join(out, "summary.json"))):
            train(model, a.recipe, a.epochs, out)
        rows.append(summarise(model, out))
    print(f"\n{a.recipe}, {a.epochs} epochs, torch threads as `vitkit train` sets them")
    head = f"{'model':<16} {'params':>11} {'GFLOPs':>7} {'top-1 by epoch':<34} {'final':>7} {'s/epoch':>8}"
    head += f" {'img/s':>7}"
    print(head)
    print("-" * len(head))
    for r in rows:
        by_epoch = " ".join(f"{100 * t:.2f}" for t in r["epoch_top1"])
        print(
            f"{r['name']:<16} {r['params']:>11,} {r['gflops_per_image']:>7.3f} {by_epoch:<34} "
            f"{100 * r['test_top1']:>6.2f}% {r['seconds_per_epoch']:>8.1f} {r['train_img_s']:>7.1f}"
        )
    os.makedirs(os.path.dirname(a.json), exist_ok=True)
    with open(a.json, "w") as f:
        json.dump({"recipe": a.recipe, "epochs": a.epochs, "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
