"""Position embeddings (pure functions): fixed 2D sin-cos, and 2D resampling of learned ones."""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F


def _positions(n: int, ref: int | None) -> torch.Tensor:
    """Patch-centre positions of an n-patch row in units of a ref-patch row (integers when ref is None or n)."""
    i = torch.arange(n, dtype=torch.float64)
    return i if ref is None or ref == n else (i + 0.5) * ref / n - 0.5


def sincos2d(
    grid: tuple[int, int],
    dim: int,
    temperature: float = 10000.0,
    ref_grid: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Fixed 2D sin-cos embedding of a (gh, gw) grid, row-major: returns (gh*gw, dim).

    `ref_grid`: evaluate the embedding at each patch centre in the units of that grid (the one a model was trained
    on; centres as align_corners=False), so that each patch of a model moved to another resolution gets the
    embedding of its place in the image, as resampling does for a learned one; None gives big_vision's integer
    positions of `grid`.
    """
    gh, gw = grid
    if dim % 4:
        raise ValueError(f"sincos2d needs a width divisible by 4, got {dim}")
    ref_h, ref_w = ref_grid if ref_grid is not None else (None, None)
    y, x = torch.meshgrid(_positions(gh, ref_h), _positions(gw, ref_w), indexing="ij")
    quarter = dim // 4
    omega = torch.arange(quarter, dtype=torch.float64) / max(quarter - 1, 1)
    omega = 1.0 / temperature**omega  # (D/4,)
    y = y.reshape(-1, 1).double() * omega  # (N, D/4)
    x = x.reshape(-1, 1).double() * omega
    pe = torch.cat([x.sin(), x.cos(), y.sin(), y.cos()], dim=1)  # (N, D)
    return pe.float()


@functools.lru_cache(maxsize=32)
def sincos2d_on(
    grid: tuple[int, int], dim: int, ref_grid: tuple[int, int] | None, device: torch.device
) -> torch.Tensor:
    """`sincos2d(grid, dim, ref_grid=ref_grid)[None]` on `device`, made once per (grid, dim, ref, device): a
    dynamic-size model meets each size again and again, and a table made per forward is a host-to-device copy.
    Never mutated; made outside inference mode, so that autograd may use it later."""
    with torch.inference_mode(False):
        return sincos2d(grid, dim, ref_grid=ref_grid)[None].to(device)  # (1, gh*gw, dim)


def grid_of(num_patches: int) -> tuple[int, int]:
    """The square grid holding `num_patches` tokens; ValueError if it is not a square."""
    side = math.isqrt(num_patches)
    if side * side != num_patches:
        raise ValueError(
            f"cannot infer the grid of {num_patches} position embeddings: not a square; "
            "pass old_grid=(gh, gw)"
        )
    return (side, side)


RESAMPLE_MODES = ("bilinear", "bicubic")


def check_resample_mode(mode: str) -> None:
    """ValueError unless `mode` is one of RESAMPLE_MODES (a learned 2-D position embedding's resampling)."""
    if mode not in RESAMPLE_MODES:
        raise ValueError(f"mode={mode!r}: expected 'bilinear' or 'bicubic'")


def resample_posemb(
    posemb: torch.Tensor,
    new_grid: int | tuple[int, int],
    num_prefix_tokens: int = 1,
    mode: str = "bilinear",
    align_corners: bool | None = None,
    old_grid: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Resize a learned position embedding (1, prefix + gh*gw, D) to a new grid in 2D.

    `mode="bilinear"` with `align_corners=True` (the default for bilinear) equals the official
    code's `scipy.ndimage.zoom(order=1)`; `mode="bicubic"` defaults to timm's convention
    (align_corners=False, antialias=True). Prefix tokens (class token) are kept.
    """
    if posemb.ndim != 3 or posemb.shape[0] != 1:
        raise ValueError(f"posemb must have shape (1, N, D), got {tuple(posemb.shape)}")
    check_resample_mode(mode)
    new = (new_grid, new_grid) if isinstance(new_grid, int) else tuple(new_grid)
    if len(new) != 2 or min(new) < 1:
        raise ValueError(f"new_grid={new_grid!r}: expected a positive grid (gh, gw)")
    prefix, grid = posemb[:, :num_prefix_tokens], posemb[:, num_prefix_tokens:]
    old = tuple(old_grid) if old_grid is not None else grid_of(grid.shape[1])
    if old[0] * old[1] != grid.shape[1]:
        raise ValueError(f"old_grid={old} does not hold the {grid.shape[1]} patch embeddings")
    if old == new:
        return posemb
    if align_corners is None:
        align_corners = mode == "bilinear"
    dim = grid.shape[-1]
    img = grid.float().reshape(1, old[0], old[1], dim).permute(0, 3, 1, 2)  # (1, D, gh, gw)
    antialias = mode == "bicubic" and not align_corners  # timm resizes with antialias=True
    img = F.interpolate(img, size=new, mode=mode, align_corners=align_corners, antialias=antialias)
    grid = img.permute(0, 2, 3, 1).reshape(1, new[0] * new[1], dim).to(posemb.dtype)
    return torch.cat([prefix, grid], dim=1)
