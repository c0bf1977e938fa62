"""ViT models: the registry of variants, the model, its blocks and position embeddings; the BiT baseline."""

from __future__ import annotations

from typing import Any

import torch

from vitkit.config import ModelConfig
from vitkit.models.bit import BiTResNet
from vitkit.models.layers import Attention, Block, DropPath, Mlp, PatchEmbed
from vitkit.models.posemb import resample_posemb, sincos2d
from vitkit.models.registry import count_params, forward_macs, list_models, model_config, parse_name
from vitkit.models.vit import VisionTransformer


def build_model(cfg: ModelConfig, *, weights_follow: bool = False) -> VisionTransformer | BiTResNet:
    """A model from a full ModelConfig; `weights_follow=True` skips the costly structured init (`attn_init`)."""
    cls = BiTResNet if cfg.arch == "bit" else VisionTransformer
    return cls(cfg, weights_follow=weights_follow)


def create_model(
    name: str,
    *,
    num_classes: int = 1000,
    img_size: int | tuple[int, int] = 224,
    in_chans: int = 3,
    device: str | torch.device | None = None,
    **overrides: Any,
) -> VisionTransformer | BiTResNet:
    """Build variant `name` (e.g. "ViT-B/16", "BiT-R50x1") with random weights; overrides are ModelConfig fields."""
    cfg = model_config(name, num_classes=num_classes, img_size=img_size, in_chans=in_chans, **overrides)
    if device is not None:
        with torch.device(device):
            return build_model(cfg)
    return build_model(cfg)


__all__ = [
    "Attention",
    "BiTResNet",
    "Block",
    "DropPath",
    "Mlp",
    "ModelConfig",
    "PatchEmbed",
    "VisionTransformer",
    "build_model",
    "count_params",
    "create_model",
    "forward_macs",
    "list_models",
    "model_config",
    "parse_name",
    "resample_posemb",
    "sincos2d",
]
