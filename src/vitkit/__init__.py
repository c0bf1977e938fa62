"""vitkit: Vision Transformers for image classification, as in Dosovitskiy et al. (2020)."""

from __future__ import annotations

from vitkit.api import create_model
from vitkit.config import ModelConfig, RunConfig
from vitkit.convert import load_pretrained, model_from_source, read_checkpoint
from vitkit.models import (
    BiTResNet,
    ResNetV1,
    VisionTransformer,
    build_model,
    count_params,
    forward_macs,
    list_models,
    model_config,
    resample_posemb,
)
from vitkit.perf.fast import fast_inference

__version__ = "0.1.0"

__all__ = [
    "BiTResNet",
    "ModelConfig",
    "ResNetV1",
    "RunConfig",
    "VisionTransformer",
    "build_model",
    "count_params",
    "create_model",
    "fast_inference",
    "forward_macs",
    "list_models",
    "load_pretrained",
    "model_config",
    "model_from_source",
    "read_checkpoint",
    "resample_posemb",
]
