"""Attention maps, mean attention distance and attention rollout (tensors in, tensors out).

Shapes: B images, H heads, N = prefix + gh * gw tokens (the class token first when present), L layers.
"""

from __future__ import annotations

import torch
from torch import nn

HEAD_FUSIONS = ("mean", "max", "min")


def _pair(grid: int | tuple[int, int]) -> tuple[int, int]:
    return (grid, grid) if isinstance(grid, int) else (int(grid[0]), int(grid[1]))


@torch.no_grad()
def attention_maps(model: nn.Module, images: torch.Tensor) -> list[torch.Tensor]:
    """Softmax attention of every layer for normalised images (B, C, H, W): L tensors (B, H, N, N).

    The model runs in eval mode (no attention dropout) and is put back in its former mode afterwards.
    """
    was_training = model.training
    model.eval()
    try:
        _, attns = model(images, return_attention=True)
    finally:
        model.train(was_training)
    return [a.float() for a in attns]


def patch_distances(grid_size: int | tuple[int, int], patch_size: int) -> torch.Tensor:
    """Euclidean distance in pixels between the centres of every two patches, row-major: (Np, Np)."""
    gh, gw = _pair(grid_size)
    y, x = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
    pos = torch.stack([y.reshape(-1), x.reshape(-1)], dim=1).double() * patch_size  # (Np, 2)
    return torch.cdist(pos, pos)  # (Np, Np)


def mean_attention_distance(
    attn: torch.Tensor, grid_size: int | tuple[int, int], patch_size: int, num_prefix_tokens: int = 1
) -> torch.Tensor:
    """Mean attention distance in pixels of each head of one layer: (B, H, N, N) -> (H,).

    The paper's Figure 7 (right) and Appendix D.7: for each query patch, the distance in pixels to each key
    patch weighted by the attention between them, averaged over query patches and images. Only patch tokens
    count: the attention a patch pays to the prefix (class) token has no position, so each query's
    patch-to-patch row is renormalised to sum to 1; the class token's own query row is left out. A query that
    pays (numerically) all its attention to the prefix tokens has no distance and is left out of the mean.
    """
    gh, gw = _pair(grid_size)
    p = num_prefix_tokens
    if attn.ndim != 4 or attn.shape[-1] != attn.shape[-2] or attn.shape[-1] != p + gh * gw:
        raise ValueError(
            f"attention of shape {tuple(attn.shape)} does not fit a {gh}x{gw} grid with {p} prefix "
            f"token(s): expected (B, heads, {p + gh * gw}, {p + gh * gw})"
        )
    a = attn[:, :, p:, p:].double()  # (B, H, Np, Np)
    mass = a.sum(dim=-1)  # (B, H, Np)
    dist = patch_distances((gh, gw), patch_size).to(a.device)  # (Np, Np)
    per_query = torch.einsum("bhqk,qk->bhq", a, dist) / mass.clamp_min(1e-12)  # (B, H, Np)
    valid = (mass > 1e-9).double()
    out = (per_query * valid).sum(dim=(0, 2)) / valid.sum(dim=(0, 2)).clamp_min(1)  # (H,)
    return out.float()


def fuse_heads(attn: torch.Tensor, head_fusion: str = "mean") -> torch.Tensor:
    """(B, H, N, N) -> (B, N, N) by the mean, max or min over heads."""
    if head_fusion == "mean":
        return attn.mean(dim=1)
    if head_fusion == "max":
        return attn.amax(dim=1)
    if head_fusion == "min":
        return attn.amin(dim=1)
    raise ValueError(f"head_fusion={head_fusion!r} is not one of {', '.join(map(repr, HEAD_FUSIONS))}")


def rollout_matrix(
    attns: list[torch.Tensor], head_fusion: str = "mean", discard_ratio: float = 0.0
) -> torch.Tensor:
    """Attention rollout (Abnar & Zuidema, 2020) through all layers: L x (B, H, N, N) -> (B, N, N).

    Per layer: fuse the heads, zero the lowest `discard_ratio` fraction of each image's weights (never the
    diagonal), add the identity for the residual connection (0.5 A + 0.5 I), renormalise the rows; then
    multiply through the layers, R = A_L ... A_1. Row i of R says how much each input token contributes to
    output token i.
    """
    if not attns:
        raise ValueError("attention_rollout needs the attention of at least one layer")
    result = None
    for attn in attns:
        result = rollout_step(result, attn, head_fusion, discard_ratio)
    return result.float()


def rollout_step(
    result: torch.Tensor | None, attn: torch.Tensor, head_fusion: str = "mean", discard_ratio: float = 0.0
) -> torch.Tensor:
    """One layer of `rollout_matrix`: the rollout so far (B, N, N) float64 (None before the first layer) and the
    layer's attention (B, H, N, N) -> the rollout through it; so a layer's attention can be freed at once."""
    if not 0.0 <= discard_ratio < 1.0:
        raise ValueError(f"discard_ratio={discard_ratio!r} must lie in [0, 1)")
    B, _, N, _ = attn.shape
    eye = torch.eye(N, dtype=torch.float64, device=attn.device)
    a = fuse_heads(attn, head_fusion).double()  # (B, N, N): heads fused before the copy to float64
    if discard_ratio > 0:
        flat = a.masked_fill(eye.bool(), float("inf")).reshape(B, -1)  # the diagonal is never dropped
        n_drop = min(int(flat.shape[1] * discard_ratio), N * N - N)
        if n_drop:
            idx = flat.topk(n_drop, dim=-1, largest=False).indices
            a = a.reshape(B, -1).scatter(1, idx, 0.0).reshape(B, N, N)
    a = 0.5 * a + 0.5 * eye
    a = a / a.sum(dim=-1, keepdim=True)
    return a if result is None else a @ result


def attention_rollout(
    attns: list[torch.Tensor],
    head_fusion: str = "mean",
    discard_ratio: float = 0.0,
    num_prefix_tokens: int = 1,
    grid_size: int | tuple[int, int] | None = None,
) -> torch.Tensor:
    """Rollout map over the patch grid: L x (B, H, N, N) -> (B, gh, gw).

    With a class token (num_prefix_tokens >= 1): the class token's row of the rollout over the patches. For
    GAP models (num_prefix_tokens=0): the mean over the patch rows, as GAP pools them. The grid is square
    unless `grid_size` is given. Values are not rescaled: they are the contributions of each patch.
    """
    return rollout_map(rollout_matrix(attns, head_fusion, discard_ratio), num_prefix_tokens, grid_size)


def rollout_map(
    r: torch.Tensor, num_prefix_tokens: int = 1, grid_size: int | tuple[int, int] | None = None
) -> torch.Tensor:
    """A rollout matrix (B, N, N) as a map over the patch grid (B, gh, gw): see `attention_rollout`."""
    p = num_prefix_tokens
    n_patches = r.shape[-1] - p
    if grid_size is None:
        side = round(n_patches**0.5)
        if side * side != n_patches:
            raise ValueError(f"{n_patches} patches do not form a square grid: pass grid_size=(gh, gw)")
        grid_size = side
    gh, gw = _pair(grid_size)
    if gh * gw != n_patches:
        raise ValueError(f"grid {gh}x{gw} does not match {n_patches} patch tokens ({r.shape[-1]} - {p})")
    maps = r[:, 0, p:] if p > 0 else r[:, p:, p:].mean(dim=1)  # (B, Np)
    return maps.reshape(-1, gh, gw)
