"""`vitkit models`: the registry as a table."""

from __future__ import annotations

import argparse
import json
import logging

from vitkit.cli.common import positive_int
from vitkit.config import CNN_READS, bit_depth
from vitkit.models import count_params, forward_macs, list_models
from vitkit.models.registry import registered_config
from vitkit.models.resnet import STAGE_WIDTHS

log = logging.getLogger(__name__)


def model_table(img_size: int | None = None, skipped: list[str] | None = None) -> list[dict]:
    """Rows of the registry: variant, width/depth/heads/MLP, params, GMACs and GFLOPs per image. At an
    `img_size` that a variant's patches (token stride) do not divide, the variant is left out (its name appended
    to `skipped`)."""
    rows = []
    for name in list_models():
        try:
            cfg = registered_config(name, **({"img_size": img_size} if img_size else {}))
        except ValueError:
            if img_size is None:
                raise
            if skipped is not None:
                skipped.append(name)
            continue
        macs = forward_macs(cfg)
        cnn = cfg.arch != "vit"  # a ResNet: its output channels and conv layers; heads if it attends; no MLP
        rows.append(
            dict(
                model=name,
                arch=cfg.arch,
                img_size=list(cfg.img_size),
                in_chans=cfg.in_chans,
                classes=cfg.num_classes,
                width=STAGE_WIDTHS[len(cfg.backbone) - 1] * cfg.width_factor if cnn else cfg.embed_dim,
                depth=bit_depth(cfg.backbone) if cnn else cfg.depth,
                heads=cfg.num_heads if cfg.arch in CNN_READS or not cnn else None,
                mlp=None if cnn else cfg.mlp_dim,
                params=count_params(cfg),
                gmacs=macs / 1e9,
                gflops=2 * macs / 1e9,
            )
        )
    return rows


def cmd_models(args: argparse.Namespace) -> int:
    skipped: list[str] = []
    rows = model_table(args.img_size, skipped)
    if skipped:
        log.warning("not at %d px (its patches do not divide it): %s", args.img_size, ", ".join(skipped))
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    head = (
        f"{'model':<15} {'img':>4} {'width':>5} {'depth':>5} {'heads':>5} {'mlp':>5} {'params':>13} "
        f"{'GMACs':>8} {'GFLOPs':>8}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        print(
            f"{r['model']:<15} {r['img_size'][0]:>4} {r['width']:>5} {r['depth']:>5} {r['heads'] or '-':>5} "
            f"{r['mlp'] or '-':>5} {r['params']:>13,} {r['gmacs']:>8.2f} {r['gflops']:>8.2f}"
        )
    print(
        "\nGFLOPs = 2 x MACs of one forward pass of one image; /4 variants and the -26 CNNs: 28x28 grayscale, "
        "10 classes."
    )
    print("Any ViT-{Ti,S,B,L,H}/<patch> is accepted, at any image size divisible by the patch; hybrids")
    print(
        "R50|R26|R+ViT-<size>/<stride> (a BiT ResNet's feature map as the patches) at multiples of the stride."
    )
    print(
        "BiT-R{26,50,101,152}x<width>: the paper's CNN baseline (BiT ResNet-v2; width = output channels, depth ="
        " conv layers) at any size."
    )
    print(
        "ResNet-{26,38,50,101,152} (batch norm), SASA-ResNet-<depth> (stand-alone local self-attention for each 3x3"
        " conv) and AA-ResNet-<depth> (attention-augmented 3x3 convs, last three stages): the attention baselines."
    )
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser(
        "models",
        help="list the registered model variants with params and FLOPs",
        description="The registered variants (ViT-Ti/S/B/L/H, hybrids, the CNN baselines) with their setting, "
        "parameters and forward GFLOPs; any ViT-<size>/<patch> is accepted beyond those listed.",
    )
    p.add_argument("--img-size", type=positive_int, default=None, help="show every variant at this size")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_models)
