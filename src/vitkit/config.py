"""Configuration as code: frozen dataclasses and type-checked `key=value` overrides."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from vitkit.atomic import write_json

ARCHS = ("vit", "bit", "resnet", "sasa", "aa")
CNN_ARCHS = ARCHS[1:]
POOLS = ("token", "gap")
POSEMBS = ("learn", "learn2d", "sincos2d", "none")
HEAD_INITS = ("default", "zero")
ATTN_INITS = ("default", "mimetic")


def _pair(value: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    """Return `value` as an (H, W) pair of ints."""
    if isinstance(value, int):
        return (value, value)
    pair = tuple(int(v) for v in value)
    if len(pair) != 2:
        raise ValueError(f"expected an int or an (H, W) pair, got {value!r}")
    return pair  # type: ignore[return-value]


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
    "representation_size", "attn_drop_rate", "qkv_bias", "norm_eps", "attn_init",
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


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune-no-cudagraphs")
COMPILE_SCOPES = ("model", "blocks")


def _check_choice(key: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise ValueError(f"{key}={value!r} is not one of {', '.join(map(repr, choices))}")


def _check_range(key: str, value: float, lo: float, hi: float) -> None:
    if not lo <= value <= hi:
        raise ValueError(f"{key}={value!r} must lie in [{lo}, {hi}]")


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
    posemb: str = "learn"  # "learn" (1D, the paper's default) | "learn2d" | "sincos2d" | "none"
    posemb_grid: tuple[int, int] | None = None  # sincos2d moved to another size: the grid it was trained on
    representation_size: int | None = None  # pre-logits Linear+tanh of pre-training
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    qkv_bias: bool = True
    norm_eps: float = 1e-6
    head_init: str = "default"  # "zero" for fine-tuning, as the paper
    attn_init: str = "default"  # "mimetic": W_q^T W_k ~ I, W_v^T W_o^T ~ -I (Trockman & Kolter 2023)
    backbone: tuple[int, ...] | None = None  # hybrid: ResNet stage depths (R50: 3,4,9); () the root only
    width_factor: int = 1  # arch="bit": channels x this (BiT-R50x3: 3)
    sasa_window: int = 7  # arch="sasa": each pixel attends to this k x k neighbourhood (the paper's k = 7)
    sasa_stem: str = (
        "conv"  # arch="sasa": "conv" (7x7/2 conv, 3x3/2 max pool) | "attention" (the paper's stem)
    )
    aa_key_ratio: float = 0.2  # arch="aa": kappa = dk / Fout (the paper's ResNets: kappa = 2 upsilon = 0.2)
    aa_value_ratio: float = 0.1  # arch="aa": upsilon = dv / Fout, the attention's share of the channels

    def __post_init__(self) -> None:
        object.__setattr__(self, "img_size", _pair(self.img_size))
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
            if int(getattr(self, key)) < 1:
                raise ValueError(f"model.{key}={getattr(self, key)!r} must be a positive integer")
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
            ref = _pair(self.posemb_grid)
            if min(ref) < 1 or self.posemb != "sincos2d":
                raise ValueError(
                    f"model.posemb_grid={self.posemb_grid!r}: a positive grid, for posemb='sincos2d' only "
                    f"(this model has posemb={self.posemb!r})"
                )
            object.__setattr__(self, "posemb_grid", None if ref == self.grid_size else ref)
        _check_choice("model.head_init", self.head_init, HEAD_INITS)
        _check_choice("model.attn_init", self.attn_init, ATTN_INITS)
        if self.posemb in ("learn2d", "sincos2d") and self.embed_dim % 4:
            raise ValueError(f"posemb={self.posemb!r} needs a width divisible by 4, got {self.embed_dim}")
        if self.representation_size is not None and self.representation_size < 1:
            raise ValueError(f"model.representation_size={self.representation_size!r} must be positive")
        for key in ("drop_rate", "attn_drop_rate", "drop_path_rate"):
            _check_range(f"model.{key}", getattr(self, key), 0.0, 1.0)
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
        for key in ("drop_rate", "drop_path_rate"):
            _check_range(f"model.{key}", getattr(self, key), 0.0, 1.0)
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
            for i in range(1, len(self.backbone)):  # the augmented stages' 3x3 convs: 128, 256, 512 channels
                dv = head_channels(self.aa_value_ratio, 64 << i, self.num_heads)
                if not 0 < self.aa_value_ratio < 1 or dv >= 64 << i:
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


@dataclass(frozen=True)
class DataConfig:
    """Dataset, augmentation and loading."""

    dataset: str = "fashion-mnist"
    data_dir: str | None = None
    val_fraction: float = 0.0  # imagefolder without val/: held-out fraction of train
    crop_padding: int = 0  # random crop with this zero padding (native resolution)
    random_resized_crop: bool = False  # RandomResizedCrop instead of padded crop
    rrc_scale_min: float = 0.35
    rrc_scale_max: float = 1.0  # RandomResizedCrop's area fraction in [min, max]
    rrc_ratio: tuple[float, float] = (3 / 4, 4 / 3)  # its aspect ratio range (width / height)
    hflip: bool = False
    low_res: float = 0.0  # probability of showing an image at 1/low_res_factor resolution, upsampled back
    low_res_factor: int = 2  # (the patch contents of a model moved to low_res_factor x its resolution)
    randaugment_n: int = 0  # 0: off
    randaugment_m: int = 9
    random_erasing: float = 0.0  # probability
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    label_smoothing: float = 0.0
    num_workers: int = 0
    synthetic_size: int = 2048  # images per split of the synthetic dataset

    def __post_init__(self) -> None:
        for key in ("val_fraction", "random_erasing", "label_smoothing", "low_res"):
            _check_range(f"data.{key}", getattr(self, key), 0.0, 1.0)
        for key in ("crop_padding", "randaugment_n", "num_workers", "mixup_alpha", "cutmix_alpha"):
            if getattr(self, key) < 0:
                raise ValueError(f"data.{key}={getattr(self, key)!r} must be >= 0")
        _check_range("data.rrc_scale_min", self.rrc_scale_min, 0.01, 1.0)
        _check_range("data.rrc_scale_max", self.rrc_scale_max, self.rrc_scale_min, 1.0)
        object.__setattr__(self, "rrc_ratio", tuple(float(r) for r in self.rrc_ratio))
        if len(self.rrc_ratio) != 2 or not 0 < self.rrc_ratio[0] <= self.rrc_ratio[1]:
            raise ValueError(f"data.rrc_ratio={self.rrc_ratio!r} must be (low, high) with 0 < low <= high")
        if self.synthetic_size < 1:
            raise ValueError(f"data.synthetic_size={self.synthetic_size!r} must be positive")
        if self.low_res_factor < 2:
            raise ValueError(f"data.low_res_factor={self.low_res_factor!r} must be >= 2")


@dataclass(frozen=True)
class OptimConfig:
    """Optimizer, learning-rate schedule and clipping."""

    name: str = "adamw"  # "adam" (the paper's, decoupled weight decay as in its code) | "adamw" | "sgd"
    lr: float = 1e-3
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.999)
    momentum: float = 0.9
    eps: float = 1e-8
    grad_clip: float = 1.0  # global norm; 0 disables
    schedule: str = "cosine"  # "cosine" | "linear" | "constant" | "step"
    warmup_steps: int = 0
    warmup_fraction: float = 0.0  # used when warmup_steps == 0
    min_lr_ratio: float = 0.0  # cosine and linear decay to lr * min_lr_ratio
    # "step": lr x decay_factor at each of these fractions of the run (BiT's fine-tuning: 0.1 at 30/60/90%)
    decay_at: tuple[float, ...] = (0.3, 0.6, 0.9)
    decay_factor: float = 0.1

    def __post_init__(self) -> None:
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))
        _check_choice("optim.name", self.name, ("adam", "adamw", "sgd"))
        _check_choice("optim.schedule", self.schedule, ("cosine", "linear", "constant", "step"))
        object.__setattr__(self, "decay_at", tuple(float(f) for f in self.decay_at))
        at = self.decay_at
        if not all(0 < f < 1 for f in at) or list(at) != sorted(set(at)):
            raise ValueError(f"optim.decay_at={at!r} must be increasing fractions of the run in (0, 1)")
        if not 0 < self.decay_factor <= 1:
            raise ValueError(f"optim.decay_factor={self.decay_factor!r} must lie in (0, 1]")
        if self.lr <= 0:
            raise ValueError(f"optim.lr={self.lr!r} must be positive")
        if self.weight_decay < 0 or self.grad_clip < 0 or self.warmup_steps < 0:
            raise ValueError("optim.weight_decay, optim.grad_clip and optim.warmup_steps must be >= 0")
        _check_range("optim.warmup_fraction", self.warmup_fraction, 0.0, 1.0)
        _check_range("optim.min_lr_ratio", self.min_lr_ratio, 0.0, 1.0)
        _check_range("optim.momentum", self.momentum, 0.0, 1.0)
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"optim.betas={self.betas!r} must be two numbers in [0, 1)")


@dataclass(frozen=True)
class TrainConfig:
    """Length, batch, precision and bookkeeping of a run."""

    epochs: int = 10
    steps: int = 0  # optimizer steps; when > 0 it overrides epochs
    batch_size: int = 256  # global batch per optimizer step
    micro_batch_size: int = 0  # 0: no accumulation
    # "fp32" | "bf16" (autocast) | "bf16-pure" (bf16 model, fp32 master weights) | "auto" (bf16 on CUDA)
    precision: str = "fp32"
    ema_decay: float = 0.0  # 0: no EMA
    compile: bool = False
    # torch.compile's mode when compile: "default" | "reduce-overhead" (CUDA graphs: for small models whose GPU
    # step is bound by kernel launches; no effect on the CPU) | "max-autotune-no-cudagraphs"
    compile_mode: str = "default"
    # "model": one graph of the whole model; "blocks": each transformer block compiled on its own (identical
    # blocks share one graph), the rest eager (no fusion across block boundaries): fashion-mnist-gpu's start-up
    # 19-22 s instead of 47-53 s on the CPU, its step the same within noise (bench/compile_scope.py)
    compile_scope: str = "model"
    seed: int = 0
    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:N"
    log_every: int = 50  # optimizer steps
    eval_every: int = 1  # epochs; 0: only at the end
    checkpoint_every: int = 0  # optimizer steps; 0: once per epoch
    eval_batch_size: int = 1024
    data_on_device: bool = True  # keep in-memory datasets on the training device
    strategy: str = "auto"  # under torchrun: "auto" (= ddp) | "ddp" | "fsdp"
    dist_timeout_s: float = 300.0  # a collective that hangs longer than this fails

    def __post_init__(self) -> None:
        _check_choice("train.precision", self.precision, ("fp32", "bf16", "bf16-pure", "auto"))
        _check_choice("train.compile_mode", self.compile_mode, COMPILE_MODES)
        _check_choice("train.compile_scope", self.compile_scope, COMPILE_SCOPES)
        if self.epochs < 0 or self.steps < 0 or (self.epochs < 1 and self.steps < 1):
            raise ValueError(
                f"train.epochs={self.epochs}, train.steps={self.steps}: one must be positive, neither negative"
            )
        if self.batch_size < 1:
            raise ValueError(f"train.batch_size={self.batch_size!r} must be positive")
        mb = self.micro_batch_size
        if mb < 0 or (mb and self.batch_size % mb):
            raise ValueError(
                f"train.batch_size={self.batch_size} must be a multiple of train.micro_batch_size={mb}"
            )
        _check_range("train.ema_decay", self.ema_decay, 0.0, 1.0)
        if self.log_every < 1 or self.eval_every < 0 or self.checkpoint_every < 0:
            raise ValueError("train.log_every must be >= 1; eval_every, checkpoint_every >= 0")
        _check_choice("train.strategy", self.strategy, ("auto", "ddp", "fsdp"))
        if self.dist_timeout_s <= 0:
            raise ValueError(f"train.dist_timeout_s={self.dist_timeout_s!r} must be positive")
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device):
            raise ValueError(f"train.device={self.device!r} is not auto, cpu, cuda or cuda:N")


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines a run; written as config.json beside its checkpoints."""

    recipe: str = "custom"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    expected: str = ""  # the result this recipe is expected to reach, and how it was measured


# ----------------------------------------------------------------------------- overrides


def _parse_scalar(key: str, text: str, tp: Any) -> Any:
    """Parse `text` as type `tp` (bool, int, float, str)."""
    if tp is bool:
        low = text.strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{key}={text!r}: expected a boolean (true/false)")
    if tp is int:
        try:
            return int(text)
        except ValueError:
            try:
                as_float = float(text)
            except ValueError:
                as_float = None
            if as_float is not None and as_float.is_integer():
                return int(as_float)
            raise ValueError(f"{key}={text!r}: expected an integer") from None
    if tp is float:
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"{key}={text!r}: expected a number") from None
        if not math.isfinite(value):  # JSON has no inf/nan: the run's config.json could not be read back
            raise ValueError(f"{key}={text!r}: expected a finite number")
        return value
    if tp is str:
        return text
    raise ValueError(f"{key}: cannot parse values of type {tp}")


def parse_value(key: str, text: str, tp: Any) -> Any:
    """Parse the override text for a field annotated `tp`."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if text.strip().lower() in ("none", "null", ""):
            return None
        return parse_value(key, text, args[0])
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:  # variable length, e.g. "3,4,9"; "()" for none
            parts = [p for p in text.strip("()[] ").split(",") if p.strip()]
            return tuple(_parse_scalar(key, p.strip(), args[0]) for p in parts)
        parts = [p for p in text.strip("()[] ").replace("x", ",").split(",") if p.strip()]
        if len(parts) == 1 and len(args) == 2 and args[0] is args[1]:
            parts = parts * 2
        if len(parts) != len(args):
            raise ValueError(f"{key}={text!r}: expected {len(args)} comma-separated values")
        return tuple(_parse_scalar(key, p.strip(), a) for p, a in zip(parts, args))
    return _parse_scalar(key, text, tp)


def _field_types(obj: Any) -> dict[str, Any]:
    return typing.get_type_hints(type(obj))


def _lookup_type(cfg: Any, path: str) -> Any:
    obj = cfg
    parts = path.split(".")
    for i, part in enumerate(parts):
        if not dataclasses.is_dataclass(obj):
            raise KeyError(f"unknown config key {path!r}: {'.'.join(parts[:i])} is not a section")
        hints = _field_types(obj)
        if part not in hints:
            valid = ", ".join(sorted(hints))
            prefix = ".".join(parts[:i]) or "the top level"
            raise KeyError(f"unknown config key {path!r}: keys of {prefix} are {valid}")
        if i == len(parts) - 1:
            if dataclasses.is_dataclass(getattr(obj, part)):
                raise KeyError(f"config key {path!r} is a section; set one of its keys instead")
            return hints[part]
        obj = getattr(obj, part)
    raise KeyError(path)


def apply_overrides(cfg: Any, overrides: list[str] | tuple[str, ...]) -> Any:
    """Apply `a.b=value` overrides, each type-checked against the field it names; validate once."""
    data = to_dict(cfg)
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not of the form key=value")
        key, _, text = item.partition("=")
        key = key.strip()
        value = parse_value(key, text.strip(), _lookup_type(cfg, key))
        node = data
        *parents, leaf = key.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = value
    return from_dict(type(cfg), data)


# ----------------------------------------------------------------------------- (de)serialisation


def to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON-ready dict of a (nested) config dataclass."""
    return dataclasses.asdict(cfg)


def from_dict(cls: type, data: dict[str, Any], where: str = "config") -> Any:
    """Build dataclass `cls` from a dict, checking keys and converting lists to tuples."""
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected an object, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    unknown = set(data) - set(hints)
    if unknown:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)}; expected some of {sorted(hints)}")
    kwargs = {}
    for key, value in data.items():
        tp = hints[key]
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            value = from_dict(tp, value, f"{where}.{key}")
        else:
            value = tuple(value) if isinstance(value, list) else value
            if not _has_type(value, tp):
                raise ValueError(f"{where}: {key}={value!r} is not of type {_type_name(tp)}")
        kwargs[key] = value
    try:
        return cls(**kwargs)
    except ValueError as e:  # a value the config refuses: say which file or object holds it
        raise ValueError(f"{where}: {e}") from None


def _has_type(value: Any, tp: Any) -> bool:
    """Whether a JSON value fits a field's annotation (int for float allowed; bool is not an int)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_has_type(value, a) for a in args)
    if origin is tuple:
        if not isinstance(value, tuple):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_has_type(v, args[0]) for v in value)
        return len(value) == len(args) and all(_has_type(v, a) for v, a in zip(value, args))
    if tp is type(None):
        return value is None
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, tp) if isinstance(tp, type) else True


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is None and hasattr(tp, "__name__"):
        return tp.__name__
    return str(tp).replace("typing.", "")


def save_json(cfg: Any, path: str) -> None:
    """Write a config as indented JSON, atomically."""
    write_json(path, to_dict(cfg))


def load_run_config(path: str) -> RunConfig:
    """Read a run's config.json."""
    try:
        with open(path) as f:
            data = json.load(f)
    except OSError as e:
        raise FileNotFoundError(f"cannot read run config {path}: {e.strerror}") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None
    return from_dict(RunConfig, data, where=path)
