"""A run's configuration: data, optimizer, training and the RunConfig that holds them with the model's."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from vitkit.config.fields import check_fields
from vitkit.config.model import ModelConfig, _check_choice, _check_finite, _check_range

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune-no-cudagraphs")
COMPILE_SCOPES = ("model", "blocks")
TTA_MODES = ("none", "hflip")  # test-time augmentation of evaluations (vitkit.eval.tta)


def is_device(name: object) -> bool:
    """Whether `name` is a device vitkit takes: auto, cpu, cuda or cuda:N."""
    return isinstance(name, str) and re.fullmatch(r"auto|cpu|cuda(:\d+)?", name) is not None


@dataclass(frozen=True)
class DataConfig:
    """Dataset, augmentation and loading."""

    dataset: str = "fashion-mnist"
    data_dir: str | None = None
    val_fraction: float = 0.0  # imagefolder without val/: held-out fraction of train
    # a validation split (minival) held out of the training set, per class, by the run's seed: the best
    # checkpoint is chosen on it, not on the test set (the paper's 2% of CIFAR, big_vision's minival)
    holdout: float = 0.0
    # train on this fraction of each training class (after the holdout), drawn by the run's seed: the paper's
    # pre-training on random subsets (its Figures 3-4); 1.0: all
    subset: float = 1.0
    crop_padding: int = 0  # random crop with this zero padding (native resolution)
    random_resized_crop: bool = False  # RandomResizedCrop instead of padded crop
    rrc_scale_min: float = 0.35
    rrc_scale_max: float = 1.0  # RandomResizedCrop's area fraction in [min, max]
    rrc_ratio: tuple[float, float] = (3 / 4, 4 / 3)  # its aspect ratio range (width / height)
    hflip: bool = False
    low_res: float = 0.0  # probability of showing an image at 1/low_res_factor resolution, upsampled back
    low_res_factor: int = 2  # (the patch contents of a model moved to low_res_factor x its resolution)
    randaugment_n: int = 0  # 0: off
    randaugment_m: int = 9  # magnitude on timm's and the paper's 0-10 scale (9: 0.9 of each op's largest)
    # torchvision's magnitude bins: 11 puts M on that 0-10 scale; 31 is torchvision's own 0-30 (M/30), which
    # runs written before this setting used (their config.json is read so)
    randaugment_bins: int = 11
    random_erasing: float = 0.0  # probability
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    label_smoothing: float = 0.0
    num_workers: int = 0  # threads decoding an image folder's files (0: up to 8, one per core)
    synthetic_size: int = 2048  # images per split of the synthetic dataset

    def __post_init__(self) -> None:
        check_fields("data", self)
        _check_finite("data", self)
        for key in ("random_erasing", "low_res"):
            _check_range(f"data.{key}", getattr(self, key), 0.0, 1.0)
        for key in ("val_fraction", "label_smoothing"):  # 1: no training images; uniform targets
            _check_range(f"data.{key}", getattr(self, key), 0.0, 1.0, below=True)
        _check_range("data.holdout", self.holdout, 0.0, 0.5)
        if self.val_fraction and self.dataset != "imagefolder":  # the others have their own test split
            raise ValueError(
                f"data.val_fraction={self.val_fraction!r} splits an image folder without val/; dataset "
                f"{self.dataset!r} has its own test split (a validation split out of its training set: data.holdout)"
            )
        if not 0 < self.subset <= 1:
            raise ValueError(f"data.subset={self.subset!r} must lie in (0, 1]")
        for key in ("crop_padding", "randaugment_n", "num_workers", "mixup_alpha", "cutmix_alpha"):
            if getattr(self, key) < 0:
                raise ValueError(f"data.{key}={getattr(self, key)!r} must be >= 0")
        if self.randaugment_bins not in (11, 31):
            raise ValueError(
                f"data.randaugment_bins={self.randaugment_bins!r} must be 11 (M on timm's and the paper's 0-10 "
                "scale) or 31 (torchvision's 0-30)"
            )
        if not 0 <= self.randaugment_m < self.randaugment_bins:
            raise ValueError(
                f"data.randaugment_m={self.randaugment_m!r} must lie in [0, {self.randaugment_bins - 1}]: "
                + (
                    "RandAugment's magnitude on timm's and the paper's scale (M/10 of each operation's largest; "
                    "data.randaugment_bins=31 reads it on torchvision's 0-30)"
                    if self.randaugment_bins == 11
                    else "RandAugment's magnitude on torchvision's scale (data.randaugment_bins=31)"
                )
            )
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
    # < 1: layer-wise learning-rate decay (BEiT, MAE and timm's fine-tuning): block i's rate x this^(depth - i),
    # the embeddings' x this^(depth + 1), the head's x 1; 1.0: off (the paper's recipes)
    layer_decay: float = 1.0

    def __post_init__(self) -> None:
        check_fields("optim", self)
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))
        _check_finite("optim", self)
        _check_choice("optim.name", self.name, ("adam", "adamw", "sgd"))
        _check_choice("optim.schedule", self.schedule, ("cosine", "linear", "constant", "step"))
        object.__setattr__(self, "decay_at", tuple(float(f) for f in self.decay_at))
        at = self.decay_at
        if not all(0 < f < 1 for f in at) or list(at) != sorted(set(at)):
            raise ValueError(f"optim.decay_at={at!r} must be increasing fractions of the run in (0, 1)")
        if not 0 < self.layer_decay <= 1:
            raise ValueError(f"optim.layer_decay={self.layer_decay!r} must lie in (0, 1] (1: off; e.g. 0.75)")
        if not 0 < self.decay_factor <= 1:
            raise ValueError(f"optim.decay_factor={self.decay_factor!r} must lie in (0, 1]")
        if self.lr <= 0:
            raise ValueError(f"optim.lr={self.lr!r} must be positive")
        if not self.eps > 0:
            raise ValueError(f"optim.eps={self.eps!r} must be positive")
        for key in ("weight_decay", "grad_clip", "warmup_steps"):
            if getattr(self, key) < 0:
                raise ValueError(f"optim.{key}={getattr(self, key)!r} must be >= 0")
        _check_range("optim.warmup_fraction", self.warmup_fraction, 0.0, 1.0)
        _check_range("optim.min_lr_ratio", self.min_lr_ratio, 0.0, 1.0)
        _check_range("optim.momentum", self.momentum, 0.0, 1.0, below=True)
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
    # blocks share one graph), the rest eager (no fusion across block boundaries): the 28 px hybrid's start-up
    # 19-22 s instead of 47-53 s on the CPU, its step the same within noise (bench/compile_scope.py); slower on
    # an H200 with CUDA graphs, where the eager rest runs outside them (bench/RESULTS.md)
    compile_scope: str = "model"
    # recompute each transformer block's activations in backward instead of keeping them (ViTs and hybrids):
    # activation memory of the blocks for about one more forward pass per step
    grad_checkpointing: bool = False
    # fc1's bias and the GELU of every transformer MLP as one Triton kernel each way, the bias gradient summed in
    # the GELU backward's pass (models/fused_mlp.py; CUDA only, needs Triton and torch >= 2.6): one pass over
    # the hidden activations fewer per block and step; the same function up to rounding
    fused_bias_gelu: bool = False
    seed: int = 0
    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:N"
    log_every: int = 50  # optimizer steps
    eval_every: int = 1  # epochs; 0: only at the end
    # few-shot linear evaluation of the representation during training (big_vision's fewshot evaluator): every
    # this many epochs and at the end (0: off), on fewshot_datasets (empty: the run's own), one draw per shot count
    fewshot_every: int = 0
    fewshot_datasets: tuple[str, ...] = ()
    fewshot_shots: tuple[int, ...] = (1, 5, 10, 25)
    fewshot_test_limit: int = 0  # score on this many test images drawn at random (0: all)
    checkpoint_every: int = 0  # optimizer steps; 0: once per epoch
    eval_batch_size: int = 1024
    # test-time augmentation of every evaluation: "hflip" scores the mean of the logits of each image and of its
    # mirror image (airbench's flip TTA; for models trained with data.hflip), one more forward per batch; the
    # metrics records and the summary then also give the top-1 without it (top1_no_tta, test_top1_no_tta) and
    # the summary what it changed on the same images (tta_gain: paired interval, McNemar's p)
    eval_tta: str = "none"
    data_on_device: bool = True  # keep in-memory datasets on the training device
    strategy: str = "auto"  # under torchrun: "auto" (= ddp) | "ddp" | "fsdp"
    dist_timeout_s: float = 300.0  # a collective that hangs longer than this fails

    def __post_init__(self) -> None:
        check_fields("train", self)
        _check_finite("train", self)
        _check_choice("train.precision", self.precision, ("fp32", "bf16", "bf16-pure", "auto"))
        _check_choice("train.compile_mode", self.compile_mode, COMPILE_MODES)
        _check_choice("train.compile_scope", self.compile_scope, COMPILE_SCOPES)
        _check_choice("train.eval_tta", self.eval_tta, TTA_MODES)
        if not 0 <= self.seed < 2**63:  # what every generator it seeds takes
            raise ValueError(f"train.seed={self.seed!r} must lie in [0, 2**63)")
        if self.epochs < 0 or self.steps < 0 or (self.epochs < 1 and self.steps < 1):
            raise ValueError(
                f"train.epochs={self.epochs}, train.steps={self.steps}: one must be positive, neither negative"
            )
        if self.batch_size < 1 or self.eval_batch_size < 1:
            bad = "batch_size" if self.batch_size < 1 else "eval_batch_size"
            raise ValueError(f"train.{bad}={getattr(self, bad)!r} must be positive")
        mb = self.micro_batch_size
        if mb < 0 or (mb and self.batch_size % mb):
            raise ValueError(
                f"train.batch_size={self.batch_size} must be a multiple of train.micro_batch_size={mb} "
                "(--micro-batch-size N, or 0 for none)"
            )
        if not 0.0 <= self.ema_decay < 1.0:  # 1 would keep the initial weights forever
            raise ValueError(f"train.ema_decay={self.ema_decay!r} must lie in [0, 1) (0: no EMA)")
        if self.log_every < 1:
            raise ValueError(f"train.log_every={self.log_every!r} must be >= 1")
        for key in ("eval_every", "checkpoint_every", "fewshot_every", "fewshot_test_limit"):
            if getattr(self, key) < 0:
                raise ValueError(f"train.{key}={getattr(self, key)!r} must be >= 0")
        _check_choice("train.strategy", self.strategy, ("auto", "ddp", "fsdp"))
        object.__setattr__(self, "fewshot_datasets", tuple(self.fewshot_datasets))
        object.__setattr__(self, "fewshot_shots", tuple(self.fewshot_shots))
        if self.fewshot_every and (
            not self.fewshot_shots or not all(isinstance(k, int) and k > 0 for k in self.fewshot_shots)
        ):
            raise ValueError(f"train.fewshot_shots={self.fewshot_shots!r} must be positive integers")
        if not 0 < self.dist_timeout_s <= 1e7:  # torch's timeout in nanoseconds overflows near 9.2e9 s
            raise ValueError(f"train.dist_timeout_s={self.dist_timeout_s!r} must lie in (0, 1e7] seconds")
        if not is_device(self.device):
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


# settings read only under another setting: (key, whether the config reads it, the setting it waits on)
_READ_WHEN = (
    ("optim.momentum", lambda c: c.optim.name == "sgd", "optim.name=sgd"),
    ("optim.betas", lambda c: c.optim.name in ("adam", "adamw"), "optim.name=adam or adamw"),
    ("optim.decay_at", lambda c: c.optim.schedule == "step", "optim.schedule=step"),
    ("optim.decay_factor", lambda c: c.optim.schedule == "step", "optim.schedule=step"),
    (
        "optim.min_lr_ratio",
        lambda c: c.optim.schedule in ("cosine", "linear"),
        "optim.schedule=cosine or linear",
    ),
    ("optim.warmup_fraction", lambda c: c.optim.warmup_steps == 0, "optim.warmup_steps=0"),
    ("data.rrc_scale_min", lambda c: c.data.random_resized_crop, "data.random_resized_crop=true"),
    ("data.rrc_scale_max", lambda c: c.data.random_resized_crop, "data.random_resized_crop=true"),
    ("data.rrc_ratio", lambda c: c.data.random_resized_crop, "data.random_resized_crop=true"),
    ("data.crop_padding", lambda c: not c.data.random_resized_crop, "data.random_resized_crop=false"),
    ("data.randaugment_m", lambda c: c.data.randaugment_n > 0, "data.randaugment_n > 0"),
    ("data.randaugment_bins", lambda c: c.data.randaugment_n > 0, "data.randaugment_n > 0"),
    ("data.low_res_factor", lambda c: c.data.low_res > 0, "data.low_res > 0"),
    ("train.compile_mode", lambda c: c.train.compile, "train.compile=true"),
    ("train.compile_scope", lambda c: c.train.compile, "train.compile=true"),
    ("train.fewshot_datasets", lambda c: c.train.fewshot_every > 0, "train.fewshot_every > 0"),
    ("train.fewshot_shots", lambda c: c.train.fewshot_every > 0, "train.fewshot_every > 0"),
    ("train.fewshot_test_limit", lambda c: c.train.fewshot_every > 0, "train.fewshot_every > 0"),
)


def unread_settings(cfg: RunConfig, keys: set[str]) -> list[str]:
    """Of the keys a user set, those `cfg` does not read, each with the setting it waits on ("optim.momentum (read
    with optim.name=sgd)"): a setting that silently changes nothing."""
    return [f"{key} (read with {when})" for key, reads, when in _READ_WHEN if key in keys and not reads(cfg)]
