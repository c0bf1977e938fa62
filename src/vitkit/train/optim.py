"""Parameter groups (no weight decay on biases, norms, position embedding, class token; optionally layer-wise
learning-rate decay) and optimizers."""

from __future__ import annotations

import re

import torch
from torch import nn

from vitkit.config import OptimConfig


def layer_id(name: str, depth: int) -> int:
    """A ViT parameter's layer for layer-wise decay, as BEiT and MAE assign them: 0 for the embeddings (patch
    embedding, a hybrid's ResNet, class token, position embeddings), i + 1 for block i, depth + 1 for the rest
    (final norm, pre-logits, head). timm's differs only for the final norm, which it puts with the last block."""
    if name.startswith(("patch_embed.", "cls_token", "pos_embed")):
        return 0
    m = re.match(r"blocks\.(\d+)\.", name)
    return int(m.group(1)) + 1 if m else depth + 1


def param_groups(model: nn.Module, weight_decay: float, layer_decay: float = 1.0) -> list[dict]:
    """Decayed weight matrices, and everything 1-D or named by `model.no_weight_decay()` without weight decay.

    `layer_decay` < 1 (a ViT's): each of those two groups split by layer, the learning rate of layer l scaled by
    `lr_scale` = layer_decay ** (depth + 1 - l), so the head trains at the full rate and the embeddings slowest.
    """
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    depth = len(model.blocks) if layer_decay < 1 else 0
    groups: dict[tuple[int, bool], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        decayed = not (p.ndim <= 1 or name in skip or name.endswith(".bias"))
        layer = layer_id(name, depth) if layer_decay < 1 else 0
        group = groups.setdefault(
            (layer, decayed), {"params": [], "weight_decay": weight_decay if decayed else 0.0}
        )
        if layer_decay < 1:
            group["lr_scale"] = layer_decay ** (depth + 1 - layer)
        group["params"].append(p)
    if layer_decay >= 1:  # the two groups always, in this order (checkpoints' optimizer state follows it)
        groups.setdefault((0, True), {"params": [], "weight_decay": weight_decay})
        groups.setdefault((0, False), {"params": [], "weight_decay": 0.0})
        return [groups[0, True], groups[0, False]]
    return [groups[k] for k in sorted(groups, key=lambda k: (k[0], not k[1]))]


def decay_names(model: nn.Module) -> tuple[list[str], list[str]]:
    """Names in the decayed and non-decayed groups (for tests and logs)."""
    ids = {id(p): n for n, p in model.named_parameters()}
    groups = param_groups(model, 1.0)
    return [ids[id(p)] for p in groups[0]["params"]], [ids[id(p)] for p in groups[1]["params"]]


def build_optimizer(
    model: nn.Module, cfg: OptimConfig, device: torch.device, fused: bool = True
) -> torch.optim.Optimizer:
    """Adam/AdamW (decoupled weight decay, as the official code) or SGD+momentum; fused where supported."""
    groups = param_groups(model, cfg.weight_decay, cfg.layer_decay)
    if cfg.name in ("adam", "adamw"):
        kw = {"fused": True} if fused and device.type in ("cuda", "cpu") else {}
        try:
            return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, **kw)
        except (RuntimeError, TypeError):
            return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=False)
