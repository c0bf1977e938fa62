"""The attention baselines the paper cites and their ResNet control: a ResNet (He et al. 2016, batch norm,
bottlenecks, the stride on the 3x3 conv as torchvision's and timm's `resnet50`), and the same network with each
bottleneck's 3x3 conv replaced by stand-alone local self-attention (SASA, Ramachandran et al. 2019: every block,
the conv stem or, with `model.sasa_stem="attention"`, the paper's attention stem) or augmented by global relative self-attention (AA, Bello et al. 2019: the blocks of the last three
stages, the first stage's large maps stay convolutional, as the paper augments "from the last layer until memory
runs out").

Stage depths as the SASA paper's ResNet-26/38/50 ((1, 2, 4, 1), (2, 3, 5, 2), (3, 4, 6, 3)) and the usual
ResNet-101/152. Parameter names are vitkit's (`stem.conv`, `stages.S.blocks.B.conv2`, `head.fc`, ...), one
mapping away from timm's ResNet (`convert/resnet.py`).
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from vitkit.config import ModelConfig, head_channels
from vitkit.models.augmented_conv import AugmentedConv2d, augmented_conv_macs
from vitkit.models.cnn import CNNClassifier, ConvHead
from vitkit.models.layers import Dropout, DropPath
from vitkit.models.local_attention import (
    AttentionStem,
    LocalSelfAttention2d,
    attention_stem_macs,
    attention_stem_params,
    local_attention_macs,
)
from vitkit.models.resnet import ROOT_WIDTH, STAGE_WIDTHS, he_init_


def _half(size: int) -> int:
    """Output length of a stride-2 conv/pool padded to keep ceil(size / 2)."""
    return -(-size // 2)


def block_plan(cfg: ModelConfig) -> list[dict]:
    """Every bottleneck in order: stage, channels in/mid/out, stride, its input map (h, w), its output map (ho, wo),
    its spatial layer ("conv" | "sasa" | "aa") and an AA layer's dk, dv. The one description that building, MACs
    and parameters read."""
    # either stem: H/4 (attention: H % 4 == 0)
    h, w = _half(_half(cfg.img_size[0])), _half(_half(cfg.img_size[1]))
    plan, c = [], ROOT_WIDTH
    for i, depth in enumerate(cfg.backbone):
        out = STAGE_WIDTHS[i]
        for j in range(depth):
            stride = 2 if i > 0 and j == 0 else 1
            layer = {"resnet": "conv", "sasa": "sasa", "aa": "aa" if i > 0 else "conv"}[cfg.arch]
            ho, wo = (_half(h), _half(w)) if stride == 2 else (h, w)
            p = dict(
                stage=i, cin=c, mid=out // 4, out=out, stride=stride, h=h, w=w, ho=ho, wo=wo, layer=layer
            )
            if layer == "aa":
                p["dk"] = head_channels(cfg.aa_key_ratio, out // 4, cfg.num_heads)
                p["dv"] = head_channels(cfg.aa_value_ratio, out // 4, cfg.num_heads)
            plan.append(p)
            h, w, c = ho, wo, out
    return plan


def spatial_layer(cfg: ModelConfig, p: dict) -> nn.Module:
    """The bottleneck's middle layer: a 3x3 conv, SASA local attention or an attention-augmented conv."""
    mid, stride = p["mid"], p["stride"]
    if p["layer"] == "sasa":
        return LocalSelfAttention2d(mid, mid, cfg.num_heads, cfg.sasa_window, stride)
    if p["layer"] == "aa":
        return AugmentedConv2d(mid, mid, cfg.num_heads, p["dk"], p["dv"], (p["ho"], p["wo"]), stride)
    return nn.Conv2d(mid, mid, 3, stride=stride, padding=1, bias=False)


class Stem(nn.Sequential):
    """7x7/2 conv, batch norm, ReLU, 3x3/2 max pool: (B, C, H, W) -> (B, 64, H/4, W/4)."""

    def __init__(self, in_chans: int):
        super().__init__()
        self.conv = nn.Conv2d(in_chans, ROOT_WIDTH, 7, stride=2, padding=3, bias=False)
        self.norm = nn.BatchNorm2d(ROOT_WIDTH)
        self.act = nn.ReLU(inplace=True)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)


class Downsample(nn.Sequential):
    """The projection shortcut: a 1x1 conv at the block's stride and batch norm."""

    def __init__(self, in_chs: int, out_chs: int, stride: int):
        super().__init__()
        self.conv = nn.Conv2d(in_chs, out_chs, 1, stride=stride, bias=False)
        self.norm = nn.BatchNorm2d(out_chs)


class Bottleneck(nn.Module):
    """1x1, spatial layer (stride), 1x1 at a quarter of the width, each with batch norm; residual; ReLU."""

    def __init__(self, cfg: ModelConfig, p: dict, drop_path: float):
        super().__init__()
        cin, mid, out = p["cin"], p["mid"], p["out"]
        self.downsample = Downsample(cin, out, p["stride"]) if p["stride"] != 1 or cin != out else None
        self.conv1 = nn.Conv2d(cin, mid, 1, bias=False)
        self.norm1 = nn.BatchNorm2d(mid)
        self.conv2 = spatial_layer(cfg, p)
        self.norm2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, out, 1, bias=False)
        self.norm3 = nn.BatchNorm2d(out)
        self.act = nn.ReLU(inplace=True)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, Cin, H, W) -> (B, Cout, H/s, W/s)."""
        shortcut = x if self.downsample is None else self.downsample(x)
        x = self.act(self.norm1(self.conv1(x)))
        x = self.act(self.norm2(self.conv2(x)))
        x = self.drop_path(self.norm3(self.conv3(x)))
        x += shortcut  # in place, as timm: 1.04x timm's ResNet-50 inference here, 0.96x with a new tensor
        return self.act(x)


class Stage(nn.Module):
    """A stage's bottlenecks (the first changes the width and applies the stride)."""

    def __init__(self, blocks: list[Bottleneck]):
        super().__init__()
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, Cin, H, W) -> (B, Cout, H/s, W/s)."""
        return self.blocks(x)


class ResNetV1(CNNClassifier):
    """ResNet / SASA / AA classifier: conv (or SASA's attention) stem, bottleneck stages, global average pooling,
    1x1-conv head."""

    def __init__(self, cfg: ModelConfig, weights_follow: bool = False):
        super().__init__()
        if cfg.arch not in ("resnet", "sasa", "aa"):
            raise ValueError(
                f"ResNetV1 needs arch 'resnet', 'sasa' or 'aa', got arch={cfg.arch!r} ({cfg.name})"
            )
        self.cfg = cfg
        self.num_classes = cfg.num_classes
        attention_stem = cfg.arch == "sasa" and cfg.sasa_stem == "attention"
        self.stem = (
            AttentionStem(cfg.in_chans, ROOT_WIDTH, cfg.num_heads) if attention_stem else Stem(cfg.in_chans)
        )
        plan = block_plan(cfg)
        rates = [cfg.drop_path_rate * n / max(len(plan) - 1, 1) for n in range(len(plan))]
        self.stages = nn.Sequential(
            *[
                Stage([Bottleneck(cfg, p, r) for p, r in zip(plan, rates) if p["stage"] == i])
                for i in range(len(cfg.backbone))
            ]
        )
        self.num_features = plan[-1]["out"]
        self.head = ConvHead(self.num_features, cfg.num_classes, cfg.drop_rate) if cfg.num_classes else None
        for i, m in enumerate(m for m in self.modules() if isinstance(m, (Dropout, DropPath))):
            m.rng_id = i + 1  # keyed dropout: each layer draws its own masks
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """timm's ResNet init: He-normal convs (fan out), unit norms, each block's last norm at zero (so a block
        starts as its shortcut), attention layers their own init; the head N(0, 0.01) or zero."""
        he_init_(self)
        for m in self.modules():
            if isinstance(m, (LocalSelfAttention2d, AugmentedConv2d, AttentionStem)):
                m.reset_parameters()
            elif isinstance(m, Bottleneck):
                nn.init.zeros_(m.norm3.weight)
        if self.head is not None:
            self.head.reset_parameters(zero=self.cfg.head_init == "zero")

    def no_weight_decay(self) -> set[str]:
        """Parameter names excluded from weight decay beyond biases and norms: the relative embeddings and the
        attention stem's position-dependent mixture tables."""
        ends = ("rel_row", "rel_col", "rel_h", "rel_w", "mix_row", "mix_col")
        return {n for n, _ in self.named_parameters() if n.endswith(ends)}

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) -> the last stage's feature map (B, C', H/32, W/32)."""
        self.check_images(x)
        return self.run_stages(self.stem(x))

    def set_img_size(self, img_size: int | tuple[int, int], mode: str = "bilinear") -> None:
        """Another input size: the AA layers' relative tables resampled to their new maps (`mode` is the ViT's)."""
        self.cfg = dataclasses.replace(self.cfg, img_size=img_size)
        for block, p in zip(self.blocks, block_plan(self.cfg)):
            if isinstance(block.conv2, AugmentedConv2d):
                block.conv2.set_feat_size((p["ho"], p["wo"]))


def resnet_v1_macs(cfg: ModelConfig) -> int:
    """Analytic multiply-accumulates of one forward pass of one image (convs, attention, head; norms not counted)."""
    if cfg.arch == "sasa" and cfg.sasa_stem == "attention":
        macs = attention_stem_macs(cfg.in_chans, ROOT_WIDTH, *cfg.img_size)
    else:
        macs = _half(cfg.img_size[0]) * _half(cfg.img_size[1]) * 49 * cfg.in_chans * ROOT_WIDTH
    for p in block_plan(cfg):
        cin, mid, out, s = p["cin"], p["mid"], p["out"], p["stride"]
        h, w, ho, wo = p["h"], p["w"], p["ho"], p["wo"]
        macs += h * w * cin * mid + ho * wo * mid * out
        if p["layer"] == "conv":
            macs += ho * wo * 9 * mid * mid
        elif p["layer"] == "sasa":
            macs += local_attention_macs(mid, mid, h, w, cfg.sasa_window)
        else:
            macs += augmented_conv_macs(mid, mid, p["dk"], p["dv"], ho, wo)
        if s != 1 or cin != out:
            macs += ho * wo * cin * out
    return macs + block_plan(cfg)[-1]["out"] * cfg.num_classes


def resnet_v1_params(cfg: ModelConfig) -> int:
    """Analytic parameter count (matches `sum(p.numel())` of the built model)."""
    if cfg.arch == "sasa" and cfg.sasa_stem == "attention":
        total = attention_stem_params(cfg.in_chans, ROOT_WIDTH)
    else:
        total = 49 * cfg.in_chans * ROOT_WIDTH + 2 * ROOT_WIDTH
    for p in block_plan(cfg):
        cin, mid, out = p["cin"], p["mid"], p["out"]
        total += cin * mid + mid * out + 2 * (2 * mid + out)
        if p["layer"] == "conv":
            total += 9 * mid * mid
        elif p["layer"] == "sasa":
            total += 3 * mid * mid + 2 * (mid // 2) * cfg.sasa_window
        else:
            dk, dv = p["dk"], p["dv"]
            total += 9 * mid * (mid - dv) + mid * (2 * dk + dv) + dv * dv
            total += (2 * p["ho"] - 1 + 2 * p["wo"] - 1) * (dk // cfg.num_heads)
        if p["stride"] != 1 or cin != out:
            total += cin * out + 2 * out
    c = block_plan(cfg)[-1]["out"]
    return total + (c * cfg.num_classes + cfg.num_classes if cfg.num_classes else 0)
