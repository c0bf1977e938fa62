"""Load a checkpoint into a model: position-embedding resampling, head replacement, strict key checks."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from vitkit.config import ARCH_FIELDS, ModelConfig
from vitkit.convert.checkpoint import PREPROCESS_KEYS, Checkpoint, adapt_channel_stats, unknown_heads_error
from vitkit.convert.files import ConversionError
from vitkit.convert.sources import Source, read_checkpoint
from vitkit.models import CNN, Model, VisionTransformer, build_model, model_config, resample_posemb
from vitkit.models.augmented_conv import resize_relative_table
from vitkit.models.registry import check_model_options
from vitkit.models.vit import RELATIVE_FIXED

log = logging.getLogger(__name__)

RESAMPLE = {"official": ("bilinear", True), "bicubic": ("bicubic", False)}  # mode, align_corners
HEAD_KEYS = (
    "head.weight",
    "head.bias",
    "pre_logits.fc.weight",
    "pre_logits.fc.bias",
    "head.fc.weight",
    "head.fc.bias",
)


@dataclass
class LoadReport:
    """What load_pretrained did: the source, resampling, head replacement, keys left out."""

    source: str
    format: str
    resampled: tuple[tuple[int, int], tuple[int, int]] | None = None  # (checkpoint grid, model grid)
    head_reset: bool = False
    channels_adapted: tuple[int, int] | None = None  # (checkpoint, model) input channels
    # AA relative tables moved to the model's maps
    relative_resampled: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)


def _names(keys: list[str], limit: int = 12) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def adapt_input_channels(w: torch.Tensor, in_chans: int, dim: int = 1) -> torch.Tensor:
    """Weights whose `dim` is the input channels ((D, C, P, P) of a patch embedding or stem conv) for another
    number of input channels (as timm's adapt_input_conv)."""
    c = w.shape[dim]
    if c == in_chans:
        return w
    # a grey image seen as R = G = B: exact for a linear map (a patch conv, the attention stem); BiT's
    # weight-standardised stem re-standardises it: approximately
    if in_chans == 1:
        return w.sum(dim=dim, keepdim=True)
    reps = [1] * w.ndim
    reps[dim] = -(-in_chans // c)
    return w.repeat(*reps).narrow(dim, 0, in_chans) * (c / in_chans)


def _pixel_weights(model: nn.Module) -> list[tuple[str, int]]:
    """The weights that read the image's channels, with the dimension that indexes them."""
    if isinstance(model, CNN):
        if isinstance(getattr(model.stem, "conv", None), nn.Conv2d):
            return [("stem.conv.weight", 1)]
        return [("stem.qk.weight", 1), ("stem.value", 2)]  # SASA's attention stem: (2D, C), (m, D, C)
    return [(f"patch_embed.{model.patch_embed.pixel_conv_name}.weight", 1)]  # a hybrid's: its ResNet root


def _resample_posemb(
    state: dict, ckpt: ModelConfig, cfg: ModelConfig, resample: str, report: LoadReport
) -> None:
    """Resize the checkpoint's position embedding to the model's grid (in place)."""
    if cfg.arch != "vit" or ckpt.arch != "vit":  # a CNN has none
        return
    old, new = ckpt.grid_size, cfg.grid_size
    mode, align = RESAMPLE[resample]
    if "relative" in (cfg.posemb, ckpt.posemb) and old != new:
        raise ConversionError(f"{report.source}: " + RELATIVE_FIXED.format(grid=old, size=cfg.img_size))
    if cfg.posemb == "learn" and "pos_embed" in state:
        pe = state["pos_embed"]  # (1, prefix + gh*gw, D)
        if pe.shape[1] != ckpt.num_tokens:
            raise ConversionError(
                f"{report.source}: pos_embed has {pe.shape[1]} entries, the checkpoint's grid {old[0]}x{old[1]} "
                f"with {ckpt.num_prefix_tokens} class token(s) needs {ckpt.num_tokens}"
            )
        if ckpt.num_prefix_tokens != cfg.num_prefix_tokens:
            raise ConversionError(
                f"{report.source}: the checkpoint pools with pool={ckpt.pool!r}, the model with pool={cfg.pool!r}"
            )
        if old != new:
            state["pos_embed"] = resample_posemb(pe, new, cfg.num_prefix_tokens, mode, align, old_grid=old)
            report.resampled = (old, new)
    elif cfg.posemb == "learn2d" and "pos_embed_row" in state and old != new:
        for key, size in (("pos_embed_row", new[0]), ("pos_embed_col", new[1])):
            p = state[key].transpose(1, 2).float()  # (1, D/2, g)
            state[key] = nn.functional.interpolate(p, size=size, mode="linear", align_corners=True).transpose(
                1, 2
            )
        report.resampled = (old, new)


def _resample_relative(state: dict, model: nn.Module, report: LoadReport) -> None:
    """An attention-augmented ResNet at another size: its relative tables resampled linearly to the model's maps
    (1-D tables: `resample`'s 2-D choices do not apply)."""
    if not isinstance(model, CNN):
        return
    own = {k: v.shape for k, v in model.state_dict().items() if k.endswith((".rel_h", ".rel_w"))}
    moved = []
    for k, shape in own.items():
        v = state.get(k)
        if v is not None and v.ndim == 2 and v.shape[1] == shape[1] and v.shape[0] != shape[0]:
            state[k] = resize_relative_table(v, (shape[0] + 1) // 2)
            moved.append(k)
    if moved:
        report.relative_resampled = moved
        log.info(
            "%s: %d relative position tables resampled to the model's feature maps", report.source, len(moved)
        )


def _head_key(model: nn.Module) -> str:
    """The name of the classifier's weight: `head.weight` (ViT), `head.fc.weight` (the CNNs' 1x1-conv head)."""
    return "head.fc.weight" if isinstance(model, CNN) else "head.weight"


def _check_head(state: dict, model: VisionTransformer, ckpt: ModelConfig, source: str) -> None:
    """Without reset_head, a head the model cannot take is an error that says what to do."""
    key = _head_key(model)
    own = model.state_dict()
    if key not in state or key not in own:
        return
    theirs, ours = tuple(state[key].shape), tuple(own[key].shape)
    if theirs[0] != ours[0]:  # another number of classes (a width mismatch is reported with the others)
        raise ConversionError(
            f"{source}: {key} is {theirs} in the checkpoint ({ckpt.num_classes} classes) and {ours} in the "
            f"model ({model.num_classes} classes); pass reset_head=True to replace the head with a zero-initialised "
            "one and drop pre_logits, as the paper does for fine-tuning"
        )


def load_pretrained(
    model: Model,
    source: Source | Checkpoint,
    *,
    strict: bool = True,
    resample: str = "official",
    reset_head: bool | None = None,
) -> LoadReport:
    """Load pretrained weights into `model` in place and say what was adapted.

    `source`: any format `read_checkpoint` reads (or a Checkpoint). A learned position embedding is resampled to
    the model's grid (`resample="official"`: bilinear, align_corners=True, as the official code's scipy zoom;
    `"bicubic"`: timm's); learn2d's two 1-D tables each linearly, whatever `resample`. Input channels are
    adapted by summing/repeating the patch-embedding filters.
    `reset_head=True` replaces the head by a zero-initialised one for `model.num_classes` and drops pre_logits;
    otherwise a head of another size is an error saying so. A model without a head (num_classes=0) takes the
    encoder only. `strict`: missing or unexpected keys are an error naming them (else logged and returned).
    Shape mismatches are always an error naming the key and both shapes.
    """
    if resample not in RESAMPLE:
        raise ValueError(f"resample={resample!r}: expected one of {', '.join(map(repr, RESAMPLE))}")
    ckpt = source if isinstance(source, Checkpoint) else read_checkpoint(source, img_size=model.cfg.img_size)
    report = LoadReport(ckpt.path, ckpt.format)
    state = dict(ckpt.state)
    cfg = model.cfg
    _check_heads(cfg, ckpt)
    _resample_posemb(state, ckpt.config, cfg, resample, report)
    _resample_relative(state, model, report)
    for pixel_key, dim in _pixel_weights(model):
        w = state.get(pixel_key)
        if w is not None and w.ndim > dim and w.shape[dim] != cfg.in_chans:
            state[pixel_key] = adapt_input_channels(w, cfg.in_chans, dim)
            report.channels_adapted = (int(w.shape[dim]), cfg.in_chans)
            log.warning(
                "%s: %d input channels adapted to %d (%s summed/repeated over its channels)",
                ckpt.path,
                w.shape[dim],
                cfg.in_chans,
                pixel_key,
            )
    if reset_head:  # the head and pre-logits are replaced below, once the rest is known to fit
        for key in HEAD_KEYS:
            state.pop(key, None)
    elif not model.num_classes:  # a feature extractor: the encoder only
        for key in ("head.weight", "head.bias", "head.fc.weight", "head.fc.bias"):
            state.pop(key, None)
    else:
        _check_head(state, model, ckpt.config, ckpt.path)
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if reset_head:
        own = {k: v for k, v in own.items() if not k.startswith(("head.", "pre_logits."))}
    bad = [  # the embeddings first: they name the width, patch and grid
        f"{k}: checkpoint {tuple(state[k].shape)}, model {own[k]}"
        for k in sorted(
            state, key=lambda k: (not k.startswith(("patch_embed.", "stem.")), k.startswith("blocks."), k)
        )
        if k in own and tuple(state[k].shape) != own[k]
    ]
    if bad:
        more = f"; and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise ConversionError(
            f"{ckpt.path} holds a {ckpt.config.name}, which does not fit the model ({cfg.name}): shape mismatch "
            f"in {len(bad)} tensors: {'; '.join(bad[:3])}{more}. create_model(pretrained=...) builds the "
            "checkpoint's own model"
        )
    report.missing = sorted(set(own) - set(state))
    report.unexpected = sorted(set(state) - set(own))
    if report.missing or report.unexpected:
        hint = ""
        if "pre_logits.fc.weight" in report.unexpected:
            hint = " (the checkpoint has pre-logits: set representation_size, or pass reset_head=True)"
        elif report.missing and all(k.startswith("head.") for k in report.missing):
            hint = " (the checkpoint has no classification head: pass reset_head=True for a new one)"
        msg = (
            f"{ckpt.path} -> {cfg.name}: missing keys [{_names(report.missing)}], "
            f"unexpected keys [{_names(report.unexpected)}]{hint}"
        )
        if strict:
            raise ConversionError(msg)
        log.warning(msg)
    if reset_head:
        model.reset_classifier(model.num_classes)
        report.head_reset = True
        log.info(
            "%s: new zero-initialised head for %d classes%s",
            ckpt.path,
            model.num_classes,
            "" if isinstance(model, CNN) else "; pre_logits dropped",
        )
    _layout_sincos(model, ckpt, report)
    model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
    keep = PREPROCESS_KEYS + (() if reset_head else ("classes",))  # a new head has no class names
    model.preprocess = {k: ckpt.meta[k] for k in keep if ckpt.meta.get(k)} | {"source": ckpt.path}
    for key in ("mean", "std"):  # one per input channel, as the filters were adapted
        if isinstance(model.preprocess.get(key), (list, tuple)):
            model.preprocess[key] = adapt_channel_stats(list(model.preprocess[key]), cfg.in_chans)
    return report


def _check_heads(cfg: ModelConfig, ckpt: Checkpoint) -> None:
    """Refuse heads other than those the checkpoint states: the weights' shapes cannot show them, and the same
    weights split into other heads compute another function."""
    src = ckpt.config
    heads = cfg.arch == src.arch and cfg.arch in ("vit", "sasa", "aa")  # the models with attention heads
    if heads and ckpt.heads_stated and src.num_heads != cfg.num_heads:
        raise ConversionError(
            f"{ckpt.path} was trained with {src.num_heads} attention heads, the model has {cfg.num_heads}: the same "
            f"weights would compute another function; build the model with num_heads={src.num_heads} "
            "(create_model(pretrained=...) builds the checkpoint's own model)"
        )


def _layout_sincos(model: VisionTransformer, ckpt: Checkpoint, report: LoadReport) -> None:
    """A fixed sin-cos embedding keeps the grid its weights were trained on (vitkit checkpoints say it).

    big_vision files hold no embedding and no image size, so their native grid is unknown: the embedding is then
    computed on the model's grid, as big_vision does.
    """
    cfg, src = model.cfg, ckpt.config
    if (
        cfg.arch != "vit"
        or src.arch != "vit"
        or cfg.posemb != "sincos2d"
        or src.posemb != "sincos2d"
        or ckpt.format != "vitkit"
    ):
        return
    trained = src.posemb_grid or src.grid_size
    if trained != (cfg.posemb_grid or cfg.grid_size):
        model.set_posemb_grid(trained)
    if trained != cfg.grid_size:
        report.resampled = (trained, cfg.grid_size)


def config_for(ckpt: Checkpoint, name: str | None = None, **overrides: Any) -> ModelConfig:
    """The checkpoint's config; `name` (e.g. "ViT-B/16") fixes the architecture, overrides set any field."""
    cfg = ckpt.config
    if name is not None:
        try:
            reg = model_config(name)
        except ValueError:  # a width the name does not give heads for (ViT-32x2/8): the checkpoint's
            reg = model_config(name, num_heads=cfg.num_heads)
        if reg.arch != cfg.arch:
            raise ConversionError(
                f"{ckpt.path} holds a {cfg.arch.upper()} ({cfg.name}); {name!r} is a {reg.arch.upper()}: give the "
                "name of a model of the checkpoint's kind, or none (the checkpoint describes its model)"
            )
        shape = ("embed_dim", "depth", "mlp_dim", "patch_size", "backbone", "width_factor")
        if ckpt.heads_stated:  # a name with other heads would compute another function
            shape += ("num_heads",)
        differ = [
            f"{k} {getattr(cfg, k)} vs {getattr(reg, k)}" for k in shape if getattr(cfg, k) != getattr(reg, k)
        ]
        if differ:
            raise ConversionError(
                f"{ckpt.path} holds {cfg.name}, not {name!r}: {', '.join(differ)} (the checkpoint's vs the name's); "
                "give no name (the checkpoint describes its model) or one that matches it"
            )
        cfg = dataclasses.replace(cfg, **{k: getattr(reg, k) for k in ARCH_FIELDS})
    return dataclasses.replace(cfg, **check_model_options(overrides, cnn=cfg.arch != "vit"))


def model_from_source(
    source: Source | Checkpoint,
    name: str | None = None,
    *,
    strict: bool = True,
    resample: str = "official",
    reset_head: bool | None = None,
    device: str | torch.device | None = None,
    num_heads: int | None = None,
    **overrides: Any,
) -> Model:
    """A model built from a checkpoint's inferred config (plus overrides) with its weights, in eval mode.

    Passing a `num_classes` different from the checkpoint's counts as asking for a new head (reset_head=True)
    unless reset_head is given. `img_size` different from the checkpoint's resamples the position embedding.
    """
    if isinstance(source, Checkpoint):
        ckpt = source
    else:
        ckpt = read_checkpoint(source, num_heads=num_heads, img_size=overrides.get("img_size"))
    if num_heads is not None and num_heads != ckpt.config.num_heads:
        if ckpt.heads_stated:  # other heads would compute another function
            raise ConversionError(
                f"{ckpt.path}: num_heads={num_heads}, but its model has {ckpt.config.num_heads} heads (stated by "
                "the source); leave num_heads out"
            )
        # a checkpoint read before, or heads it did not state
        overrides = {**overrides, "num_heads": num_heads}
    if not ckpt.heads_known and name is None and "num_heads" not in overrides:
        raise unknown_heads_error(ckpt)
    classes = overrides.get("num_classes", ckpt.config.num_classes)
    if reset_head is None and classes not in (ckpt.config.num_classes, 0):
        reset_head = True  # asking for another number of classes asks for a new head
    if reset_head:
        overrides = {**overrides, "representation_size": None, "head_init": "zero"}
    try:
        cfg = config_for(ckpt, name, **overrides)
    except ConversionError:
        raise
    except ValueError as e:  # an option that does not fit the checkpoint's shape: name the file too
        raise ConversionError(f"{ckpt.path}: {e}") from None
    if device is not None:
        with torch.device(device):
            model = build_model(cfg, weights_follow=True)
    else:
        model = build_model(cfg, weights_follow=True)
    load_pretrained(model, ckpt, strict=strict, resample=resample, reset_head=reset_head)
    return model.eval()
