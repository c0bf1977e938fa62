"""Parameter groups (no weight decay on biases, norms, position embedding, class token) and optimizers."""

from __future__ import annotations

import torch
from torch import nn

from vitkit.config import OptimConfig


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: decayed weight matrices, and everything 1-D or named by `model.no_weight_decay()`."""
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim <= 1 or name in skip or name.endswith(".bias"):
            no_decay.append(p)
        else:
            decay.append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def decay_names(model: nn.Module) -> tuple[list[str], list[str]]:
    """Names in the decayed and non-decayed groups (for tests and logs)."""
    ids = {id(p): n for n, p in model.named_parameters()}
    groups = param_groups(model, 1.0)
    return [ids[id(p)] for p in groups[0]["params"]], [ids[id(p)] for p in groups[1]["params"]]


def build_optimizer(
    model: nn.Module, cfg: OptimConfig, device: torch.device, fused: bool = True
) -> torch.optim.Optimizer:
    """Adam/AdamW (decoupled weight decay, as the official code) or SGD+momentum; fused where supported."""
    groups = param_groups(model, cfg.weight_decay)
    if cfg.name in ("adam", "adamw"):
        kw = {"fused": True} if fused and device.type in ("cuda", "cpu") else {}
        try:
            return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, **kw)
        except (RuntimeError, TypeError):
            return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=False)
