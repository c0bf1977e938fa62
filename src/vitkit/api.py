"""The public `create_model`: random weights, or pretrained ones from any supported checkpoint."""

from __future__ import annotations

from typing import Any

import torch

from vitkit.convert import Checkpoint, model_from_source
from vitkit.convert.hub import default_pretrained
from vitkit.convert.sources import Source
from vitkit.models import Model
from vitkit.models import create_model as create_random_model


def create_model(
    name: str | None = None,
    pretrained: bool | Source | Checkpoint | None = None,
    *,
    device: str | torch.device | None = None,
    **kwargs: Any,
) -> Model:
    """Build variant `name` (e.g. "ViT-B/16", "BiT-R50x1", "SASA-ResNet-26"); with `pretrained`, load weights.

    Without `pretrained` (None or False) the model has random weights (as `vitkit.models.create_model`).
    `pretrained=True` loads the variant's default weights from the Hugging Face hub (`DEFAULT_PRETRAINED` in
    `vitkit.convert.hub`: the paper's ImageNet-21k -> 1k checkpoints for ViT-B/16, L/16 and L/32, its
    ImageNet-21k ViT-H/14 without a head, timm's for the others). A path, run folder, hub id, Checkpoint, state
    dict or model in memory loads that one. With weights, the config is
    the checkpoint's (width, depth, heads, patch, pooling, eps, pre-logits, classes, image size), `name` may fix
    the architecture, and keyword arguments override any ModelConfig field: `img_size` resamples the position
    embedding, a different `num_classes` replaces the head (zero-initialised, pre-logits dropped). Loader options
    `strict`, `resample` ("official" | "bicubic"), `reset_head` and `num_heads` pass through to
    `vitkit.convert.model_from_source`. Pretrained models are returned in eval mode.
    """
    if pretrained is True:
        pretrained = default_pretrained(name)
    if pretrained is None or pretrained is False:
        if name is None:
            raise ValueError("create_model needs a model name such as 'ViT-B/16', or pretrained=<checkpoint>")
        return create_random_model(name, device=device, **kwargs)
    return model_from_source(pretrained, name, device=device, **kwargs)
