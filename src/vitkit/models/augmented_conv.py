"""Attention-augmented convolution (Bello et al. 2019, "AA"): a conv and global 2D relative self-attention, side
by side, their outputs concatenated along channels.

AAConv(X) = Concat[Conv(X), MHA(X)] with Fout - dv conv channels and dv attention channels; per head
O_h = softmax((Q K^T + S_H + S_W) / sqrt(dk_h)) V, where S_W[i, j] = q_i . r_W[x_j - x_i] and S_H likewise for
rows: relative embeddings of shape (2W - 1, dk_h) and (2H - 1, dk_h), learned and shared across heads; the
heads are mixed by a 1x1 conv W_O. As the paper's code, queries are scaled by dk_h^-0.5 before both kinds of
logits. Choices it leaves open: no biases on the 1x1 projections (batch norm follows the concatenation), the
embeddings drawn from N(0, dk_h^-1) (as timm's BottleneckAttn), and for a stride of 2 the attention runs on
the input average-pooled 2x2 (the conv branch is strided itself): the paper's FLOPs for AA-ResNet-50 (8.3G, ResNet-50
8.2G) are only reached so; attention at full resolution before pooling would cost 9.2G. Its parameters are not
reproduced: 25.1M here, 25.8M in the paper (no setting of dk, dv tried gave both its FLOPs and parameters).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def relative_logits_1d(q: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """q (..., L, d) and a table (2L - 1, d) of offsets -(L-1)..L-1 -> logits (..., L, L): [i, j] = q_i . r[j - i]."""
    n = q.shape[-2]
    if table.shape[0] != 2 * n - 1:
        raise ValueError(f"relative table of {table.shape[0]} offsets for a length {n} (needs {2 * n - 1})")
    pos = torch.arange(n, device=q.device)
    absolute = table[pos.unsqueeze(0) - pos.unsqueeze(1) + n - 1]  # (L, L, d): r[j - i]
    return torch.einsum("...id,ijd->...ij", q, absolute)


def relative_logits_2d(q: torch.Tensor, rel_h: torch.Tensor, rel_w: torch.Tensor) -> torch.Tensor:
    """Queries on a grid (B, nh, H, W, d) -> S_H + S_W as (B, nh, H*W, H*W), keys in row-major order."""
    b, nh, h, w, _ = q.shape
    s_w = relative_logits_1d(q, rel_w)  # (B, nh, H, W, W'): column offsets
    s_h = relative_logits_1d(q.transpose(2, 3), rel_h).transpose(2, 3)  # (B, nh, H, W, H'): row offsets
    return (s_h.unsqueeze(-1) + s_w.unsqueeze(-2)).reshape(b, nh, h * w, h * w)


def resize_relative_table(table: torch.Tensor, length: int) -> torch.Tensor:
    """A (2L - 1, d) table for another length, by linear interpolation over the offsets (centre kept)."""
    if table.shape[0] == 2 * length - 1:
        return table
    t = table.t().unsqueeze(0).float()  # (1, d, 2L - 1)
    out = F.interpolate(t, size=2 * length - 1, mode="linear", align_corners=True)
    return out[0].t().to(table.dtype)


class AugmentedConv2d(nn.Module):
    """3x3 conv to Fout - dv channels beside dv channels of 2D relative self-attention: (B, C, H, W) -> (B, Fout, H/s,
    W/s). `feat_size`: the (H, W) the attention runs at (its output's), which fixes the relative tables
    (`set_feat_size` resamples them)."""

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        num_heads: int,
        key_channels: int,
        value_channels: int,
        feat_size: tuple[int, int],
        stride: int = 1,
    ):
        super().__init__()
        if num_heads < 1 or key_channels % num_heads or value_channels % num_heads:
            raise ValueError(
                f"attention-augmented conv: dk={key_channels} and dv={value_channels} (model.aa_key_ratio, "
                f"model.aa_value_ratio) must be multiples of the {num_heads} heads (model.num_heads)"
            )
        if not 0 < value_channels < out_chs:
            raise ValueError(
                f"attention-augmented conv: dv={value_channels} (model.aa_value_ratio) must lie in (0, {out_chs})"
            )
        self.num_heads, self.dk, self.dv, self.stride = num_heads, key_channels, value_channels, stride
        self.feat_size = tuple(feat_size)
        dkh = key_channels // num_heads
        self.scale = dkh**-0.5
        self.conv = nn.Conv2d(in_chs, out_chs - value_channels, 3, stride=stride, padding=1, bias=False)
        self.qkv = nn.Conv2d(in_chs, 2 * key_channels + value_channels, 1, bias=False)
        self.rel_h = nn.Parameter(torch.empty(2 * self.feat_size[0] - 1, dkh))
        self.rel_w = nn.Parameter(torch.empty(2 * self.feat_size[1] - 1, dkh))
        self.proj = nn.Conv2d(value_channels, value_channels, 1, bias=False)  # W_O
        self.pool = nn.AvgPool2d(2, 2, ceil_mode=True) if stride == 2 else nn.Identity()
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Projections N(0, 1/fan_in), embeddings N(0, 1/dk_h); the conv as the network's other convs."""
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")
        nn.init.trunc_normal_(self.qkv.weight, std=self.qkv.in_channels**-0.5)
        nn.init.trunc_normal_(self.proj.weight, std=self.proj.in_channels**-0.5)
        nn.init.trunc_normal_(self.rel_h, std=self.scale)
        nn.init.trunc_normal_(self.rel_w, std=self.scale)

    def set_feat_size(self, feat_size: tuple[int, int]) -> None:
        """Another input size: the relative tables resampled linearly over their offsets."""
        self.feat_size = tuple(feat_size)
        with torch.no_grad():
            self.rel_h = nn.Parameter(resize_relative_table(self.rel_h, self.feat_size[0]))
            self.rel_w = nn.Parameter(resize_relative_table(self.rel_w, self.feat_size[1]))

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """The attention branch before W_O, on the (pooled) input: (B, C, H, W) -> (B, dv, H, W)."""
        b, _, h, w = x.shape
        if (h, w) != self.feat_size:
            raise ValueError(
                f"attention-augmented conv built to attend over {self.feat_size[0]}x{self.feat_size[1]} maps got "
                f"{h}x{w}: build the model for this image size (img_size), or resample it with set_img_size"
            )
        nh = self.num_heads
        q, k, v = self.qkv(x).split((self.dk, self.dk, self.dv), dim=1)
        q = q.reshape(b, nh, self.dk // nh, h, w).permute(0, 1, 3, 4, 2) * self.scale  # (B, nh, H, W, dkh)
        k = k.reshape(b, nh, self.dk // nh, h * w)  # (B, nh, dkh, HW)
        v = v.reshape(b, nh, self.dv // nh, h * w).transpose(-1, -2)  # (B, nh, HW, dvh)
        logits = q.flatten(2, 3) @ k + relative_logits_2d(q, self.rel_h, self.rel_w)  # (B, nh, HW, HW)
        out = logits.softmax(dim=-1) @ v  # (B, nh, HW, dvh)
        return out.transpose(-1, -2).reshape(b, self.dv, h, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> conv channels beside attention channels, (B, Fout, H/s, W/s)."""
        return torch.cat([self.conv(x), self.proj(self.attention(self.pool(x)))], dim=1)


def augmented_conv_macs(in_chs: int, out_chs: int, dk: int, dv: int, h: int, w: int) -> int:
    """Multiply-accumulates of one layer with an h x w output: the conv, projections, logits (content and relative),
    the weighted sum and W_O (the pooling not counted)."""
    hw = h * w
    conv = hw * 9 * in_chs * (out_chs - dv)
    attn = hw * in_chs * (2 * dk + dv) + hw * hw * (dk + dv) + hw * dk * (h + w) + hw * dv * dv
    return conv + attn
