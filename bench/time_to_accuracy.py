"""Wall-clock seconds to reach given test accuracies (default 90% and 92%) with a recipe, on this machine.

    python bench/time_to_accuracy.py                       # trains the fashion-mnist recipe into runs/tta
    python bench/time_to_accuracy.py --run runs/fashion-mnist   # reads an existing run's metrics instead
    python bench/time_to_accuracy.py --recipe fashion-mnist-fast --out runs/fashion-mnist-fast   # 90% < 5 min
    python bench/time_to_accuracy.py --recipe fashion-mnist-gpu --device cuda

The test set is evaluated once per epoch, so a time is the end of the first epoch at or above the target.
"training s" excludes evaluation and checkpoints; "since start" is wall time since training began (after
the data is loaded); "process s" adds process start-up and data loading.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time


def first_crossings(metrics_path: str, targets: list[float], offset: float = 0.0) -> list[dict]:
    """For each target, the first evaluation at or above it (or None)."""
    with open(metrics_path) as f:
        evals = [r for r in (json.loads(line) for line in f if line.strip()) if r.get("split") == "test"]
    rows = []
    for target in targets:
        hit = next((r for r in evals if max(r["top1"], r.get("ema_top1") or 0) >= target), None)
        rows.append(
            {
                "target": target,
                "epoch": hit and hit["epoch"],
                "top1": hit and max(hit["top1"], hit.get("ema_top1") or 0),
                "training_s": hit and hit["time"],
                "since_start_s": hit and hit.get("wall"),
                "process_s": hit and hit.get("wall") is not None and hit["wall"] + offset,
            }
        )
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default="fashion-mnist")
    ap.add_argument("--run", help="analyse this existing run folder instead of training")
    ap.add_argument("--out", default="runs/tta")
    ap.add_argument("--targets", type=float, nargs="+", default=[0.90, 0.92])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("train_args", nargs=argparse.REMAINDER, help="after --: more `vitkit train` arguments")
    a = ap.parse_args()
    offset = 0.0
    run = a.run
    if run is None:
        extra = [x for x in a.train_args if x != "--"]
        cmd = [
            sys.executable,
            "-m",
            "vitkit",
            "train",
            "--recipe",
            a.recipe,
            "--out",
            a.out,
            "--overwrite",
            "--no-report",
            "--no-progress",
            *extra,
        ]
        t0 = time.time()
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            print(r.stderr[-3000:], file=sys.stderr)
            return r.returncode
        wall = time.time() - t0
        with open(os.path.join(a.out, "summary.json")) as f:
            summary = json.load(f)
        offset = max(wall - summary["train_seconds"], 0.0)  # an upper bound on start-up and loading
        run = a.out
    rows = first_crossings(os.path.join(run, "metrics.jsonl"), a.targets, offset if a.run is None else 0.0)
    with open(os.path.join(run, "summary.json")) as f:
        summary = json.load(f)
    if a.json:
        print(json.dumps({"run": run, "final_top1": summary["test_top1"], "rows": rows}))
        return 0
    print(
        f"{run}: final test top-1 {summary['test_top1']:.2%} after {summary['epochs']:.0f} epochs "
        f"({summary['train_seconds']:.0f} s training, {summary['threads']} threads, {summary['device']})"
    )
    print(f"{'target':>7} {'epoch':>6} {'top-1':>7} {'training s':>11} {'since start s':>14}")
    for r in rows:
        if r["epoch"] is None:
            print(f"{r['target']:>7.0%} {'not reached':>30}")
        else:
            print(
                f"{r['target']:>7.0%} {r['epoch']:>6.0f} {r['top1']:>7.2%} {r['training_s']:>11.0f} "
                f"{r['since_start_s'] or float('nan'):>14.0f}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
