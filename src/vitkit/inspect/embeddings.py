"""Principal components of the patch-embedding filters and similarity of the position embeddings."""

from __future__ import annotations

import torch
from torch import nn


def patch_posemb(model: nn.Module) -> torch.Tensor:
    """The position embedding of each patch, row-major over the grid: (gh * gw, D)."""
    cfg = model.cfg
    if cfg.posemb in ("none", "relative"):
        raise ValueError(f"model {cfg.name} has no position embedding per patch (posemb={cfg.posemb!r})")
    if cfg.posemb == "learn":
        pe = model.pos_embed[0, cfg.num_prefix_tokens :]  # (Np, D): the class token's position dropped
    else:
        pe = model._patch_posemb()[0]  # (Np, D)
    gh, gw = cfg.grid_size
    if pe.shape[0] != gh * gw:
        raise ValueError(
            f"position embedding has {pe.shape[0]} patch rows, the {gh}x{gw} grid needs {gh * gw}"
        )
    return pe.detach().float()


def cosine_similarity_grid(pe: torch.Tensor, grid_size: tuple[int, int]) -> torch.Tensor:
    """Cosine similarity of every two rows of (gh * gw, D), as (gh, gw, gh, gw)."""
    gh, gw = grid_size
    unit = torch.nn.functional.normalize(pe.double(), dim=-1)  # (Np, D)
    return (unit @ unit.T).reshape(gh, gw, gh, gw).float()


@torch.no_grad()
def posemb_similarity(model: nn.Module) -> torch.Tensor:
    """Cosine similarity of each patch's position embedding with every other's: (gh, gw, gh, gw).

    `sim[i, j]` is the (gh, gw) map of patch (i, j) against all patches: the paper's Figure 7 (centre).
    """
    return cosine_similarity_grid(patch_posemb(model), model.cfg.grid_size)


def similarity_by_distance(sim: torch.Tensor) -> list[tuple[float, float]]:
    """(distance in patches, mean similarity) over all pairs of patches at each Euclidean distance."""
    gh, gw = sim.shape[:2]
    y, x = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
    pos = torch.stack([y.reshape(-1), x.reshape(-1)], dim=1).double()
    d = torch.cdist(pos, pos).round(decimals=6).reshape(-1)  # (Np * Np,)
    s = sim.reshape(-1).double()
    return [(float(v), float(s[d == v].mean())) for v in torch.unique(d)]


def filter_pca(weight: torch.Tensor, k: int = 28) -> tuple[torch.Tensor, torch.Tensor]:
    """PCA of D filters (D, C, P, P): the top-k components (k, C, P, P) and their explained variance ratio (k,).

    The filters are centred (their mean filter removed); components are unit-norm, mutually orthogonal and
    ordered by the variance they explain; each one's sign makes its largest-magnitude entry positive.
    """
    if weight.ndim != 4:
        raise ValueError(f"expected conv filters (D, C, P, P), got shape {tuple(weight.shape)}")
    if k < 1:
        raise ValueError(f"filter_pca: k={k} principal components; ask for at least 1")
    d = weight.shape[0]
    x = weight.detach().double().reshape(d, -1)  # (D, C*P*P)
    x = x - x.mean(dim=0, keepdim=True)
    _, s, vh = torch.linalg.svd(x, full_matrices=False)  # s descending; vh (r, C*P*P)
    # the centred filters span at most min(D - 1, C*P*P) dimensions: components past those are noise
    k = min(k, vh.shape[0], max(1, d - 1))
    comps = vh[:k]
    biggest = comps.abs().argmax(dim=1, keepdim=True)
    comps = comps * comps.gather(1, biggest).sign()  # deterministic signs
    var = s**2
    ratio = var[:k] / var.sum().clamp_min(1e-30)
    return comps.reshape(k, *weight.shape[1:]).float(), ratio.float()


def embedding_pca(model: nn.Module, k: int = 28, return_variance: bool = False):
    """Top-k principal components of the patch-embedding filters: (k, C, P, P); the paper's Figure 7 (left).

    A hybrid's patch embedding sees ResNet features, not pixels: its ResNet's first (root) filters are used.
    With `return_variance`, also the explained variance ratio of each component, (k,).
    """
    if k < 1:
        raise ValueError(f"embedding_pca: k={k} principal components; ask for at least 1")
    embed = getattr(model, "patch_embed", None)
    conv = getattr(embed, "pixel_conv", getattr(embed, "proj", None))
    if not isinstance(conv, nn.Conv2d):
        raise ValueError(f"{type(model).__name__} has no convolutional patch embedding (patch_embed.proj)")
    std = getattr(conv, "standardized_weight", None)  # a hybrid's root: its filters as the network uses them
    comps, ratio = filter_pca((std() if std else conv.weight).detach(), k)
    return (comps, ratio) if return_variance else comps
