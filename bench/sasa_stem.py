"""SASA-ResNet's two stems beside each other: the conv stem and the paper's attention stem, one process, timed
alternately (training step: forward, backward, AdamW; or inference).

    python bench/sasa_stem.py                     # SASA-ResNet-26, 28x28 grey, batch 64, training
    python bench/sasa_stem.py --img-size 224 --in-chans 3 --batch-size 8 --mode infer

Prints img/s per round and the median for each stem, their ratio, and the analytic GFLOPs per image.
"""

from __future__ import annotations

import argparse

import torch

from vitkit.models import build_model, forward_macs, model_config
from vitkit.perf.benchmark import infer_step, time_alternately, train_step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="SASA-ResNet-26")
    p.add_argument("--img-size", type=int, default=28)
    p.add_argument("--in-chans", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--mode", choices=["train", "infer"], default="train")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    kw = dict(img_size=args.img_size, in_chans=args.in_chans, num_classes=10)
    x = torch.randn(args.batch_size, args.in_chans, args.img_size, args.img_size)
    y = torch.randint(0, 10, (args.batch_size,))
    runners, flops = {}, {}
    for stem in ("conv", "attention"):
        cfg = model_config(args.model, sasa_stem=stem, **kw)
        torch.manual_seed(0)
        model = build_model(cfg).train(args.mode == "train")
        runners[stem] = (
            train_step(model, x, y, "fp32") if args.mode == "train" else infer_step(model, x, "fp32")
        )
        flops[stem] = 2 * forward_macs(cfg) / 1e9
    timings = time_alternately(runners, torch.device("cpu"), args.batch_size, 2, args.repeats, 1.0)
    print(
        f"{args.model} {args.img_size}px x{args.in_chans} batch {args.batch_size} {args.mode}, {args.threads} threads"
    )
    med = {}
    for stem, t in timings.items():
        med[stem] = t.summary()["median"]
        rounds = " ".join(f"{r:.1f}" for r in t.img_s)
        print(
            f"{stem:>9} stem: {med[stem]:8.1f} img/s median ({rounds}); {flops[stem]:.3f} GFLOPs/img forward"
        )
    print(f"attention / conv: {med['attention'] / med['conv']:.3f}")


if __name__ == "__main__":
    main()
