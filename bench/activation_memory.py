"""Activation memory with and without activation checkpointing (`model.set_grad_checkpointing()`).

    python bench/activation_memory.py                       # ViT-S/16, ViT-B/16, ViT-L/16; batch 8, 224 px
    python bench/activation_memory.py --models ViT-B/16 --batch-size 32 --time
    python bench/activation_memory.py --models ResNet-50 BiT-R50x1 R50+ViT-B/16    # CNNs and the hybrid

Counts the bytes of the distinct tensors the training forward saves for backward (parameters excluded) with
saved-tensor hooks: a device-independent measure of what checkpointing frees (on a GPU the peak also holds one
block's recomputed activations and the gradients). `--time` also times forward + backward both ways, alternately,
in this process (median of 3 rounds), the cost of the recomputation.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import vitkit


def saved_activation_bytes(model: torch.nn.Module, x: torch.Tensor) -> int:
    """Bytes of the distinct non-parameter storages one training forward saves for backward."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    return sum(n for ptr, n in seen.items() if ptr not in params)


def step_seconds(model: torch.nn.Module, x: torch.Tensor) -> float:
    t = time.perf_counter()
    model(x).float().square().mean().backward()
    model.zero_grad(set_to_none=True)
    return time.perf_counter() - t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=["ViT-S/16", "ViT-B/16", "ViT-L/16"])
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--time", action="store_true", help="also time forward + backward both ways")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"batch {args.batch_size}, {args.img_size} px, fp32, {args.threads} threads, torch {torch.__version__}"
    )
    print(
        f"{'model':14} {'saved MB':>9} {'checkpointed MB':>16} {'ratio':>6}"
        + ("  s/step plain  s/step ckpt" * args.time)
    )
    for name in args.models:
        model = vitkit.create_model(name, img_size=args.img_size, in_chans=3, num_classes=1000).train()
        x = torch.randn(args.batch_size, 3, args.img_size, args.img_size)
        sizes = []
        for on in (False, True):
            model.set_grad_checkpointing(on)
            sizes.append(saved_activation_bytes(model, x))
        line = f"{name:14} {sizes[0] / 1e6:9.1f} {sizes[1] / 1e6:16.1f} {sizes[0] / sizes[1]:6.1f}"
        if args.time:
            runs: dict[bool, list[float]] = {False: [], True: []}
            step_seconds(model, x)  # warm-up
            for _ in range(3):
                for on in (False, True):
                    model.set_grad_checkpointing(on)
                    runs[on].append(step_seconds(model, x))
            line += f"  {statistics.median(runs[False]):13.3f} {statistics.median(runs[True]):12.3f}"
        print(line, flush=True)


if __name__ == "__main__":
    main()
