"""The paper's CNN baseline: BiT (Kolesnikov et al. 2020), a pre-activation ResNet-v2 with GroupNorm and
weight-standardised convolutions, any depth (stage depths) and width factor, with timm's parameter names.

As timm's `resnetv2_<depth>x<width>_bit` and the official BiT PyTorch code: a 7x7/2 root conv (symmetric
padding 3), zero padding 1 and a 3x3/2 max pool (stride 4); pre-activation bottlenecks (GroupNorm + ReLU before
each conv, the stride on the 3x3 conv, a 1x1 projection of the pre-activated input on each stage's first block);
a final GroupNorm + ReLU, global average pooling and a 1x1-conv head. timm's weights load by name.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from vitkit.config import ModelConfig
from vitkit.models.cnn import CNNClassifier, ConvHead
from vitkit.models.layers import Dropout, DropPath
from vitkit.models.resnet import ROOT_WIDTH, STAGE_WIDTHS, GroupNormAct, StdConv2d, backbone_macs, he_init_


class StdConv2dSym(StdConv2d):
    """Weight-standardised conv padded symmetrically by (k - 1) // 2 (BiT's PyTorch layout, not TF 'SAME')."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad = (self.kernel_size[0] - 1) // 2
        return F.conv2d(x, self.standardized_weight(), None, self.stride, pad)


class Stem(nn.Sequential):
    """7x7/2 conv to 64 x width channels, zero pad 1, 3x3/2 max pool: (B, C, H, W) -> (B, 64w, H/4, W/4)."""

    def __init__(self, in_chans: int, width: int):
        super().__init__()
        self.conv = StdConv2dSym(in_chans, width, 7, stride=2)
        self.pad = nn.ConstantPad2d(1, 0.0)
        self.pool = nn.MaxPool2d(3, stride=2)


class Downsample(nn.Module):
    """The projection shortcut of a pre-activation block: a 1x1 conv at the block's stride (no norm)."""

    def __init__(self, in_chs: int, out_chs: int, stride: int):
        super().__init__()
        self.conv = StdConv2dSym(in_chs, out_chs, 1, stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class PreActBottleneck(nn.Module):
    """GN-ReLU-1x1, GN-ReLU-3x3 (stride), GN-ReLU-1x1 at a quarter of the width; plus the shortcut."""

    def __init__(self, in_chs: int, out_chs: int, stride: int, drop_path: float = 0.0):
        super().__init__()
        mid = out_chs // 4
        self.downsample = Downsample(in_chs, out_chs, stride) if stride != 1 or in_chs != out_chs else None
        self.norm1 = GroupNormAct(in_chs)
        self.conv1 = StdConv2dSym(in_chs, mid, 1)
        self.norm2 = GroupNormAct(mid)
        self.conv2 = StdConv2dSym(mid, mid, 3, stride=stride)
        self.norm3 = GroupNormAct(mid)
        self.conv3 = StdConv2dSym(mid, out_chs, 1)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.norm1(x)
        shortcut = x if self.downsample is None else self.downsample(pre)
        x = self.conv1(pre)
        x = self.conv2(self.norm2(x))
        x = self.conv3(self.norm3(x))
        return self.drop_path(x) + shortcut


class Stage(nn.Module):
    """`len(drop_paths)` blocks; the first changes the width and applies the stride."""

    def __init__(self, in_chs: int, out_chs: int, stride: int, drop_paths: list[float]):
        super().__init__()
        self.blocks = nn.Sequential(
            *[
                PreActBottleneck(in_chs if i == 0 else out_chs, out_chs, stride if i == 0 else 1, p)
                for i, p in enumerate(drop_paths)
            ]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)


class BiTResNet(CNNClassifier):
    """BiT ResNet-v2 classifier: stem, pre-activation bottleneck stages, GroupNorm + ReLU, pooled 1x1-conv head."""

    def __init__(self, cfg: ModelConfig, weights_follow: bool = False):
        super().__init__()
        if cfg.arch != "bit":
            raise ValueError(f"BiTResNet needs a config with arch='bit', got arch={cfg.arch!r} ({cfg.name})")
        self.cfg = cfg
        wf, layers = cfg.width_factor, cfg.backbone
        self.num_classes = cfg.num_classes
        self.stem = Stem(cfg.in_chans, ROOT_WIDTH * wf)
        total, done, stages, c = sum(layers), 0, [], ROOT_WIDTH * wf
        for i, depth in enumerate(layers):  # stochastic depth rising linearly over all blocks
            dpr = [cfg.drop_path_rate * (done + j) / max(total - 1, 1) for j in range(depth)]
            stages.append(Stage(c, STAGE_WIDTHS[i] * wf, 1 if i == 0 else 2, dpr))
            c, done = STAGE_WIDTHS[i] * wf, done + depth
        self.stages = nn.Sequential(*stages)
        self.num_features = c
        self.norm = GroupNormAct(c)
        self.head = ConvHead(c, cfg.num_classes, cfg.drop_rate) if cfg.num_classes else None
        for i, m in enumerate(m for m in self.modules() if isinstance(m, (Dropout, DropPath))):
            m.rng_id = i + 1  # keyed dropout: each layer draws its own masks
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """BiT's init as timm's: He-normal convs (fan out), unit norms, the head N(0, 0.01) or zero."""
        he_init_(self)
        if self.head is not None:
            self.head.reset_parameters(zero=self.cfg.head_init == "zero")

    def no_weight_decay(self) -> set[str]:
        """Parameter names excluded from weight decay beyond biases and norms (none)."""
        return set()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) -> the final feature map after GroupNorm + ReLU, (B, C', H/32, W/32)."""
        self.check_images(x)
        return self.norm(self.run_stages(self.stem(x)))

    def set_img_size(self, img_size: int | tuple[int, int], mode: str = "bilinear") -> None:
        """A CNN takes any size: only the config's image size changes (`mode` is for the ViT's embeddings)."""
        self.cfg = dataclasses.replace(self.cfg, img_size=img_size)


def bit_macs(cfg: ModelConfig) -> int:
    """Analytic multiply-accumulates of one forward pass of one image: the convolutions (the hybrid's count, the
    same shapes) and the head."""
    channels = STAGE_WIDTHS[len(cfg.backbone) - 1] * cfg.width_factor
    return (
        backbone_macs(cfg.backbone, cfg.in_chans, cfg.img_size, cfg.width_factor) + channels * cfg.num_classes
    )


def bit_params(cfg: ModelConfig) -> int:
    """Analytic parameter count (matches `sum(p.numel())` of the built model)."""
    wf = cfg.width_factor
    c = ROOT_WIDTH * wf
    total = 49 * cfg.in_chans * c
    for i, depth in enumerate(cfg.backbone):
        out = STAGE_WIDTHS[i] * wf
        mid = out // 4
        for j in range(depth):
            total += 2 * c + c * mid + 2 * mid + 9 * mid * mid + 2 * mid + mid * out
            if j == 0 and (i > 0 or c != out):
                total += c * out
            c = out
    head = c * cfg.num_classes + cfg.num_classes if cfg.num_classes else 0
    return total + 2 * c + head
