"""The BiT ResNet of the paper's hybrid (Section 3.1): weight-standardised convs, GroupNorm, timm's names.

The hybrid's CNN is ResNet-v2-style BiT without pre-activation (as timm's `vit_base_r50_s16_*` and the official
R50+ViT-B/16): a 7x7/2 root conv and 3x3/2 max pool (stride 4), then bottleneck stages of widths 256, 512,
1024, ... (the first at stride 1, the rest at stride 2). The paper's R50 keeps stages (3, 4, 9): stage 4 is
removed and its blocks moved to stage 3, for a stride-16 feature map. Convolutions and pooling pad "same" as
TensorFlow does (more on the bottom/right). Numerics follow timm (weight-standardisation eps 1e-8, GroupNorm eps
1e-5), whose outputs the tests match; the official Flax code's epsilons differ, so its features differ slightly.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from vitkit.models.checkpointing import run_blocks

ROOT_WIDTH = 64
STAGE_WIDTHS = (256, 512, 1024, 2048)


def backbone_channels(layers: tuple[int, ...]) -> int:
    """Channels of the backbone's output feature map."""
    return STAGE_WIDTHS[len(layers) - 1] if layers else ROOT_WIDTH


def _same_pad(size: int, k: int, s: int) -> tuple[int, int]:
    """TensorFlow 'SAME' padding (before, after) of one axis."""
    total = max((math.ceil(size / s) - 1) * s + k - size, 0)
    return total // 2, total - total // 2


def pad_same(x: torch.Tensor, k: int, s: int, value: float = 0.0) -> torch.Tensor:
    """Pad (B, C, H, W) so that a k x k window at stride s gives ceil(H/s) x ceil(W/s) outputs."""
    top, bottom = _same_pad(x.shape[-2], k, s)
    left, right = _same_pad(x.shape[-1], k, s)
    if top or bottom or left or right:
        x = F.pad(x, (left, right, top, bottom), value=value)
    return x


class StdConv2d(nn.Conv2d):
    """Conv2d with weight standardisation (zero mean, unit variance per output filter) and 'same' padding."""

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int, stride: int = 1, eps: float = 1e-8):
        super().__init__(in_chs, out_chs, kernel_size, stride=stride, padding=0, bias=False)
        self.eps = eps

    def standardized_weight(self) -> torch.Tensor:
        """The weight as used: each output filter standardised (batch_norm statistics over in x k x k)."""
        flat = self.weight.reshape(1, self.out_channels, -1)  # (1, out, in*k*k)
        return F.batch_norm(flat, None, None, training=True, eps=self.eps).reshape_as(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = pad_same(x, self.kernel_size[0], self.stride[0])
        return F.conv2d(x, self.standardized_weight(), None, self.stride)


class GroupNormAct(nn.GroupNorm):
    """GroupNorm (32 groups) followed by ReLU unless `act=False`."""

    def __init__(self, channels: int, act: bool = True, groups: int = 32, eps: float = 1e-5):
        super().__init__(groups, channels, eps=eps)
        self.act = nn.ReLU(inplace=True) if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(super().forward(x))


class MaxPoolSame(nn.Module):
    """3x3/2 max pooling with TensorFlow 'SAME' padding (padded with -inf)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(pad_same(x, 3, 2, value=float("-inf")), 3, 2)


class Root(nn.Sequential):
    """The root: StdConv 7x7/2 to 64 channels, GroupNorm + ReLU, max pool 3x3/2 ((B, C, H, W) -> stride 4)."""

    def __init__(self, in_chans: int):
        super().__init__()
        self.conv = StdConv2d(in_chans, ROOT_WIDTH, 7, stride=2)
        self.norm = GroupNormAct(ROOT_WIDTH)
        self.pool = MaxPoolSame()


class DownsampleConv(nn.Module):
    """The projection shortcut: 1x1 StdConv at the block's stride, GroupNorm without activation."""

    def __init__(self, in_chs: int, out_chs: int, stride: int):
        super().__init__()
        self.conv = StdConv2d(in_chs, out_chs, 1, stride=stride)
        self.norm = GroupNormAct(out_chs, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x))


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (stride) -> 1x1 at a quarter of the output width, each followed by GroupNorm; residual; ReLU."""

    def __init__(self, in_chs: int, out_chs: int, stride: int):
        super().__init__()
        mid = out_chs // 4
        self.downsample = (
            DownsampleConv(in_chs, out_chs, stride) if stride != 1 or in_chs != out_chs else None
        )
        self.conv1 = StdConv2d(in_chs, mid, 1)
        self.norm1 = GroupNormAct(mid)
        self.conv2 = StdConv2d(mid, mid, 3, stride=stride)
        self.norm2 = GroupNormAct(mid)
        self.conv3 = StdConv2d(mid, out_chs, 1)
        self.norm3 = GroupNormAct(out_chs, act=False)
        self.act3 = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        x = self.norm1(self.conv1(x))
        x = self.norm2(self.conv2(x))
        x = self.norm3(self.conv3(x))
        return self.act3(x + shortcut)


class Stage(nn.Module):
    """`depth` bottlenecks; the first changes width and applies the stride."""

    def __init__(self, in_chs: int, out_chs: int, depth: int, stride: int):
        super().__init__()
        self.blocks = nn.Sequential(
            *[
                Bottleneck(in_chs if i == 0 else out_chs, out_chs, stride if i == 0 else 1)
                for i in range(depth)
            ]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)


class ResNetBackbone(nn.Module):
    """Root + bottleneck stages: images (B, C, H, W) -> features (B, C', H/s, W/s), s = `backbone_stride`."""

    def __init__(self, layers: tuple[int, ...], in_chans: int):
        super().__init__()
        self.stem = Root(in_chans)
        stages, c = [], ROOT_WIDTH
        for i, depth in enumerate(layers):
            stages.append(Stage(c, STAGE_WIDTHS[i], depth, 1 if i == 0 else 2))
            c = STAGE_WIDTHS[i]
        self.stages = nn.Sequential(*stages)
        self.norm = nn.Identity()  # timm's name for the pre-activation variant's final norm
        self.grad_checkpointing = False  # recompute each unit's activations in backward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        units = (b for s in self.stages for b in s.blocks)
        return self.norm(run_blocks(units, self.stem(x), self.grad_checkpointing))


def build_backbone(layers: tuple[int, ...], in_chans: int) -> nn.Module:
    """The hybrid's CNN; the root alone when `layers` is empty (timm's module layout for each case)."""
    if len(layers) > len(STAGE_WIDTHS):
        raise ValueError(f"model.backbone={layers!r}: at most {len(STAGE_WIDTHS)} stages")
    return ResNetBackbone(layers, in_chans) if layers else Root(in_chans)


@torch.no_grad()
def he_init_(module: nn.Module) -> None:
    """The ResNets' init (BiT's and timm's): He-normal convs (fan out, zero bias), unit group/batch norms."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.GroupNorm, nn.BatchNorm2d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


@torch.no_grad()
def init_backbone_(backbone: nn.Module) -> None:
    """BiT's init: He-normal convs (fan out), unit norms, the last norm of each residual branch at zero."""
    he_init_(backbone)
    for m in backbone.modules():
        if isinstance(m, Bottleneck):
            nn.init.zeros_(m.norm3.weight)


def backbone_macs(layers: tuple[int, ...], in_chans: int, img_size: tuple[int, int], width: int = 1) -> int:
    """Analytic multiply-accumulates of the backbone's convolutions for one image (channels x `width`)."""
    h, w = math.ceil(img_size[0] / 2), math.ceil(img_size[1] / 2)
    macs = h * w * 49 * in_chans * ROOT_WIDTH * width
    h, w, c = math.ceil(h / 2), math.ceil(w / 2), ROOT_WIDTH * width
    for i, depth in enumerate(layers):
        out = STAGE_WIDTHS[i] * width
        mid = out // 4
        for j in range(depth):
            s = 2 if i > 0 and j == 0 else 1
            ho, wo = math.ceil(h / s), math.ceil(w / s)
            macs += h * w * c * mid + ho * wo * (9 * mid * mid + mid * out)
            if s != 1 or c != out:
                macs += ho * wo * c * out
            h, w, c = ho, wo, out
    return macs


def backbone_params(layers: tuple[int, ...], in_chans: int) -> int:
    """Analytic parameter count of the backbone (convs have no bias; each GroupNorm has 2 x channels)."""
    total = 49 * in_chans * ROOT_WIDTH + 2 * ROOT_WIDTH
    c = ROOT_WIDTH
    for i, depth in enumerate(layers):
        out, mid = STAGE_WIDTHS[i], STAGE_WIDTHS[i] // 4
        for j in range(depth):
            total += c * mid + 9 * mid * mid + mid * out + 2 * (2 * mid + out)
            if j == 0:
                total += c * out + 2 * out
            c = out
    return total
