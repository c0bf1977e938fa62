"""A trained run exported to timm and transformers, each scored on the test set by the peer alone: its loader
reads the exported folder and its own preprocessing (timm's transforms from the exported pretrained_cfg,
transformers' image processor from preprocessor_config.json) turns the test images, as PIL images, into inputs.

python bench/peer_export.py runs/fashion-mnist [--limit N] [--json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import torch

from vitkit.cli.common import load_run
from vitkit.convert.peers import load_peer, save_peer_folder
from vitkit.data.datasets import load_dataset
from vitkit.data.transforms import BatchTransform
from vitkit.eval.evaluate import evaluate


def _pil(images: torch.Tensor) -> list:
    """uint8 (N, C, H, W) -> PIL images (grey or RGB)."""
    from PIL import Image

    arr = images.permute(0, 2, 3, 1).numpy()
    return [Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a) for a in arr]


def _timm_inputs(peer, images: list) -> torch.Tensor:
    import timm.data

    tf = timm.data.create_transform(**timm.data.resolve_data_config({}, model=peer))
    return torch.stack([tf(im) for im in images])


def _hf_inputs(folder: str, images: list) -> torch.Tensor:
    from transformers import AutoImageProcessor

    return AutoImageProcessor.from_pretrained(folder)(images, return_tensors="pt")["pixel_values"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("run")
    ap.add_argument("--limit", type=int, help="the first N test images (default: all)")
    ap.add_argument("--batch-size", type=int, default=500)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    run = load_run(a.run)
    splits = load_dataset(run.cfg.data, img_size=run.cfg.model.img_size)
    test = splits.test
    n = min(a.limit or len(test), len(test))
    images, labels = test.images[:n], test.labels[:n]
    tf = BatchTransform(run.cfg.data, run.cfg.model.img_size, tuple(run.data["mean"]), tuple(run.data["std"]))
    dev = torch.device("cpu")
    with torch.inference_mode():
        ref = torch.cat([run.model(tf.eval(images[i : i + a.batch_size])) for i in range(0, n, a.batch_size)])
    rows = [{"library": "vitkit", "top1": float((ref.argmax(-1) == labels).float().mean()), "agree": 1.0,
             "max_logit_diff": 0.0, "seconds": 0.0}]  # fmt: skip
    full = (
        evaluate(run.model, test, tf.eval, num_classes=splits.num_classes, device=dev)
        if n == len(test)
        else None
    )
    meta = {"classes": run.data["classes"], "mean": run.data["mean"], "std": run.data["std"]}
    pil = _pil(images)
    with tempfile.TemporaryDirectory() as tmp:
        for fmt, lib in (("timm", "timm"), ("hf", "transformers")):
            folder = f"{tmp}/{fmt}"
            save_peer_folder(folder, fmt, run.model, meta)
            t0 = time.perf_counter()
            peer = load_peer(folder, fmt)
            logits = []
            for i in range(0, n, a.batch_size):
                batch = pil[i : i + a.batch_size]
                x = _timm_inputs(peer, batch) if fmt == "timm" else _hf_inputs(folder, batch)
                with torch.inference_mode():
                    out = peer(x)
                logits.append(out.logits if hasattr(out, "logits") else out)
            logits = torch.cat(logits)
            rows.append({
                "library": lib,
                "top1": float((logits.argmax(-1) == labels).float().mean()),
                "agree": float((logits.argmax(-1) == ref.argmax(-1)).float().mean()),
                "max_logit_diff": float((logits - ref).abs().max()),
                "seconds": time.perf_counter() - t0,
            })  # fmt: skip
    if a.json:
        print(json.dumps({"run": a.run, "images": n, "rows": rows}))
        return 0
    line = f"{a.run}: {n} test images"
    if full:
        line += f" (vitkit eval: {full['top1']:.2%})"
    print(line)
    print(
        f"{'library':<13} {'top-1':>8} {'same top-1 as vitkit':>21} {'max |logit diff|':>17} {'seconds':>8}"
    )
    for r in rows:
        print(f"{r['library']:<13} {r['top1']:>8.2%} {r['agree']:>21.2%} {r['max_logit_diff']:>17.2e} "
              f"{r['seconds']:>8.1f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
