"""Stand-alone local self-attention (Ramachandran et al. 2019, "SASA"), the layer that replaces a 3x3 conv.

Each pixel (i, j) attends to the k x k pixels around it with relative position embeddings:
y_ij = sum_ab softmax_ab(q_ij . k_ab + q_ij . r_{a-i, b-j}) v_ab per head, where r is a row-offset embedding
(half of each head's channels) concatenated with a column-offset embedding (the other half). Queries, keys and
values are 1x1 projections; a stride of 2 is a 2x2 average pool after the attention, as the paper does.
Choices the paper leaves open: queries are scaled by head_dim^-0.5 (as the Transformer and the attention
augmented conv do); neighbours outside the image are masked out rather than read as zero padding; each head has
its own row and column embeddings (half of its channels each; the paper writes them for one head, and splitting a
shared d_out-wide embedding by heads would leave half the heads with row offsets only).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# Maps of up to this many windows' pixels take the dense path (all pairs, masked): on 2 CPU cores it was 1.9x
# faster than gathering windows at 14x14 (4 windows of 7x7) and 0.7x at 20x20 (8 windows); 6-13x at 7x7 and below.
DENSE_WINDOWS = 4


def neighbour_mask(h: int, w: int, window: int, device: torch.device | None = None) -> torch.Tensor:
    """(h*w, window^2) bool: whether each pixel's neighbour at each window offset lies inside the image."""
    ones = torch.ones(1, 1, h, w, device=device)
    return F.unfold(ones, window, padding=window // 2)[0].t() > 0  # (HW, k*k)


class LocalSelfAttention2d(nn.Module):
    """Multi-head self-attention over each pixel's window x window neighbourhood: (B, C, H, W) -> (B, D, H/s, W/s)."""

    def __init__(self, in_chs: int, out_chs: int, num_heads: int, window: int = 7, stride: int = 1):
        super().__init__()
        head_dim = out_chs // num_heads if num_heads > 0 else 0
        if head_dim * num_heads != out_chs or head_dim % 2:
            raise ValueError(
                f"local self-attention: {out_chs} channels do not split into {num_heads} heads (model.num_heads) of "
                "an even width (half for row offsets, half for column offsets)"
            )
        if window < 1 or window % 2 == 0:
            raise ValueError(
                f"local self-attention window={window} (model.sasa_window): expected an odd size >= 1 (e.g. 7)"
            )
        self.num_heads, self.head_dim, self.window, self.stride = num_heads, head_dim, window, stride
        self.scale = head_dim**-0.5
        self.qkv = nn.Conv2d(in_chs, 3 * out_chs, 1, bias=False)
        self.rel_row = nn.Parameter(
            torch.empty(num_heads, head_dim // 2, window)
        )  # offset a - i = 0..k-1 - k//2
        self.rel_col = nn.Parameter(torch.empty(num_heads, head_dim // 2, window))
        self.pool = nn.AvgPool2d(2, 2, ceil_mode=True) if stride == 2 else nn.Identity()
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Projections N(0, 1/fan_in) and embeddings N(0, 1/head_dim), as timm's attention layers in CNNs."""
        nn.init.trunc_normal_(self.qkv.weight, std=self.qkv.in_channels**-0.5)
        nn.init.trunc_normal_(self.rel_row, std=self.scale)
        nn.init.trunc_normal_(self.rel_col, std=self.scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, D, H/s, W/s)."""
        b, _, h, w = x.shape
        q, key, v = self.qkv(x).chunk(3, dim=1)  # (B, D, H, W) each
        dense = h * w <= DENSE_WINDOWS * self.window**2
        out = self._dense(q, key, v) if dense else self._windowed(q, key, v)
        return self.pool(out.reshape(b, -1, h, w))  # (B, D, H/s, W/s)

    def _relative(self, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q (B, nh, dh, HW) -> q . r_row and q . r_col for every window offset, each (B, nh, k, HW)."""
        half = self.head_dim // 2
        row = torch.einsum("nck,bncl->bnkl", self.rel_row, q[:, :, :half])
        col = torch.einsum("nck,bncl->bnkl", self.rel_col, q[:, :, half:])
        return row, col

    def _windowed(self, q: torch.Tensor, key: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Each pixel's k x k window gathered (unfold): the larger maps. -> (B, nh, dh, HW)."""
        b, _, h, w = q.shape
        nh, dh, k = self.num_heads, self.head_dim, self.window
        q = q.reshape(b, nh, dh, h * w) * self.scale

        def windows(t: torch.Tensor) -> torch.Tensor:  # (B, D, H, W) -> (B, nh, dh, k*k, HW), zeros outside
            return F.unfold(t, k, padding=k // 2).reshape(b, nh, dh, k * k, h * w)

        logits = torch.einsum("bncl,bnckl->bnkl", q, windows(key))  # (B, nh, k*k, HW): q_ij . k_ab
        row, col = self._relative(q)
        logits = logits + (row.unsqueeze(3) + col.unsqueeze(2)).flatten(
            2, 3
        )  # offset index (a-i+r)*k + (b-j+r)
        logits = logits.masked_fill(~neighbour_mask(h, w, k, q.device).t(), float("-inf"))
        return torch.einsum("bnkl,bnckl->bncl", logits.softmax(dim=2), windows(v))  # (B, nh, dh, HW)

    def _dense(self, q: torch.Tensor, key: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """All pairs of pixels, those further apart than the window masked: for small maps the cheaper way to the
        same result (dense matrix products). -> (B, nh, dh, HW)."""
        b, _, h, w = q.shape
        nh, dh = self.num_heads, self.head_dim
        q = q.reshape(b, nh, dh, h * w) * self.scale
        logits = q.transpose(-1, -2) @ key.reshape(b, nh, dh, h * w)  # (B, nh, HW, HW'): q_ij . k_ab
        row, col = self._relative(q)  # (B, nh, k, HW)
        idx_row, idx_col, inside = pair_offsets(h, w, self.window, q.device)  # (HW, HW') each
        full = (b, nh, h * w, h * w)
        logits = logits + row.transpose(-1, -2).gather(-1, idx_row.expand(full))  # q . r_row[a - i]
        logits = logits + col.transpose(-1, -2).gather(-1, idx_col.expand(full))  # q . r_col[b - j]
        attn = logits.masked_fill(~inside, float("-inf")).softmax(dim=-1)
        return v.reshape(b, nh, dh, h * w) @ attn.transpose(-1, -2)  # (B, nh, dh, HW)


def pair_offsets(h: int, w: int, window: int, device: torch.device | None = None) -> tuple[torch.Tensor, ...]:
    """For every (query, key) pixel pair of an h x w map: the row and column offset indices into a window's
    embeddings (a - i + k//2, b - j + k//2, clamped) and whether the key lies in the query's window. (HW, HW) each."""
    r = window // 2
    y = torch.arange(h, device=device).repeat_interleave(w)  # (HW,) row of each pixel
    x = torch.arange(w, device=device).repeat(h)  # (HW,) column of each pixel
    dy, dx = y.unsqueeze(0) - y.unsqueeze(1), x.unsqueeze(0) - x.unsqueeze(1)  # (HW, HW'): key - query
    inside = (dy.abs() <= r) & (dx.abs() <= r)
    return dy.clamp(-r, r) + r, dx.clamp(-r, r) + r, inside


def local_attention_macs(in_chs: int, out_chs: int, h: int, w: int, window: int) -> int:
    """Multiply-accumulates of one layer on an h x w map: projections, logits (content + relative), weighted sum.
    Counted as computed: each pixel scores its window's keys, or all h*w pixels (the masked pairs too) on maps of
    up to DENSE_WINDOWS windows' pixels, the dense path."""
    hw = h * w
    keys = hw if hw <= DENSE_WINDOWS * window * window else window * window
    return hw * in_chs * 3 * out_chs + hw * out_chs * (2 * keys + window)
