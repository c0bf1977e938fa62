"""The accuracy cost of the fast inference path on a trained run: test top-1 of eager fp32 vs each fast method;
int8 both in batches of --batch-size and one image at a time (as `vitkit eval --fast` and `predict --fast` run it).

python bench/fast_accuracy.py runs/fashion-mnist [--methods onnx onnx-int8]
"""

from __future__ import annotations

import argparse
import json

import torch

from vitkit.cli.common import load_run
from vitkit.data.datasets import load_dataset
from vitkit.data.transforms import BatchTransform
from vitkit.eval.evaluate import evaluate
from vitkit.perf.fast import OneImageAtATime, fast_inference


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("run")
    ap.add_argument("--methods", nargs="+", default=["onnx", "onnx-int8"])
    ap.add_argument("--batch-size", type=int, default=500)
    ap.add_argument("--threads", type=int)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    run = load_run(a.run)
    splits = load_dataset(run.cfg.data, img_size=run.cfg.model.img_size)
    tf = BatchTransform(run.cfg.data, run.cfg.model.img_size, tuple(run.data["mean"]), tuple(run.data["std"]))
    dev = torch.device("cpu")
    k = splits.num_classes
    ref = evaluate(run.model, splits.test, tf.eval, num_classes=k, device=dev, batch_size=a.batch_size)
    x = tf.eval(splits.test.images[: a.batch_size])
    with torch.inference_mode():
        ref_logits = run.model(x)
    rows = [{"method": "eager fp32", "top1": ref["top1"], "delta_points": 0.0, "max_logit_diff": 0.0}]
    for method in a.methods:
        fn, info = fast_inference(run.model, example=x, method=method)
        ways = [(method, fn)]
        # int8's activations are quantised per call: also one image per call, as eval and predict run it
        if info["dtype"] == "int8":
            ways.append((f"{method} (1 image per call)", OneImageAtATime(fn)))
        for name, f in ways:
            res = evaluate(f, splits.test, tf.eval, num_classes=k, device=dev, batch_size=a.batch_size)
            diff = float((f(x) - ref_logits).abs().max())
            rows.append(
                {
                    "method": name,
                    "top1": res["top1"],
                    "delta_points": 100 * (res["top1"] - ref["top1"]),
                    "max_logit_diff": diff,
                }
            )
    if a.json:
        print(json.dumps({"run": a.run, "rows": rows}))
        return 0
    print(f"{a.run}: {ref['num_samples']} test images, {torch.get_num_threads()} threads")
    print(f"{'method':<28} {'top-1':>8} {'delta (points)':>15} {'max |logit diff|':>17}")
    for r in rows:
        print(f"{r['method']:<28} {r['top1']:>8.2%} {r['delta_points']:>+15.2f} {r['max_logit_diff']:>17.2e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
