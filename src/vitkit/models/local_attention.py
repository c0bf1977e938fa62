"""Stand-alone local self-attention (Ramachandran et al. 2019, "SASA"), the layer that replaces a 3x3 conv.

Each pixel (i, j) attends to the k x k pixels around it with relative position embeddings:
y_ij = sum_ab softmax_ab(q_ij . k_ab + q_ij . r_{a-i, b-j}) v_ab per head, where r is a row-offset embedding
(half of each head's channels) concatenated with a column-offset embedding (the other half). Queries, keys and
values are 1x1 projections; a stride of 2 is a 2x2 average pool after the attention, as the paper does. Also the
paper's attention stem (`AttentionStem`: attention within 4x4 blocks, spatially-aware values, the 4x4 max pool).
Choices the paper leaves open: queries are scaled by head_dim^-0.5 (as the Transformer and the attention
augmented conv do); neighbours outside the image are masked out rather than read as zero padding; each head has
its own row and column embeddings (half of its channels each; the paper writes them for one head, and splitting a
shared d_out-wide embedding by heads would leave half the heads with row offsets only).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# Maps of up to this many windows' pixels take the dense path (all pairs, masked), larger ones the tiled path
# (k x k query tiles against the regions their windows span). Forward + backward of one layer on 2 CPU cores, 7x7
# windows: at 10x10 dense 30 ms, tiled 170 (batch 32); at 14x14 (4 windows) 85 vs 77 and 65 vs 71 (64 and 128
# channels, batch 16); at 20x20 437 vs 213. Gathering each pixel's window (unfold) was 2-3.6x slower than tiles.
DENSE_WINDOWS = 4


def even_head_dim(channels: int, num_heads: int, what: str) -> int:
    """Each head's width, which must be even (half its channels embed row offsets, half column offsets)."""
    head_dim = channels // num_heads if num_heads > 0 else 0
    if head_dim * num_heads != channels or head_dim % 2:
        raise ValueError(
            f"{what}: {channels} channels do not split into {num_heads} heads (model.num_heads) of an even width "
            "(half for row offsets, half for column offsets)"
        )
    return head_dim


class LocalSelfAttention2d(nn.Module):
    """Multi-head self-attention over each pixel's window x window neighbourhood: (B, C, H, W) -> (B, D, H/s, W/s)."""

    def __init__(self, in_chs: int, out_chs: int, num_heads: int, window: int = 7, stride: int = 1):
        super().__init__()
        head_dim = even_head_dim(out_chs, num_heads, "local self-attention")
        if window < 1 or window % 2 == 0:
            raise ValueError(
                f"local self-attention window={window} (model.sasa_window): expected an odd size >= 1 (e.g. 7)"
            )
        self.num_heads, self.head_dim, self.window, self.stride = num_heads, head_dim, window, stride
        self.scale = head_dim**-0.5
        self.qkv = nn.Conv2d(in_chs, 3 * out_chs, 1, bias=False)
        # per head: half of its channels embed the row offset a - i, half the column offset b - j (index + k//2)
        self.rel_row = nn.Parameter(torch.empty(num_heads, head_dim // 2, window))
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
        out = self._dense(q, key, v) if dense else self._tiled(q, key, v)
        return self.pool(out.reshape(b, -1, h, w))  # (B, D, H/s, W/s)

    def _tiled(self, q: torch.Tensor, key: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Queries in k x k tiles, each tile attending to the (2k - 1)^2 region its windows span, pairs beyond a
        window and keys outside the image masked: dense products on large maps. -> (B, nh, dh, HW)."""
        b, _, h, w = q.shape
        nh, dh, t = self.num_heads, self.head_dim, self.window
        r = t // 2
        span = t + 2 * r
        ph, pw = -h % t, -w % t  # the map padded to whole tiles; padded queries are dropped at the end
        nty, ntx = (h + ph) // t, (w + pw) // t
        n = nty * ntx
        q = F.pad(q, (0, pw, 0, ph)) * self.scale
        q = q.reshape(b, nh, dh, nty, t, ntx, t).permute(0, 1, 3, 5, 4, 6, 2).reshape(b, nh, n, t * t, dh)

        def regions(x: torch.Tensor) -> torch.Tensor:  # (B, D, H, W) -> (B, nh, tiles, span^2, dh)
            x = F.unfold(F.pad(x, (0, pw, 0, ph)), span, padding=r, stride=t)  # (B, D*span^2, tiles)
            return x.reshape(b, nh, dh, span * span, n).permute(0, 1, 4, 3, 2)

        logits = q @ regions(key).transpose(-1, -2)  # (B, nh, tiles, k*k, span^2): q_ij . k_ab
        half = dh // 2
        row = q[..., :half] @ self.rel_row.unsqueeze(1)  # (B, nh, tiles, k*k, k): q . r_row[offset]
        col = q[..., half:] @ self.rel_col.unsqueeze(1)
        idx_row, idx_col, valid = tile_offsets(h, w, t, q.device)
        full = (b, nh, n, t * t, span * span)
        logits = logits + row.gather(-1, idx_row.expand(full)) + col.gather(-1, idx_col.expand(full))
        attn = logits.masked_fill(~valid, float("-inf")).softmax(dim=-1)  # (B, nh, tiles, k*k, span*span)
        out = attn @ regions(v)  # (B, nh, tiles, k*k, dh)
        out = (
            out.reshape(b, nh, nty, ntx, t, t, dh)
            .permute(0, 1, 6, 2, 4, 3, 5)
            .reshape(b, nh, dh, h + ph, w + pw)
        )
        return out[..., :h, :w].reshape(b, nh, dh, h * w)

    def _dense(self, q: torch.Tensor, key: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """All pairs of pixels, those further apart than the window masked: for small maps the cheaper way to the
        same result (dense matrix products). -> (B, nh, dh, HW)."""
        b, _, h, w = q.shape
        nh, dh = self.num_heads, self.head_dim
        q = q.reshape(b, nh, dh, h * w) * self.scale
        logits = q.transpose(-1, -2) @ key.reshape(b, nh, dh, h * w)  # (B, nh, HW, HW'): q_ij . k_ab
        half = dh // 2  # q . r_row[offset] and q . r_col[offset] for every offset: (B, nh, k, HW) each
        row = torch.einsum("nck,bncl->bnkl", self.rel_row, q[:, :, :half])
        col = torch.einsum("nck,bncl->bnkl", self.rel_col, q[:, :, half:])
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


def tile_offsets(h: int, w: int, window: int, device: torch.device | None = None) -> tuple[torch.Tensor, ...]:
    """For the tiles of an h x w map (k x k queries, (2k - 1)^2 keys each): the row and column offset indices into
    a window's embeddings, (k*k, span^2), and which pairs count, (tiles, k*k, span^2): the key in the query's window
    and in the image; a padded query (beyond the map, dropped) takes every key so that its softmax stays finite."""
    r = window // 2
    span = window + 2 * r
    qy, qx = (
        torch.arange(window, device=device).repeat_interleave(window),
        torch.arange(window, device=device).repeat(window),
    )
    ky = torch.arange(span, device=device).repeat_interleave(span) - r
    kx = torch.arange(span, device=device).repeat(span) - r
    dy, dx = ky.unsqueeze(0) - qy.unsqueeze(1), kx.unsqueeze(0) - qx.unsqueeze(1)  # key - query
    inside = (dy.abs() <= r) & (dx.abs() <= r)  # (k*k, span^2)
    ones = F.pad(torch.ones(1, 1, h, w, device=device), (0, -w % window, 0, -h % window))
    key_in = F.unfold(ones, span, padding=r, stride=window)[0].t() > 0  # (tiles, span^2)
    query_out = F.unfold(ones, window, stride=window)[0].t() == 0  # (tiles, k*k)
    valid = (inside & key_in.unsqueeze(1)) | query_out.unsqueeze(-1)
    return dy.clamp(-r, r) + r, dx.clamp(-r, r) + r, valid


def local_attention_macs(in_chs: int, out_chs: int, h: int, w: int, window: int) -> int:
    """Multiply-accumulates of one layer on an h x w map: projections, logits (content + relative), weighted sum,
    each pixel scoring its window's keys (all h*w pixels when the map is smaller): the layer's arithmetic as the
    paper counts it. The dense and tiled paths also score masked pairs (up to DENSE_WINDOWS x and (2k-1)^2/k^2 x as
    many) because dense products of those sizes run faster than gathering exactly the window."""
    hw = h * w
    keys = min(hw, window * window)
    return hw * in_chs * 3 * out_chs + hw * out_chs * (2 * keys + window)


class AttentionStem(nn.Module):
    """SASA's attention stem (the paper's "full attention" models): self-attention within each 4x4 block of pixels
    with spatially-aware values, batch norm, ReLU, then the 4x4 max pool: (B, C, H, W) -> (B, D, H/4, W/4).

    Values (the paper's Section 3.2): v_ab = (sum_m p(a, b, m) W_V^m) x_ab with p(a, b, m) =
    softmax_m((emb_row(a) + emb_col(b)) . nu^m), a and b the pixel's row and column inside its block (the pooling
    window). The products emb_row(a) . nu^m and emb_col(b) . nu^m are stored as two (block, m) tables, the same
    functions for embeddings at least m wide. The mixture is linear in x, so each of the 16 in-block positions
    mixes its value matrix once per forward pass and applies it to its pixels. Logits are the body layers':
    q . (k + r), r from the row and column offsets inside the block (-3..3). Chosen here: m = 4 value matrices,
    the ReLU before the pool (as the conv stem; max and ReLU commute), queries scaled by head_dim^-0.5.
    """

    def __init__(self, in_chans: int, out_chs: int, num_heads: int, block: int = 4, mixtures: int = 4):
        super().__init__()
        head_dim = even_head_dim(out_chs, num_heads, "attention stem")
        self.num_heads, self.head_dim, self.block, self.mixtures = num_heads, head_dim, block, mixtures
        self.scale = head_dim**-0.5
        self.qk = nn.Linear(in_chans, 2 * out_chs, bias=False)
        self.value = nn.Parameter(torch.empty(mixtures, out_chs, in_chans))  # W_V^m
        self.mix_row = nn.Parameter(torch.empty(block, mixtures))  # emb_row(a) . nu^m
        self.mix_col = nn.Parameter(torch.empty(block, mixtures))  # emb_col(b) . nu^m
        self.rel_row = nn.Parameter(torch.empty(num_heads, head_dim // 2, 2 * block - 1))
        self.rel_col = nn.Parameter(torch.empty(num_heads, head_dim // 2, 2 * block - 1))
        self.norm = nn.BatchNorm2d(out_chs)
        self.act = nn.ReLU(inplace=True)
        pos = torch.arange(block)
        dy = pos.repeat_interleave(block)  # (block^2,) row of each in-block position
        dx = pos.repeat(block)
        self.register_buffer("idx_row", dy.unsqueeze(0) - dy.unsqueeze(1) + block - 1, persistent=False)
        self.register_buffer("idx_col", dx.unsqueeze(0) - dx.unsqueeze(1) + block - 1, persistent=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Projections N(0, 1/fan_in), relative embeddings N(0, 1/head_dim), an even mixture, a unit norm."""
        fan_in = self.qk.in_features
        nn.init.trunc_normal_(self.qk.weight, std=fan_in**-0.5)
        nn.init.trunc_normal_(self.value, std=fan_in**-0.5)
        nn.init.zeros_(self.mix_row)
        nn.init.zeros_(self.mix_col)
        nn.init.trunc_normal_(self.rel_row, std=self.scale)
        nn.init.trunc_normal_(self.rel_col, std=self.scale)
        self.norm.reset_parameters()

    def mixed_values(self) -> torch.Tensor:
        """Each in-block position's value matrix sum_m p(a, b, m) W_V^m: (block^2, D, C)."""
        logits = self.mix_row.unsqueeze(1) + self.mix_col.unsqueeze(0)  # (block, block, m)
        p = logits.reshape(-1, self.mixtures).softmax(dim=-1)  # (block^2, m)
        return torch.einsum("pm,mdc->pdc", p, self.value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, D, H/4, W/4)."""
        b, c, h, w = x.shape
        s, nh, dh = self.block, self.num_heads, self.head_dim
        if h % s or w % s:
            raise ValueError(f"the attention stem needs image sides divisible by {s}, got {h}x{w}")
        gh, gw = h // s, w // s
        x = x.reshape(b, c, gh, s, gw, s).permute(0, 2, 4, 3, 5, 1)  # (B, gh, gw, s, s, C)
        x = x.reshape(b, gh * gw, s * s, c)  # (B, n, s*s, C)
        q, k = self.qk(x).chunk(2, dim=-1)  # (B, n, s*s, D) each
        v = torch.einsum("bnpc,pdc->bnpd", x, self.mixed_values())  # spatially-aware values

        def heads(t: torch.Tensor) -> torch.Tensor:  # (B, n, s*s, D) -> (B, nh, n, s*s, dh)
            return t.reshape(b, gh * gw, s * s, nh, dh).permute(0, 3, 1, 2, 4)

        q, k, v = heads(q) * self.scale, heads(k), heads(v)
        half = dh // 2
        row = q[..., :half] @ self.rel_row.unsqueeze(1)  # (B, nh, n, s*s, 2s-1): q . r_row[offset]
        col = q[..., half:] @ self.rel_col.unsqueeze(1)
        full = (b, nh, gh * gw, s * s, s * s)
        logits = q @ k.transpose(-1, -2)  # (B, nh, n, s*s, s*s)
        logits = (
            logits + row.gather(-1, self.idx_row.expand(full)) + col.gather(-1, self.idx_col.expand(full))
        )
        out = logits.softmax(dim=-1) @ v  # (B, nh, n, s*s, dh)
        out = out.permute(0, 1, 4, 2, 3).reshape(b, nh * dh, gh * gw, s * s)  # (B, D, n, s*s)
        out = self.act(self.norm(out)).amax(dim=-1)  # the 4x4 max pool: (B, D, n)
        return out.reshape(b, nh * dh, gh, gw)  # (B, D, H/4, W/4)


def attention_stem_macs(
    in_chans: int, out_chs: int, h: int, w: int, block: int = 4, mixtures: int = 4
) -> int:
    """Multiply-accumulates of the attention stem on an h x w image: queries and keys, the 16 positions' mixed value
    matrices and their values, logits (content + relative), weighted sum."""
    hw, pos = h * w, block * block
    return (
        hw * in_chans * 3 * out_chs
        + pos * mixtures * out_chs * in_chans
        + hw * out_chs * (2 * pos + 2 * block - 1)
    )


def attention_stem_params(in_chans: int, out_chs: int, block: int = 4, mixtures: int = 4) -> int:
    """Parameters of the attention stem (projections, value matrices, mixture tables, relative tables, norm)."""
    rel = 2 * (out_chs // 2) * (2 * block - 1)
    return 2 * in_chans * out_chs + mixtures * out_chs * in_chans + 2 * block * mixtures + rel + 2 * out_chs
