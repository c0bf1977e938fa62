"""Why a ViT trained at 28 px loses accuracy at 56 px: the same run evaluated with each position-embedding
resampling and with the input changes taken apart.

    python bench/transfer_diagnostics.py runs/fashion-mnist [--img-size 56] [--limit 10000]

Rows: the run at its own size; moved with the position embedding resampled bilinearly (the official code's),
bicubically (timm's) and by nearest neighbour (each 2x2 block of patches shares one embedding); the images
upsampled by nearest neighbour instead of bilinearly; and the 28-px model on the centre crop of the upsampled
image (the patch contents of 56 px with the token count of 28 px). Test-set top-1 on the first `--limit` images.
"""

from __future__ import annotations

import argparse
import sys

import torch
import torch.nn.functional as F


def main(argv: list[str] | None = None) -> int:
    from vitkit.convert import model_from_source, read_checkpoint
    from vitkit.data.datasets import load_dataset
    from vitkit.data.transforms import normalize, resize
    from vitkit.train.runfiles import read_config

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", help="run folder of a ViT trained at its native resolution")
    p.add_argument("--img-size", type=int, default=56)
    p.add_argument("--limit", type=int, default=10_000, help="test images used")
    a = p.parse_args(argv)
    cfg, ckpt = read_config(a.run), read_checkpoint(a.run)
    native = model_from_source(ckpt)
    h, w = native.cfg.img_size
    if a.img_size % native.cfg.patch_size or a.img_size < h:
        sys.exit(f"--img-size {a.img_size} must be a multiple of the patch size and at least {h}")
    splits = load_dataset(cfg.data, img_size=(h, w), seed=cfg.train.seed)
    x, y = splits.test.images[: a.limit].float(), splits.test.labels[: a.limit]
    mean, std = tuple(ckpt.meta.get("mean") or splits.mean), tuple(ckpt.meta.get("std") or splits.std)
    size = (a.img_size, a.img_size)
    up = resize(x, size)

    @torch.no_grad()
    def top1(model: torch.nn.Module, images: torch.Tensor) -> float:
        logits = torch.cat([model(normalize(b, mean, std)) for b in images.split(500)])
        return float((logits.argmax(-1) == y).float().mean())

    rows = [(f"trained at {h} px", top1(native, x))]
    if native.cfg.posemb == "sincos2d":  # fixed: laid out on the trained grid, no resampling mode applies
        moved = model_from_source(ckpt, img_size=a.img_size)
        rows.append(
            (f"moved to {a.img_size} px, sin-cos at the trained grid's patch centres", top1(moved, up))
        )
    for resample in ("official", "bicubic") if native.cfg.posemb != "sincos2d" else ():
        moved = model_from_source(ckpt, img_size=a.img_size, resample=resample)
        rows.append((f"moved to {a.img_size} px, posemb {resample}", top1(moved, up)))
    moved = model_from_source(ckpt, img_size=a.img_size)
    if moved.cfg.posemb == "learn":
        k = moved.num_prefix_tokens
        gh, gw = native.cfg.grid_size
        grid = native.pos_embed[:, k:].reshape(1, gh, gw, -1).permute(0, 3, 1, 2)  # (1, D, gh, gw)
        near = F.interpolate(grid, size=moved.cfg.grid_size, mode="nearest").flatten(2).transpose(1, 2)
        moved.pos_embed.data = torch.cat([native.pos_embed[:, :k], near], dim=1)
        rows.append((f"moved to {a.img_size} px, posemb nearest", top1(moved, up)))
        moved = model_from_source(ckpt, img_size=a.img_size)
    rows.append(
        ("moved, images upsampled by nearest", top1(moved, F.interpolate(x, size=size, mode="nearest")))
    )
    top, left = (a.img_size - h) // 2, (a.img_size - w) // 2
    rows.append(
        (
            f"{h}-px model on the centre {h}x{w} of the upsampled image",
            top1(native, up[..., top : top + h, left : left + w]),
        )
    )
    print(f"{a.run}: {len(y)} test images")
    print("| setting | test top-1 |\n|---|---:|")
    for name, acc in rows:
        print(f"| {name} | {acc:.2%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
