"""The preprocessing a model expects, as timm's `pretrained_cfg` (what `timm.data.resolve_model_data_config`
and timm's transforms read): input size, normalisation, resize and crop."""

from __future__ import annotations

from typing import Any

from vitkit.config import ModelConfig

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # timm's ResNet default


def default_mean_std(cfg: ModelConfig) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Random weights: the official ViT's and BiT's pixels in [-1, 1]; timm's ImageNet statistics for the RGB
    ResNets of the attention baselines."""
    if cfg.arch in ("resnet", "sasa", "aa") and cfg.in_chans == 3:
        return IMAGENET_MEAN, IMAGENET_STD
    return (0.5,) * cfg.in_chans, (0.5,) * cfg.in_chans


def data_config(
    cfg: ModelConfig, first_conv: str, preprocess: dict[str, Any] | None = None
) -> dict[str, Any]:
    """timm's `pretrained_cfg` of a model: the loaded weights' preprocessing (`preprocess`: mean, std, and from
    timm's hub configs crop_pct, interpolation, crop_mode; classes, source) or the defaults, and vitkit's own
    resize: shorter side to the input size (bilinear), centre crop."""
    pre = preprocess or {}
    mean, std = default_mean_std(cfg)
    if pre.get("mean") and pre.get("std"):
        mean, std = tuple(pre["mean"]), tuple(pre["std"])
    out: dict[str, Any] = {
        "architecture": cfg.name,
        "input_size": (cfg.in_chans, *cfg.img_size),
        "interpolation": pre.get("interpolation", "bilinear"),
        "crop_pct": pre.get("crop_pct", 1.0),
        "crop_mode": pre.get("crop_mode", "center"),
        "mean": mean,
        "std": std,
        "num_classes": cfg.num_classes,
        "first_conv": first_conv,
        "classifier": "head" if cfg.arch == "vit" else "head.fc",
    }
    if pre.get("source"):
        out["source"] = pre["source"]
    if pre.get("classes") and len(pre["classes"]) == cfg.num_classes:
        out["label_names"] = tuple(pre["classes"])
    return out
