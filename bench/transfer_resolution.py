"""Transfer to a higher resolution, as the paper fine-tunes: evaluate a run at its resolution, at a larger one with
the position embedding resampled (before any fine-tuning), and after a short `vitkit finetune` there.

    python bench/transfer_resolution.py runs/fashion-mnist                  # 28 px -> 56 px, finetune-small
    python bench/transfer_resolution.py runs/fashion-mnist --steps 300 --json bench/transfer.json
    vitkit train --recipe fashion-mnist-transfer --out runs/fmnist-transfer   # a model made to be moved
    python bench/transfer_resolution.py runs/fmnist-transfer

The issue's acceptance: >= 85% Fashion-MNIST test top-1 at 56 px before fine-tuning, and above the 28-px
accuracy after fine-tuning. Prints a table (and rows to paste into bench/RESULTS.md).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import torch


def evaluate_run(source: str, img_size: int | None, device: torch.device, resample: str = "official") -> dict:
    """Test-set top-1/top-5/loss of a run folder's model at `img_size` (its own when None)."""
    from vitkit.convert import model_from_source, read_checkpoint
    from vitkit.data.datasets import load_dataset
    from vitkit.data.transforms import BatchTransform
    from vitkit.eval.evaluate import evaluate
    from vitkit.train.runfiles import read_config

    cfg = read_config(source)
    ckpt = read_checkpoint(source)
    model = model_from_source(ckpt, resample=resample, **({"img_size": img_size} if img_size else {})).to(
        device
    )
    splits = load_dataset(cfg.data, img_size=model.cfg.img_size, seed=cfg.train.seed)
    mean, std = ckpt.meta.get("mean") or splits.mean, ckpt.meta.get("std") or splits.std
    transform = BatchTransform(cfg.data, model.cfg.img_size, tuple(mean), tuple(std))
    res = evaluate(
        model, splits.test, transform.eval, num_classes=splits.num_classes, device=device, batch_size=500
    )
    return {
        "img_size": list(model.cfg.img_size),
        "top1": res["top1"],
        "top5": res["top5"],
        "loss": res["loss"],
    }


def finetune(args: argparse.Namespace, out: str) -> tuple[dict, float]:
    """Run `vitkit finetune` from the run at the new size; (its JSON summary, wall seconds)."""
    from vitkit.train.runfiles import read_config

    data = read_config(args.run).data
    cmd = [sys.executable, "-m", "vitkit", "finetune", "--from", args.run, "--img-size", str(args.img_size)]
    cmd += [
        "--recipe",
        args.recipe,
        "--dataset",
        data.dataset,
        "--out",
        out,
        "--overwrite",
        "--no-progress",
        "--json",
    ]
    if data.data_dir:
        cmd += ["--data-dir", data.data_dir]
    if data.dataset == "synthetic":
        cmd += ["--set", f"data.synthetic_size={data.synthetic_size}"]
    for flag in ("steps", "batch_size", "lr", "device", "threads", "precision", "resample"):
        value = getattr(args, flag)
        if value is not None:
            cmd += [f"--{flag.replace('_', '-')}", str(value)]
    for item in args.set or []:
        cmd += ["--set", item]
    print("$", " ".join(cmd), flush=True)
    t0 = time.time()
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        sys.exit(f"vitkit finetune failed (exit {proc.returncode})")
    return json.loads(proc.stdout), time.time() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "run", help="run folder of a ViT trained at its native resolution (e.g. Fashion-MNIST, 28 px)"
    )
    p.add_argument("--img-size", type=int, default=56, help="the higher resolution (default 56)")
    p.add_argument("--recipe", default="finetune-small")
    p.add_argument(
        "--resample", choices=["official", "bicubic"], default="official", help="position embedding"
    )
    p.add_argument("--out", help="fine-tuning run folder (default: RUN-ft<SIZE>)")
    p.add_argument("--steps", type=int, help="fine-tuning steps (default: the recipe's)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--device", help="auto, cpu, cuda (evaluation and fine-tuning)")
    p.add_argument("--precision", choices=["fp32", "bf16"])
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="passed to vitkit finetune")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device_name = args.device or "auto"
    device = torch.device(
        "cuda" if device_name == "auto" and torch.cuda.is_available() else device_name.replace("auto", "cpu")
    )
    out = args.out or f"{args.run.rstrip('/')}-ft{args.img_size}"

    native = evaluate_run(args.run, None, device)
    moved = evaluate_run(args.run, args.img_size, device, args.resample)
    summary, wall = finetune(args, out)
    tuned = evaluate_run(out, None, device)

    rows = [
        (f"trained at {native['img_size'][0]} px", native),
        (f"moved to {args.img_size} px ({args.resample} posemb resampling), no fine-tuning", moved),
        (f"after vitkit finetune ({summary['steps']} steps, {wall:.0f} s)", tuned),
    ]
    print(f"\n{'setting':<62} {'px':>4} {'top-1':>8} {'top-5':>8} {'loss':>8}")
    for name, r in rows:
        print(f"{name:<62} {r['img_size'][0]:>4} {r['top1']:>8.2%} {r['top5']:>8.2%} {r['loss']:>8.4f}")
    checks = {
        "moved >= 85% before fine-tuning": moved["top1"] >= 0.85,
        f"fine-tuned at {args.img_size} px beats {native['img_size'][0]} px": tuned["top1"] > native["top1"],
    }
    for name, ok in checks.items():
        print(f"{'PASS' if ok else 'FAIL'}  {name}")
    print("\nfor bench/RESULTS.md:")
    print("| setting | px | test top-1 | test loss |\n|---|---:|---:|---:|")
    for name, r in rows:
        print(f"| {name} | {r['img_size'][0]} | {r['top1']:.2%} | {r['loss']:.4f} |")
    if args.json:
        record = {
            "run": args.run,
            "finetune_run": out,
            "native": native,
            "moved": moved,
            "finetuned": tuned,
            "finetune_steps": summary["steps"],
            "finetune_wall_s": wall,
            "checks": checks,
            "device": str(device),
            "threads": torch.get_num_threads(),
        }
        with open(args.json, "w") as f:
            json.dump(record, f, indent=2)
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
