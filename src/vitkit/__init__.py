"""vitkit: Vision Transformers for image classification, as in Dosovitskiy et al. (2020)."""

from __future__ import annotations

from vitkit.config import ModelConfig, RunConfig
from vitkit.models import (
    VisionTransformer,
    build_model,
    count_params,
    create_model,
    forward_macs,
    list_models,
    model_config,
    resample_posemb,
)

__version__ = "0.1.0"

__all__ = [
    "ModelConfig",
    "RunConfig",
    "VisionTransformer",
    "build_model",
    "count_params",
    "create_model",
    "forward_macs",
    "list_models",
    "model_config",
    "resample_posemb",
]
