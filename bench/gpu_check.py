"""All GPU checks in one call (run by bench/gpu.sh on a lent GPU machine), within a time budget.

1. probe: seconds per training step of each Fashion-MNIST candidate with the real training loop;
2. fashion-mnist-best candidates, trained side by side on the one GPU, epochs sized from the probe;
3. the fashion-mnist-gpu recipe alone, wall-clock timed (target: >= 94% in <= 60 s);
4. ViT-B/16 bf16 at 224 px, batch 256: training step and inference, vitkit vs timm (compiled and eager).
Results go to $OUT/results.json (rewritten after each phase), logs to $OUT/log.txt.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

OUT = os.environ.get("OUT", "gpu_out")
T0 = time.time()
RESULTS: dict = {"phases": {}}


def log(msg: str) -> None:
    line = f"[{time.time() - T0:6.1f}s] {msg}"
    print(line, flush=True)
    with open(os.path.join(OUT, "log.txt"), "a") as f:
        f.write(line + "\n")


def save() -> None:
    with open(os.path.join(OUT, "results.json"), "w") as f:
        json.dump(RESULTS, f, indent=1)


def left(deadline: float) -> float:
    return deadline - time.time()


# candidates: recipe + overrides
BEST = {
    "fashion-mnist-best": ("fashion-mnist-best", []),
    "best-p2-d192": (
        "fashion-mnist-best",
        [
            "model.patch_size=2",
            "model.embed_dim=192",
            "model.num_heads=6",
            "model.mlp_dim=384",
            "model.depth=6",
        ],
    ),
}
FAST = ("fashion-mnist-gpu", [])


SMOKE_SETS: list[str] = []  # --smoke: tiny batches and depth so the script runs through on a CPU
DEVICE = "cuda"


def probe(data_dir: str, steps: int = 20) -> dict:
    """Seconds per optimizer step and per epoch of each candidate, alone on the GPU."""
    import torch

    from vitkit.config import apply_overrides
    from vitkit.data.datasets import load_dataset
    from vitkit.recipes import get_recipe
    from vitkit.train.distributed import DistInfo
    from vitkit.train.loop import resolve_for_data
    from vitkit.train.trainer import Trainer

    out = {}
    splits = None
    for name, (recipe, sets) in {**BEST, "fast": FAST}.items():
        cfg = apply_overrides(get_recipe(recipe), [f"data.data_dir={data_dir}", *sets, *SMOKE_SETS])
        splits = splits or load_dataset(cfg.data)
        cfg = resolve_for_data(cfg, splits)
        dev = torch.device(DEVICE)
        tr = Trainer(cfg, None, splits, DistInfo(), dev)
        sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
        for _ in range(5):
            tr.train_step()
        sync()
        t = time.perf_counter()
        for _ in range(steps):
            tr.train_step()
        sync()
        s_step = (time.perf_counter() - t) / steps
        t = time.perf_counter()
        tr.evaluate()
        s_eval = time.perf_counter() - t
        out[name] = {
            "s_step": s_step,
            "s_epoch": s_step * tr.spe,
            "s_eval": s_eval,
            "img_s": cfg.train.batch_size / s_step,
        }
        log(f"probe {name}: {s_step * 1e3:.1f} ms/step, {s_step * tr.spe:.2f} s/epoch, eval {s_eval:.2f} s")
        del tr
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    return out


def train_cmd(
    recipe: str, sets: list[str], epochs: int, out_dir: str, data_dir: str, seed: int = 0
) -> list[str]:
    length = ["--steps", "3"] if SMOKE_SETS else ["--epochs", str(epochs)]
    cmd = [
        sys.executable,
        "-m",
        "vitkit",
        "train",
        "--recipe",
        recipe,
        *length,
        "--device",
        DEVICE,
        "--data-dir",
        data_dir,
        "--out",
        out_dir,
        "--no-progress",
        "--no-report",
        "--overwrite",
        "--seed",
        str(seed),
    ]
    for s in [*sets, *SMOKE_SETS]:
        cmd += ["--set", s]
    return cmd


def collect(name: str, out_dir: str, wall: float, rc: int, stderr: str) -> dict:
    res = {"rc": rc, "wall_s": wall}
    path = os.path.join(out_dir, "summary.json")
    if os.path.exists(path):
        with open(path) as f:
            summ = json.load(f)
        res.update(
            {
                k: summ.get(k)
                for k in (
                    "test_top1",
                    "raw_test_top1",
                    "best_test_top1",
                    "epochs",
                    "steps",
                    "train_seconds",
                    "train_img_s",
                    "weights",
                    "test_top5",
                )
            }
        )
    else:
        res["stderr_tail"] = stderr[-1500:]
    metrics = os.path.join(out_dir, "metrics.jsonl")
    if os.path.exists(metrics):
        with open(metrics) as f:
            evals = [json.loads(line) for line in f if '"split"' in line]
        res["evals"] = [(round(e["epoch"], 1), e["top1"], e.get("ema_top1")) for e in evals]
    log(f"{name}: rc={rc} wall={wall:.0f}s top1={res.get('test_top1')} raw={res.get('raw_test_top1')}")
    return res


def run_parallel(jobs: dict[str, list[str]], timeout: float) -> dict[str, tuple[int, float, str]]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    procs = {
        n: (
            subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env),
            time.time(),
        )
        for n, c in jobs.items()
    }
    done = {}
    for n, (p, t) in procs.items():
        try:
            _, err = p.communicate(timeout=max(timeout - (time.time() - t), 1))
        except subprocess.TimeoutExpired:
            p.kill()
            _, err = p.communicate()
        done[n] = (p.returncode, time.time() - t, err or "")
    return done


def bench(args: list[str], timeout: float) -> dict:
    cmd = [sys.executable, "-m", "vitkit", "bench", *args, "--json"]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f}s"}
    if r.returncode != 0:
        return {"error": r.stderr[-1500:]}
    res = json.loads(r.stdout.strip().splitlines()[-1])
    log(
        f"bench {' '.join(args)}: vitkit {res['vitkit_img_s']:.0f} img/s, timm {res.get('timm_img_s') or 0:.0f}, "
        f"ratio {res.get('ratio') or 0:.3f}, mfu {res.get('vitkit_mfu') or 0:.1%}"
    )
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-dir", default=".gpu-data")
    ap.add_argument("--budget", type=float, default=400, help="seconds for everything")
    ap.add_argument("--best-budget", type=float, default=190, help="seconds for the side-by-side best runs")
    ap.add_argument("--fast-target", type=float, default=52, help="training seconds aimed at by the fast run")
    ap.add_argument("--best-epochs", type=int, default=0, help="epochs of the best runs (0: fit the budget)")
    ap.add_argument("--smoke", action="store_true", help="tiny settings, to check the script on a CPU")
    a = ap.parse_args()
    global DEVICE
    if a.smoke:
        DEVICE = "cpu"
        SMOKE_SETS.extend(["train.batch_size=32", "model.depth=1", "train.eval_batch_size=2048"])
    os.makedirs(OUT, exist_ok=True)
    deadline = T0 + a.budget
    import torch

    RESULTS["env"] = {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
    }
    log(f"env {RESULTS['env']}")
    runs = os.path.join("/tmp", "vitkit-gpu-runs")

    # 1. probe
    RESULTS["phases"]["probe"] = pr = probe(a.data_dir, steps=3 if a.smoke else 20)
    save()

    # 2. best candidates side by side (the GPU is far from full with one small model)
    share = 1.0 + 0.45 * (len(BEST) - 1)  # slowdown when sharing the GPU (estimate)
    jobs, epochs = {}, {}
    for name, (recipe, sets) in BEST.items():
        per_epoch = pr[name]["s_epoch"] * share + pr[name]["s_eval"]
        fit = max(10, min(200, int(a.best_budget / per_epoch)))
        epochs[name] = 1 if a.smoke else (a.best_epochs or fit)
        jobs[name] = train_cmd(recipe, sets, epochs[name], f"{runs}/{name}", a.data_dir)
    log(f"best runs: epochs {epochs}")
    done = run_parallel(jobs, timeout=min(a.best_budget * 1.5, left(deadline) - 100))
    RESULTS["phases"]["best"] = {
        n: collect(n, f"{runs}/{n}", d[1], d[0], d[2]) | {"epochs_asked": epochs[n], "overrides": BEST[n][1]}
        for n, d in done.items()
    }
    save()

    # 3. the fast recipe alone, wall-clock timed (process start and data load included)
    if left(deadline) > 90:
        per_epoch = pr["fast"]["s_epoch"]
        ep = 1 if a.smoke else max(5, int((a.fast_target - 6) / (per_epoch * 1.05)))
        done = run_parallel({"fast": train_cmd(*FAST, ep, f"{runs}/fast", a.data_dir)}, timeout=120)
        RESULTS["phases"]["fast"] = collect(
            "fast", f"{runs}/fast", done["fast"][1], done["fast"][0], done["fast"][2]
        ) | {"epochs_asked": ep}
        save()

    # 4. ViT-B/16 bf16 224 px batch 256: training step (compiled, as the issue asks) and inference
    model = ["--model", "ViT-Ti/16", "--img-size", "32"] if a.smoke else ["--model", "ViT-B/16"]
    common = [*model, "--device", DEVICE, "--dtype", "bf16", "--compare", "timm", "--repeats", "3"]
    bs = ["--batch-size", "8" if a.smoke else "256"]
    plan = [
        ("train_compiled", [*common, *bs, "--mode", "train", "--compile", "--min-seconds", "1"], 200),
        ("infer_eager", [*common, *bs, "--mode", "infer", "--min-seconds", "1"], 50),
        ("train_eager", [*common, *bs, "--mode", "train", "--min-seconds", "1"], 60),
        ("infer_compiled", [*common, *bs, "--mode", "infer", "--compile", "--min-seconds", "1"], 120),
    ]
    RESULTS["phases"]["vit_b16"] = b16 = {}
    for name, args, need in plan:
        if left(deadline) < need * 0.6:
            b16[name] = {"skipped": f"{left(deadline):.0f}s left"}
            continue
        b16[name] = bench(args, timeout=min(need, left(deadline) - 5))
        save()
    log("done")
    save()


if __name__ == "__main__":
    main()
