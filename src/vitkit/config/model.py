"""The model's configuration: the ViT's options, its hybrid and the CNN baselines', checked on construction."""

from __future__ import annotations

import math
import numbers
import re
from dataclasses import dataclass
from typing import Any

ARCHS = ("vit", "bit", "resnet", "sasa", "aa")
CNN_ARCHS = ARCHS[1:]
POOLS = ("token", "gap")
POSEMBS = ("learn", "learn2d", "sincos2d", "relative", "none")
HEAD_INITS = ("default", "zero")
ATTN_INITS = ("default", "mimetic")
WEIGHT_INITS = ("default", "official")
MLP_ACTS = ("gelu", "gelu_tanh")
INT_FIELDS = (
    "patch_size", "in_chans", "num_classes", "embed_dim", "depth", "num_heads", "mlp_dim", "representation_size",
    "width_factor", "sasa_window",
)  # fmt: skip


def _is_int(v: Any) -> bool:
    """An integer (numpy's too), not a bool."""
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _pair(value: int | tuple[int, int] | list[int], key: str = "model.img_size") -> tuple[int, int]:
    """Return `value` as an (H, W) pair of positive ints; anything else is an error naming `key`."""
    pair = (value, value) if _is_int(value) else value
    if (
        isinstance(pair, str)
        or not isinstance(pair, (tuple, list))
        or len(pair) != 2
        or not all(map(_is_int, pair))
    ):
        raise ValueError(f"{key}={value!r}: expected an int or an (H, W) pair of ints")
    if min(pair) < 1:
        raise ValueError(f"{key}={value!r}: both sides must be positive")
    return tuple(int(v) for v in pair)  # type: ignore[return-value]


def backbone_stride(layers: tuple[int, ...]) -> int:
    """Pixels per feature-map cell of the hybrid's ResNet: 4 for the root, x2 per stage after the first."""
    return 4 * 2 ** max(len(layers) - 1, 0)


BIT_NAME = re.compile(r"^BiT-R(\d+)x(\d+)$", re.IGNORECASE)
RESNET_NAME = re.compile(r"^(SASA-|AA-)?ResNet-(\d+)$", re.IGNORECASE)
# the fields a registry name (ViT-B/16, R50+ViT-B/16, BiT-R50x1, SASA-ResNet-26) fixes
ARCH_FIELDS = (
    "name", "arch", "width_factor", "patch_size", "embed_dim", "depth", "num_heads", "mlp_dim", "backbone",
)  # fmt: skip
# fields the CNN baselines do not read (but those in CNN_READS): a value other than the default is an error
VIT_ONLY = (
    "patch_size", "embed_dim", "depth", "num_heads", "mlp_dim", "pool", "posemb", "posemb_grid",
    "representation_size", "attn_drop_rate", "qkv_bias", "norm_eps", "attn_init", "head_drop_rate", "mlp_act",
    "dynamic_img_size", "weight_init",
)  # fmt: skip
CNN_READS = {"sasa": ("num_heads",), "aa": ("num_heads",)}  # ViT fields a CNN baseline reads too
# The batch-norm ResNets of the attention baselines (resnet, sasa, aa), by depth: 26 and 38 as the SASA paper
# (ResNet-50 with 2 and 1 blocks fewer per stage), 50/101/152 as He et al. (timm's resnet26 is another layout).
RESNET_DEPTHS: dict[int, tuple[int, ...]] = {
    26: (1, 2, 4, 1),
    38: (2, 3, 5, 2),
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
}
ARCH_ONLY = {
    "width_factor": "bit",
    "sasa_window": "sasa",
    "sasa_stem": "sasa",
    "aa_key_ratio": "aa",
    "aa_value_ratio": "aa",
}
SASA_STEMS = ("conv", "attention")


def bit_depth(layers: tuple[int, ...]) -> int:
    """A bottleneck ResNet's depth as its name gives it: the conv layers on the main path (3 per block, +2)."""
    return 3 * sum(layers) + 2


def cnn_name(arch: str, layers: tuple[int, ...], width: int = 1) -> str:
    """The registry name of a CNN baseline: BiT-R50x1, ResNet-50, SASA-ResNet-26, AA-ResNet-50."""
    depth = bit_depth(layers)
    prefix = {"resnet": "", "sasa": "SASA-", "aa": "AA-"}
    return f"BiT-R{depth}x{width}" if arch == "bit" else f"{prefix[arch]}ResNet-{depth}"


def head_channels(ratio: float, channels: int, num_heads: int) -> int:
    """`ratio` x `channels` rounded to a multiple of the heads, at least one channel per head (AA's dk and dv)."""
    return max(round(ratio * channels / num_heads), 1) * num_heads


def _check_choice(key: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise ValueError(f"{key}={value!r} is not one of {', '.join(map(repr, choices))}")


def _check_finite(section: str, cfg: Any) -> None:
    """Refuse inf and NaN in a config's numbers (JSON has neither: config.json would hold null and not load back),
    naming the key."""
    for key in cfg.__dataclass_fields__:
        value = getattr(cfg, key)
        values = value if isinstance(value, tuple) else (value,)
        if any(isinstance(v, float) and not math.isfinite(v) for v in values):
            raise ValueError(f"{section}.{key}={value!r} must be finite")


def _check_range(key: str, value: float, lo: float, hi: float, below: bool = False) -> None:
    """lo <= value <= hi (value < hi when `below`: a probability of 1 that would leave nothing to learn)."""
    if not lo <= value <= hi or (below and value == hi):
        raise ValueError(f"{key}={value!r} must lie in [{lo}, {hi}{')' if below else ']'}")


@dataclass(frozen=True)
class ModelConfig:
    """A Vision Transformer: the paper's encoder and the options its appendix ablates; or its BiT baseline.

    `arch="bit"`: the paper's CNN baseline, a BiT ResNet-v2 (pre-activation, GroupNorm, weight standardisation)
    of stage depths `backbone` and width `width_factor`. `arch="resnet"`: a batch-norm ResNet (He et al.);
    `"sasa"`: it with stand-alone local self-attention (`num_heads`, window `sasa_window`) for each 3x3 conv
    and a conv or attention stem (`sasa_stem`);
    `"aa"`: it with attention-augmented 3x3 convs (`num_heads`, dk = `aa_key_ratio` and dv = `aa_value_ratio`
    x the conv's channels) in the last three stages. Their stage depths are the named ResNet's (RESNET_DEPTHS);
    the registry's names set 8 heads (the dataclass default, 3, is ViT-Ti's). The CNNs read img_size, in_chans,
    num_classes, drop_rate (before the head), drop_path_rate, head_init and their own fields; another field set on
    them is an error.
    """

    name: str = "ViT-Ti/16"
    arch: str = "vit"  # "vit" | the CNN baselines "bit", "resnet", "sasa", "aa"
    img_size: tuple[int, int] = (224, 224)
    patch_size: int = 16
    in_chans: int = 3
    num_classes: int = 1000
    embed_dim: int = 192
    depth: int = 12
    num_heads: int = 3
    mlp_dim: int = 768
    pool: str = "token"  # "token": class token; "gap": encoder norm, then mean over patch tokens
    posemb: str = "learn"  # "learn" (1D, the paper's default) | "learn2d" | "sincos2d" | "relative" | "none"
    posemb_grid: tuple[int, int] | None = None  # sincos2d moved to another size: the grid it was trained on
    representation_size: int | None = None  # pre-logits Linear+tanh of pre-training
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    head_drop_rate: float | None = None  # before the head; None: drop_rate as timm (the official code: none)
    drop_path_rate: float = 0.0
    qkv_bias: bool = True
    norm_eps: float = 1e-6
    mlp_act: str = "gelu"  # "gelu" (erf: timm, transformers) | "gelu_tanh" (the official JAX code's)
    dynamic_img_size: bool = False  # any multiple of the token stride, posemb resampled per forward (timm's)
    head_init: str = "default"  # "zero" for fine-tuning, as the paper
    attn_init: str = "default"  # "mimetic": W_q^T W_k ~ I, W_v^T W_o^T ~ -I (Trockman & Kolter 2023)
    # "official": the official JAX code's initialisation where timm's differs (see VisionTransformer.reset_parameters)
    weight_init: str = "default"
    backbone: tuple[int, ...] | None = None  # hybrid: ResNet stage depths (R50: 3,4,9); () the root only
    width_factor: int = 1  # arch="bit": channels x this (BiT-R50x3: 3)
    sasa_window: int = 7  # arch="sasa": each pixel attends to this k x k neighbourhood (the paper's k = 7)
    sasa_stem: str = (
        "conv"  # arch="sasa": "conv" (7x7/2 conv, 3x3/2 max pool) | "attention" (the paper's stem)
    )
    aa_key_ratio: float = 0.2  # arch="aa": kappa = dk / Fout (the paper's ResNets: kappa = 2 upsilon = 0.2)
    aa_value_ratio: float = 0.1  # arch="aa": upsilon = dv / Fout, the attention's share of the channels

    def __post_init__(self) -> None:
        _check_finite("model", self)
        object.__setattr__(self, "img_size", _pair(self.img_size))
        for key in ("name", "arch", "pool", "posemb", "mlp_act", "head_init", "attn_init", "weight_init"):
            if not isinstance(getattr(self, key), str):
                raise ValueError(f"model.{key}={getattr(self, key)!r} must be a string")
        # numpy's integers as Python's (timm takes them); floats, bools and text refused
        for key in INT_FIELDS:
            v = getattr(self, key)
            if v is None and key == "representation_size":
                continue
            if not _is_int(v):
                raise ValueError(f"model.{key}={v!r} must be an integer")
            object.__setattr__(self, key, int(v))
        for key in ("qkv_bias", "dynamic_img_size"):
            if not isinstance(getattr(self, key), bool):
                raise ValueError(f"model.{key}={getattr(self, key)!r} must be True or False")
        _check_choice("model.arch", self.arch, ARCHS)
        if self.backbone is not None:
            try:
                layers = tuple(int(v) for v in self.backbone)
                if any(int(v) != v for v in self.backbone):
                    layers = (0,)
            except (TypeError, ValueError):
                layers = (0,)
            if isinstance(self.backbone, str) or len(layers) > 4 or any(v < 1 for v in layers):
                raise ValueError(
                    f"model.backbone={self.backbone!r}: up to 4 positive ResNet stage depths, e.g. (3, 4, 9)"
                )
            object.__setattr__(self, "backbone", layers)
        for key in ("patch_size", "in_chans", "embed_dim", "depth", "num_heads", "mlp_dim", "width_factor"):
            if getattr(self, key) < 1:
                raise ValueError(f"model.{key}={getattr(self, key)!r} must be a positive integer")
        for key in (
            "drop_rate",
            "attn_drop_rate",
            "drop_path_rate",
            "aa_key_ratio",
            "aa_value_ratio",
            "norm_eps",
        ):
            if not isinstance(getattr(self, key), (int, float)) or isinstance(getattr(self, key), bool):
                raise ValueError(f"model.{key}={getattr(self, key)!r} must be a number")
        if self.num_classes < 0:
            raise ValueError(f"model.num_classes={self.num_classes!r} must be >= 0 (0: no head)")
        defaults = ModelConfig.__dataclass_fields__
        for key, arch in ARCH_ONLY.items():
            if self.arch != arch and getattr(self, key) != defaults[key].default:
                raise ValueError(
                    f"model.{key}={getattr(self, key)!r} applies to arch={arch!r} only (this model: "
                    f"arch={self.arch!r}, {self.name}); leave it at {defaults[key].default!r}"
                )
        if self.arch in CNN_ARCHS:
            self._check_cnn()
            return
        h, w = self.img_size
        p = self.token_stride
        if h < 1 or w < 1 or h % p or w % p:
            what = "patch size" if self.backbone is None else "hybrid's token stride (ResNet stride x patch)"
            raise ValueError(
                f"image size {h}x{w} is not divisible by the {what} {p}: "
                f"choose an image size that is a multiple of {p}"
            )
        if self.embed_dim % self.num_heads:
            raise ValueError(
                f"width {self.embed_dim} is not divisible by the number of heads {self.num_heads}"
            )
        _check_choice("model.pool", self.pool, POOLS)
        _check_choice("model.posemb", self.posemb, POSEMBS)
        if self.posemb_grid is not None:
            ref = _pair(self.posemb_grid, "model.posemb_grid")
            if min(ref) < 1 or self.posemb != "sincos2d":
                raise ValueError(
                    f"model.posemb_grid={self.posemb_grid!r}: a positive grid, for posemb='sincos2d' only "
                    f"(this model has posemb={self.posemb!r})"
                )
            object.__setattr__(self, "posemb_grid", None if ref == self.grid_size else ref)
        _check_choice("model.head_init", self.head_init, HEAD_INITS)
        _check_choice("model.attn_init", self.attn_init, ATTN_INITS)
        _check_choice("model.weight_init", self.weight_init, WEIGHT_INITS)
        _check_choice("model.mlp_act", self.mlp_act, MLP_ACTS)
        if self.posemb == "relative" and self.dynamic_img_size:
            raise ValueError(
                "model.posemb='relative' (1-D relative attention over the tokens in raster order) holds one grid: "
                "it cannot take dynamic_img_size=True"
            )
        if self.posemb in ("learn2d", "sincos2d") and self.embed_dim % 4:
            raise ValueError(f"posemb={self.posemb!r} needs a width divisible by 4, got {self.embed_dim}")
        if self.representation_size is not None and self.representation_size < 1:
            raise ValueError(f"model.representation_size={self.representation_size!r} must be positive")
        # a drop_rate of 1 zeroes the embeddings and the head's input: nothing to learn (attention dropout or a
        # drop-path rate of 1, the last block's, leave the rest of the model its work)
        _check_range("model.drop_rate", self.drop_rate, 0.0, 1.0, below=True)
        for key in ("attn_drop_rate", "drop_path_rate"):
            _check_range(f"model.{key}", getattr(self, key), 0.0, 1.0)
        if self.head_drop_rate is not None:
            if not isinstance(self.head_drop_rate, (int, float)) or isinstance(self.head_drop_rate, bool):
                raise ValueError(f"model.head_drop_rate={self.head_drop_rate!r} must be a number or None")
            _check_range("model.head_drop_rate", self.head_drop_rate, 0.0, 1.0, below=True)
        if self.norm_eps <= 0:
            raise ValueError(f"model.norm_eps={self.norm_eps!r} must be positive")

    def _check_cnn(self) -> None:
        """The CNN baselines' own checks: stage depths that the name states, no ViT-only option, their options."""
        if not self.backbone:
            raise ValueError(
                f"model.arch={self.arch!r} needs model.backbone: 1 to 4 ResNet stage depths, e.g. (3, 4, 6, 3) for "
                f"a ResNet-50; got {self.backbone!r}"
            )
        want = cnn_name(self.arch, self.backbone, self.width_factor)
        if self.name.lower() != want.lower():
            what = "BiT-R<conv layers>x<width>" if self.arch == "bit" else "[SASA-|AA-]ResNet-<conv layers>"
            raise ValueError(
                f"model.name={self.name!r} does not describe arch={self.arch!r} with model.backbone={self.backbone}"
                + (f" and model.width_factor={self.width_factor}" if self.arch == "bit" else "")
                + f": that model is {want!r} ({what}); choose the model with --model, or set the name to match"
            )
        depth = bit_depth(self.backbone)
        if self.arch != "bit" and self.backbone != RESNET_DEPTHS.get(depth):
            raise ValueError(
                f"model.backbone={self.backbone}: {self.name} has the stage depths {RESNET_DEPTHS.get(depth)}; the "
                f"ResNets are {', '.join(f'{d}: {v}' for d, v in RESNET_DEPTHS.items())}"
            )
        defaults = ModelConfig.__dataclass_fields__
        for key in VIT_ONLY:
            if key not in CNN_READS.get(self.arch, ()) and getattr(self, key) != defaults[key].default:
                raise ValueError(
                    f"model.{key}={getattr(self, key)!r} is a ViT option; the {self.arch.upper()} baseline "
                    f"{self.name} does not read it (leave it at {defaults[key].default!r})"
                )
        if min(self.img_size) < 1:
            raise ValueError(f"model.img_size={self.img_size!r} must be positive")
        _check_choice("model.head_init", self.head_init, HEAD_INITS)
        _check_range("model.drop_rate", self.drop_rate, 0.0, 1.0, below=True)
        _check_range("model.drop_path_rate", self.drop_path_rate, 0.0, 1.0)
        if self.arch == "sasa":
            if self.sasa_window < 1 or self.sasa_window % 2 == 0:
                raise ValueError(f"model.sasa_window={self.sasa_window!r}: an odd neighbourhood size, e.g. 7")
            _check_choice("model.sasa_stem", self.sasa_stem, SASA_STEMS)
            if self.sasa_stem == "attention" and (self.img_size[0] % 4 or self.img_size[1] % 4):
                raise ValueError(
                    f"model.sasa_stem='attention' attends within 4x4 blocks: image size "
                    f"{self.img_size[0]}x{self.img_size[1]} must be a multiple of 4 on each side (e.g. 28, 32, 224)"
                )
            for i in range(len(self.backbone)):  # each stage's attention width: 64, 128, 256, 512
                if (64 << i) % (2 * self.num_heads):
                    raise ValueError(
                        f"model.num_heads={self.num_heads!r}: stage {i + 1}'s {64 << i} attention channels must "
                        "split into heads of an even width (half row, half column offsets), e.g. 8 heads"
                    )
        if self.arch == "aa":
            if not self.aa_key_ratio > 0:
                raise ValueError(
                    f"model.aa_key_ratio={self.aa_key_ratio!r} must be positive (dk = it x channels)"
                )
            if not 0 < self.aa_value_ratio < 1:
                raise ValueError(
                    f"model.aa_value_ratio={self.aa_value_ratio!r} must lie in (0, 1): the attention's share of the "
                    "channels (dv = it x channels)"
                )
            for i in range(1, len(self.backbone)):  # the augmented stages' 3x3 convs: 128, 256, 512 channels
                dv = head_channels(self.aa_value_ratio, 64 << i, self.num_heads)
                if dv >= 64 << i:
                    raise ValueError(
                        f"model.aa_value_ratio={self.aa_value_ratio!r} with model.num_heads={self.num_heads}: stage "
                        f"{i + 1}'s {64 << i} channels would give the attention dv={dv}; it must leave the conv some "
                        "(a ratio in (0, 1), dv a multiple of the heads below the channels)"
                    )

    @property
    def token_stride(self) -> int:
        """Pixels per token along each axis: the patch size, times the ResNet's stride for a hybrid."""
        if self.arch != "vit":
            raise ValueError(f"{self.name} is a CNN (arch={self.arch!r}): it has no tokens, patches or grid")
        return self.patch_size * (1 if self.backbone is None else backbone_stride(self.backbone))

    @property
    def grid_size(self) -> tuple[int, int]:
        """Patches along (height, width)."""
        return (self.img_size[0] // self.token_stride, self.img_size[1] // self.token_stride)

    @property
    def num_patches(self) -> int:
        return self.grid_size[0] * self.grid_size[1]

    @property
    def num_prefix_tokens(self) -> int:
        return 1 if self.pool == "token" else 0

    @property
    def num_tokens(self) -> int:
        return self.num_patches + self.num_prefix_tokens
