"""ViT models: the registry of variants, the model, its blocks and position embeddings; the CNN baselines (BiT,
ResNet, SASA, AA)."""

from __future__ import annotations

from typing import Any

import torch

from vitkit.config import ModelConfig
from vitkit.models.bit import BiTResNet
from vitkit.models.cnn import CNNClassifier
from vitkit.models.layers import Attention, Block, DropPath, Mlp, PatchEmbed
from vitkit.models.posemb import resample_posemb, sincos2d
from vitkit.models.registry import (
    count_params,
    executed_macs,
    forward_macs,
    list_models,
    model_config,
    parse_name,
    registered_setting,
)
from vitkit.models.resnet_v1 import ResNetV1
from vitkit.models.vit import VisionTransformer

Model = VisionTransformer | BiTResNet | ResNetV1
CNN = CNNClassifier  # the baselines (BiTResNet, ResNetV1): images in, logits out, no tokens


def build_model(cfg: ModelConfig, *, weights_follow: bool = False) -> Model:
    """A model from a full ModelConfig; `weights_follow=True` skips the costly structured init (`attn_init`)."""
    cls = {"vit": VisionTransformer, "bit": BiTResNet}.get(cfg.arch, ResNetV1)
    return cls(cfg, weights_follow=weights_follow)


def create_model(
    name: str,
    *,
    num_classes: int | None = None,
    img_size: int | tuple[int, int] | None = None,
    in_chans: int | None = None,
    device: str | torch.device | None = None,
    **overrides: Any,
) -> Model:
    """Build variant `name` (e.g. "ViT-B/16", "BiT-R50x1", "SASA-ResNet-26") with random weights; overrides are
    ModelConfig fields. Classes, image size and channels not given are those `vitkit models` lists the variant
    with (the small-image variants: 10 classes of 28x28 grey images), else 1000, 224 and 3."""
    given = {"num_classes": num_classes, "img_size": img_size, "in_chans": in_chans}
    setting = {"num_classes": 1000, "img_size": 224, "in_chans": 3} | registered_setting(name)
    setting |= {k: v for k, v in given.items() if v is not None}
    cfg = model_config(name, **setting, **overrides)
    if device is not None:
        with torch.device(device):
            return build_model(cfg)
    return build_model(cfg)


__all__ = [
    "CNN",
    "Attention",
    "BiTResNet",
    "Block",
    "DropPath",
    "Mlp",
    "Model",
    "ModelConfig",
    "PatchEmbed",
    "ResNetV1",
    "VisionTransformer",
    "build_model",
    "count_params",
    "create_model",
    "executed_macs",
    "forward_macs",
    "list_models",
    "model_config",
    "parse_name",
    "resample_posemb",
    "sincos2d",
]
