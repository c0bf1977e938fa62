"""Weight initialisations: the official code's LeCun normal, and structured ones of the attention weights."""

from __future__ import annotations

import math

import torch
from torch import nn


def lecun_normal_(t: torch.Tensor) -> torch.Tensor:
    """Truncated normal with variance 1/fan_in (the official code's patch-embedding init)."""
    fan_in = t[0].numel()
    std = math.sqrt(1.0 / fan_in) / 0.87962566103423978  # undo the truncation's shrinkage
    return nn.init.trunc_normal_(t, std=std, a=-2 * std, b=2 * std)


def _factor(target: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two (d, rank) matrices A, B with A @ B.T the best rank-`rank` approximation of `target` (d, d)."""
    u, s, vh = torch.linalg.svd(target)
    root = s[:rank].sqrt()
    return u[:, :rank] * root, vh[:rank].T * root  # (d, rank) each


@torch.no_grad()
def mimetic_init_(
    qkv: torch.nn.Linear,
    proj: torch.nn.Linear,
    num_heads: int,
    qk: tuple[float, float] = (0.7, 0.7),
    vo: tuple[float, float] = (0.4, 0.4),
    generator: torch.Generator | None = None,
) -> None:
    """Mimetic initialisation (Trockman & Kolter, ICML 2023) of one attention layer, in place.

    Each head's query/key product `W_q^T W_k` is set to the best rank-head_dim approximation of
    `a Z + b I` with `(a, b) = qk` and Z ~ N(0, 1/d), so that a token attends to tokens like itself (with a smooth
    position embedding: its neighbours); the value/output product `W_proj W_v` is `a Z - b I` with `(a, b) = vo`.
    Biases are left as they are. The architecture is the paper's: only the starting point differs.
    """
    d = proj.in_features
    if d % num_heads or qkv.in_features != d or qkv.out_features != 3 * d or proj.out_features != d:
        raise ValueError(
            f"mimetic init needs qkv: Linear({d}, {3 * d}) and proj: Linear({d}, {d}) with {d} divisible by "
            f"num_heads={num_heads}; got qkv {tuple(qkv.weight.shape)}, proj {tuple(proj.weight.shape)}"
        )
    hd = d // num_heads
    w = qkv.weight  # (3d, d): rows of q, k, v; x @ w.T
    dtype = w.dtype

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator, dtype=torch.float64) / d**0.5

    eye = torch.eye(d, dtype=torch.float64)
    for h in range(num_heads):
        a, b = _factor(qk[0] * randn(d, d) + qk[1] * eye, hd)  # W_q^T W_k = a @ b.T
        w[h * hd : (h + 1) * hd].copy_(a.T.to(dtype))
        w[d + h * hd : d + (h + 1) * hd].copy_(b.T.to(dtype))
    a, b = _factor(vo[0] * randn(d, d) - vo[1] * eye, d)  # (W_proj W_v)^T = W_v^T W_proj^T = a @ b.T
    w[2 * d :].copy_(a.T.to(dtype))  # W_v = a.T
    proj.weight.copy_(b.to(dtype))  # W_proj = b
