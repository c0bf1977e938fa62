"""Shared CLI pieces: errors, the tqdm progress bar, loading a model from a run or checkpoint."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import os
from dataclasses import dataclass
from typing import Any

import torch

from vitkit.config import TTA_MODES, RunConfig

PRECISION_HELP = (
    "bf16: autocast; bf16-pure: the model in bf16, fp32 master weights in the optimizer; auto: bf16 on CUDA"
)


log = logging.getLogger(__name__)


class UserError(Exception):
    """A mistake in the command line or its inputs: reported in one line, exit status 2."""


def int_at_least(minimum: int):
    """An argparse type: an integer >= `minimum`, else an error naming the value."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} must be at least {minimum}")
        return value

    return parse


positive_int = int_at_least(1)
nonneg_int = int_at_least(0)


def path_arg(text: str) -> str:
    """An argparse type: a file or folder path, not empty (`--out "$RUN"` with RUN unset would save nothing)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path (an unset shell variable?)")
    return text


def image_size(text: str) -> int | tuple[int, int]:
    """An argparse type: a side in pixels (224) or height x width (224x160)."""
    parts = text.lower().split("x")
    if len(parts) > 2:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size: expected N or HxW (e.g. 224 or 224x160)")
    sides = tuple(positive_int(p.strip()) for p in parts)
    return sides[0] if len(sides) == 1 else sides  # type: ignore[return-value]


def size_label(size: int | tuple[int, int]) -> str:
    """224 or (224, 224) -> '224', (224, 160) -> '224x160'."""
    h, w = (size, size) if isinstance(size, int) else size
    return str(h) if h == w else f"{h}x{w}"


def positive_float(text: str) -> float:
    """An argparse type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{text} must be a positive number")
    return value


def fraction_below_one(text: str) -> float:
    """An argparse type: a number in [0, 1)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"{text} must lie in [0, 1)")
    return value


def add_tta_argument(p: argparse.ArgumentParser) -> None:
    """--tta: test-time augmentation; default the run's own train.eval_tta (none for an exported weights file)."""
    p.add_argument(
        "--tta",
        choices=TTA_MODES,
        help="test-time augmentation: hflip averages the logits of each image and its mirror image; default: "
        "the run's train.eval_tta, so the top-1 is its summary's (none for an exported weights file)",
    )


def run_tta(args: argparse.Namespace, cfg: RunConfig) -> str:
    """The TTA mode a command uses: --tta if given, else the run's train.eval_tta."""
    return args.tta or cfg.train.eval_tta


class TqdmProgress:
    """The training progress bar: loss, accuracy, lr, img/s, ETA."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.bar = None
        self.postfix: dict[str, str] = {}

    def start(self, total: int, initial: int) -> None:
        if self.enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, smoothing=0.1)

    def update(self, step: int, stats: dict[str, float]) -> None:
        if not self.bar:
            return
        fmt = {
            "loss": "{:.4f}",
            "train_top1": "{:.2%}",
            "lr": "{:.2e}",
            "img_s": "{:.0f}",
            "val_top1": "{:.2%}",
            "test_top1": "{:.2%}",
        }
        names = {"train_top1": "acc", "img_s": "img/s", "val_top1": "val", "test_top1": "test"}
        for k, f in fmt.items():
            if k in stats:
                self.postfix[names.get(k, k)] = f.format(stats[k])
        self.bar.set_postfix(self.postfix, refresh=False)
        self.bar.update(step - self.bar.n)

    def close(self) -> None:
        if self.bar:
            self.bar.close()


@dataclass
class LoadedRun:
    """A trained model with its config and data description."""

    model: torch.nn.Module
    cfg: RunConfig
    data: dict[str, Any]
    weights_path: str


def find_run(path: str) -> tuple[str | None, str]:
    """(run_dir, weights file) for a run folder, a checkpoint folder in it, or a weights file in it; run_dir None
    for a weights file outside a run (a `vitkit export --format safetensors` file describes its own model). A
    checkpoint folder's weights are its EMA where the run keeps one (ema.safetensors), as the final weights are."""
    from vitkit.convert.runs import folder_weights

    if not os.path.exists(path):
        from vitkit.convert.hub import is_hub_id

        if is_hub_id(path):  # eval and predict read runs; convert reads the hub
            raise UserError(
                f"{path} is a hub id: eval and predict read runs; `vitkit convert {path} --out RUN` first"
            )
    path = os.path.abspath(path)
    if not os.path.exists(path):
        raise UserError(f"{path} does not exist")
    if path.endswith(".onnx"):
        raise UserError(
            f"{path} is an ONNX file (for ONNX Runtime); eval and predict read a run folder, a checkpoint or a "
            "safetensors file (`vitkit eval RUN --fast` runs the model through ONNX Runtime)"
        )
    weights_file = path.lower().endswith((".npz", ".pth", ".pt", ".bin", ".ckpt", ".h5", ".msgpack"))
    if os.path.isfile(path) and weights_file and os.path.basename(path) != "state.pt":  # state.pt: below
        raise UserError(
            f"{path}: eval and predict read vitkit's safetensors files (a run, a checkpoint, an exported file); for "
            f"timm, Hugging Face or .npz weights run `vitkit convert {path} --out RUN` first"
        )
    if os.path.isfile(path) and not path.lower().endswith(".safetensors"):  # config.json, state.pt ...
        folder = os.path.dirname(path)
        raise UserError(
            f"{path} is not a weights file: pass its folder ({folder}) or a .safetensors file"
            if any(os.path.exists(os.path.join(folder, f)) for f in ("config.json", "model.safetensors"))
            else f"{path} is not a weights file: pass a run folder, a checkpoint folder or a .safetensors file"
        )
    if os.path.isfile(path):
        return run_of_file(path), path
    if os.path.exists(os.path.join(path, "config.json")):
        from vitkit.train.runfiles import is_model_config

        # a timm or transformers folder (vitkit export --format timm|hf writes them); a damaged run's config.json
        # is named by the run's reader
        if is_model_config(os.path.join(path, "config.json")):
            raise UserError(
                f"{path}: its config.json is not a vitkit run's (a timm or Hugging Face model folder?); eval and "
                f"predict read runs: `vitkit convert {path} --out RUN` first"
            )
        weights = os.path.join(path, "model.safetensors")
        if not os.path.exists(weights):
            from vitkit.train.checkpoint import latest_valid

            ckpt = latest_valid(os.path.join(path, "checkpoints"))
            if ckpt is None:
                raise UserError(f"{path} has no model.safetensors and no valid checkpoint")
            weights = folder_weights(ckpt)
        return path, weights
    weights = folder_weights(path)  # a checkpoint's EMA where the run keeps one, as its final weights
    run_dir = os.path.dirname(os.path.dirname(path))  # a checkpoint folder: RUN/checkpoints/step-x
    if os.path.exists(weights) and os.path.exists(os.path.join(run_dir, "config.json")):
        return run_dir, weights
    raise UserError(
        f"{path} is neither a run folder (config.json + model.safetensors) nor a checkpoint folder of one"
    )


def run_of_file(path: str) -> str | None:
    """The run a weights file belongs to: one training wrote (RUN/model.safetensors, RUN/checkpoints/X/ema...), or
    a self-describing export beside a run (RUN/model-export-56.safetensors: the run's data, the file's model);
    None for a file outside a run. Another file in a run folder (a timm file copied in) is refused: it is not
    the run's model, and scoring it under the run's config would be wrong."""
    from vitkit.train.runfiles import is_model_config, run_dir_of

    run_dir = run_dir_of(path)
    if run_dir is not None:
        return run_dir
    folder = os.path.dirname(path)
    if is_model_config(os.path.join(folder, "config.json")):  # a timm or transformers folder's weights
        raise UserError(
            f"{path}: its folder's config.json is not a vitkit run's (a timm or Hugging Face model folder?); eval "
            f"and predict read runs: `vitkit convert {folder} --out RUN` first"
        )
    near = [
        d
        for d in (folder, os.path.dirname(os.path.dirname(folder)))
        if os.path.isfile(os.path.join(d, "config.json"))
    ]
    if not near:
        return None
    if described_model(path) is None:
        raise UserError(
            f"{path} is in the run {near[0]} but is not one of its weights (model.safetensors, model_raw.safetensors, "
            "checkpoints/*/model|ema.safetensors) nor a self-describing vitkit export; for timm or Hugging Face "
            f"weights run `vitkit convert {path} --out RUN` first"
        )
    return near[0]


def described_model(weights: str):
    """The Checkpoint (ModelConfig, preprocessing) of a self-describing safetensors file (`vitkit export`), else
    None."""
    from safetensors import SafetensorError, safe_open

    from vitkit.convert.runs import read_model_file

    if not weights.endswith(".safetensors"):
        return None
    try:
        with safe_open(weights, framework="pt", device="cpu") as f:
            meta = dict(f.metadata() or {})
    except (SafetensorError, OSError):  # unreadable: load_weights below names the file
        return None
    if meta.get("format") != "vitkit" or "config" not in meta:
        return None
    return read_model_file(weights, {}, meta)


IMAGE_LOADING = ("crop_pct", "interpolation", "crop_mode")


def run_normalisation(run: LoadedRun, splits: Any) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) a run's model takes its inputs with: its data.json's, else the dataset's statistics."""
    return tuple(run.data.get("mean") or splits.mean), tuple(run.data.get("std") or splits.std)


def image_loading(model: Any, data: dict[str, Any] | None = None) -> tuple[float, str, str]:
    """(crop_pct, interpolation, crop_mode) that image files are read with: the run's data.json (weights
    converted from timm's hub keep theirs), else the model's pretrained_cfg (1.0, bilinear, center for vitkit's
    own training); a value load_image cannot follow is an error naming it."""
    from vitkit.data.imagefolder import check_image_loading

    pre = dict(getattr(model, "pretrained_cfg", None) or {})
    pre.update({k: v for k, v in (data or {}).items() if k in IMAGE_LOADING})
    values = (pre.get("crop_pct", 1.0), pre.get("interpolation", "bilinear"), pre.get("crop_mode", "center"))
    wrong = check_image_loading(*values)
    if wrong:
        raise UserError(f"the model's image preprocessing: {wrong}")
    return float(values[0]), values[1], values[2]


def read_image_files(paths: list[str], model: Any, data: dict[str, Any] | None, where: str) -> torch.Tensor:
    """Image files as `predict` and `inspect --images` read them: at the run's native size (its data.json's,
    else the model's), with the weights' crop and interpolation, in the model's channels: uint8 (B, C, h, w)."""
    from vitkit.data.imagefolder import load_image

    cfg = model.cfg
    if cfg.in_chans not in (1, 3):
        raise UserError(
            f"{where}: the model takes {cfg.in_chans}-channel images; image files give 1 (L) or 3 (RGB)"
        )
    reading = image_loading(model, data)  # crop_pct, interpolation, crop_mode
    size = tuple((data or {}).get("native_size") or cfg.img_size)
    images = []
    for path in paths:
        try:
            images.append(load_image(path, size, cfg.in_chans, *reading))
        except ValueError as e:
            raise UserError(str(e)) from None
    return torch.stack(images)


def _check_data_info(data: dict[str, Any], cfg: RunConfig, path: str) -> None:
    """A run's data.json as eval/predict/inspect read it: class names one per class, mean/std one per channel."""
    classes = data.get("classes")
    if classes is not None and (
        not isinstance(classes, list)
        or len(classes) != cfg.model.num_classes
        or not all(isinstance(c, str) for c in classes)
    ):
        raise UserError(
            f"{path}: 'classes' must list the model's {cfg.model.num_classes} class names, got {classes!r:.80}"
        )
    from vitkit.data.imagefolder import check_image_loading
    from vitkit.train.runfiles import is_number

    crop = (data.get("crop_pct", 1.0), data.get("interpolation", "bilinear"), data.get("crop_mode", "center"))
    wrong = check_image_loading(*crop)
    if wrong:
        raise UserError(f"{path}: {wrong}")
    for key in ("mean", "std"):
        v = data.get(key)
        if v is not None and (
            not isinstance(v, list)
            or len(v) != cfg.model.in_chans
            or not all(is_number(x) and math.isfinite(x) and (key == "mean" or x > 0) for x in v)
        ):
            kind = "finite number" if key == "mean" else "positive number"
            raise UserError(
                f"{path}: {key!r} must give one {kind} per input channel ({cfg.model.in_chans}), got {v!r:.80}"
            )
    size = data.get("native_size")
    if size is not None and not (
        isinstance(size, list) and len(size) == 2 and all(isinstance(n, int) and n > 0 for n in size)
    ):
        raise UserError(f"{path}: 'native_size' must be [height, width] in pixels, got {size!r:.80}")


def set_keys(overrides: list[str] | None) -> set[str]:
    """The config keys `--set KEY=VALUE` overrides name."""
    return {o.split("=", 1)[0].strip() for o in overrides or []}


def epochs_replace_steps(args: argparse.Namespace) -> bool:
    """Whether a length in epochs (--epochs or --set train.epochs), with no length in steps given, replaces the
    recipe's length in steps (train and finetune alike)."""
    sets = set_keys(args.set)
    epochs = args.epochs is not None or "train.epochs" in sets
    return epochs and args.steps is None and "train.steps" not in sets


def command_overrides(args: argparse.Namespace, flag_keys: dict[str, str]) -> list[str]:
    """A train or finetune command's flags and --set as config overrides, in the order they apply: the flags
    (text as given: `--data-dir none` is a folder named none), the rules they imply, then --set. A length in
    epochs replaces the recipe's steps; a warmup fraction the recipe's warmup steps (read only when those are
    0). --set recipe/expected are refused: they describe a recipe, they do not set one."""
    sets = list(args.set or [])
    named = set_keys(sets) & {"recipe", "expected"}
    if named:
        raise UserError(f"--set {sorted(named)[0]}: not a setting (--recipe NAME chooses a recipe)")
    out = []
    for flag, key in flag_keys.items():
        value = getattr(args, flag, None)
        if value is not None:
            out.append(f'{key}="{value}"' if isinstance(value, str) else f"{key}={value}")
    if epochs_replace_steps(args):
        out.append("train.steps=0")
    if "optim.warmup_fraction" in set_keys(sets) and "optim.warmup_steps" not in set_keys(sets):
        out.append("optim.warmup_steps=0")
    return out + sets


def warn_unread(cfg: RunConfig, sets: list[str] | None, is_main: bool = True) -> None:
    """Warn of --set keys the run's config does not read (optim.momentum with adamw, ...): they change nothing."""
    from vitkit.config import unread_settings

    unread = unread_settings(cfg, set_keys(sets))
    if unread and is_main:
        log.warning("--set of a setting this run does not read, which changes nothing: %s", "; ".join(unread))


def load_run(path: str, device: torch.device | str = "cpu") -> LoadedRun:
    """Build the model of a run (or of a self-describing weights file) and load its weights (safetensors only:
    no code runs)."""
    from vitkit.convert.runs import CONVERTED, check_run_weights
    from vitkit.models import build_model
    from vitkit.train.checkpoint import load_weights
    from vitkit.train.runfiles import DATA, read_config, read_json

    run_dir, weights = find_run(path)
    described = described_model(weights)  # a `vitkit export --format safetensors` file, e.g. at another size
    if run_dir is None:
        if described is None:
            raise UserError(
                f"{weights} is not in a run folder (no config.json beside it or in the run above its checkpoint) "
                "and is not a self-describing vitkit safetensors file (`vitkit export --format safetensors`); "
                "for timm, Hugging Face or .npz weights run `vitkit convert SOURCE --out RUN` first"
            )
        cfg = RunConfig(recipe=CONVERTED, model=described.config, expected=f"the exported file {weights}")
        data = dict(described.meta)
        _check_data_info(data, cfg, f"{weights}'s metadata 'preprocess'")
    else:
        cfg = read_config(run_dir)
        data_path = os.path.join(run_dir, DATA)
        data = read_json(data_path) if os.path.exists(data_path) else {}
        if not os.path.exists(data_path):  # every run and conversion writes it
            log.warning(
                "%s is missing: the run's normalisation (mean, std) and class names are unknown; eval recomputes "
                "them from the dataset, predict and inspect use mean 0.5, std 0.5 and class numbers",
                data_path,
            )
        if not isinstance(data, dict):
            raise UserError(f"{data_path}: expected a JSON object, got {type(data).__name__}")
        _check_data_info(data, cfg, data_path)
        if described is not None:
            cfg = dataclasses.replace(cfg, model=described.config)
    where = f"{weights}'s metadata" if described is not None else f"{run_dir}/config.json"
    model = build_model(cfg.model, weights_follow=True)
    if run_dir is not None:  # a damaged file (truncated, replaced) points at the verified checkpoints
        check_run_weights(run_dir, weights)
    state = load_weights(weights)
    bad = [k for k, t in state.items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        log.warning(
            "%s holds non-finite values (NaN or inf) in %d tensors (%s): the run diverged or the file is damaged",
            weights,
            len(bad),
            ", ".join(bad[:3]),
        )
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # a tensor of another shape
        raise UserError(f"{weights} does not match {where}: {str(e).splitlines()[-1].strip()}") from None
    if missing or unexpected:
        raise UserError(
            f"{weights} does not match {where}: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    return LoadedRun(model.to(device).eval(), cfg, data, weights)
