"""One entry point for every checkpoint: detect the format of a path or hub id and read it."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

import torch
from torch import nn

from vitkit.convert.bit import is_bit_npz, read_bit_npz
from vitkit.convert.checkpoint import Checkpoint
from vitkit.convert.files import (
    TORCH_SUFFIXES,
    ConversionError,
    read_json_file,
    read_npz,
    read_weights_file,
)
from vitkit.convert.hf import from_hf_state, is_hf_state, read_hf_folder
from vitkit.convert.hub import fetch, is_hub_id
from vitkit.convert.official import read_official
from vitkit.convert.runs import CONFIG, WEIGHTS, read_model_file, read_run
from vitkit.convert.timm import (
    from_timm_state,
    is_timm_state,
    strip_module,
    timm_folder_weights,
    timm_module_config,
)
from vitkit.models import CNN, ModelConfig, VisionTransformer
from vitkit.train.runfiles import holds_run, is_run_config, run_dir_of

log = logging.getLogger(__name__)

FORMATS = ("official", "big_vision", "timm", "hf", "vitkit")
# what read_checkpoint reads: a path or hub id, a state dict or a model in memory
Source = str | os.PathLike | Mapping[str, torch.Tensor] | nn.Module


def _from_state(
    path: str, state: dict[str, torch.Tensor], num_heads: int | None, img_size: tuple[int, int] | None = None
) -> Checkpoint:
    """A bare weights file: timm or transformers names, told apart by their keys."""
    if is_timm_state(state):
        return from_timm_state(state, path, num_heads=num_heads, img_size=img_size)
    if is_hf_state(state):
        return from_hf_state(state, {"num_attention_heads": num_heads} if num_heads else {}, path, img_size)
    some = sorted(state)[:6]
    raise ConversionError(
        f"{path}: not a checkpoint vitkit knows: expected timm names (patch_embed.proj.weight; a BiT ResNet's "
        f"stem.conv.weight; a ResNet's conv1.weight and layer1.0.*) or transformers names "
        f"(embeddings.patch_embeddings.projection.weight); first keys: {some}"
    )


def check_saveable(model: nn.Module) -> None:
    """Refuse a vitkit model whose config cannot describe it: its final norm pruned."""
    if getattr(model, "norm_pruned", False):
        raise ConversionError(
            f"<vitkit {model.cfg.name}>: its final norm was pruned (prune_intermediate_layers(prune_norm=True)), "
            "which its config cannot state, so it cannot be saved or read as a checkpoint; prune after loading"
        )


def _from_module(model: nn.Module, num_heads: int | None) -> Checkpoint:
    """A model in memory: vitkit's own (its config), transformers' (its config), any other by its weights' names."""
    state = {k: v.detach() for k, v in model.state_dict().items()}
    cfg = getattr(model, "cfg", None)
    if isinstance(cfg, ModelConfig) and isinstance(model, (VisionTransformer, CNN)):
        check_saveable(model)
        meta = dict(getattr(model, "preprocess", {}))
        return Checkpoint(state, cfg, "vitkit", f"<vitkit {cfg.name}>", meta, heads_stated=True)
    hf_config = getattr(getattr(model, "config", None), "to_dict", None)
    name = f"<{type(model).__name__}>"
    if callable(hf_config) and is_hf_state(state):
        config = hf_config()
        if num_heads and "num_attention_heads" not in config:  # the model's own come first
            config["num_attention_heads"] = num_heads
        return from_hf_state(state, config, name)
    aliased = _anti_aliasing(model)
    if aliased:
        raise ConversionError(
            f"{name}: anti-aliased downsampling ({aliased}) has no weights of its own, so its state dict reads as "
            "a plain ResNet's; vitkit's baselines have none, and these weights would compute something else"
        )
    state = strip_module(state)
    if is_timm_state(state):  # timm's model: what its config.json would say, read from the model
        return from_timm_state(state, name, hub_config=timm_module_config(model), num_heads=num_heads)
    return _from_state(name, state, num_heads)


def _anti_aliasing(model: nn.Module) -> str | None:
    """timm's anti-aliased ResNets (resnetaa*, resnetblur*): the first module that blurs or average-pools where a
    plain ResNet strides, named, or None."""
    for name, module in model.named_modules():
        kind = type(module).__name__
        if "BlurPool" in kind or (name.rsplit(".", 1)[-1] == "aa" and kind != "Identity"):
            return f"{name}: {kind}"
        if name == "maxpool" and isinstance(module, nn.AvgPool2d):
            return f"{name}: {kind}"
    return None


def _read_folder(folder: str, num_heads: int | None) -> Checkpoint:
    config_path = os.path.join(folder, CONFIG)
    if not os.path.isfile(config_path):
        if os.path.isfile(os.path.join(folder, WEIGHTS)):
            return read_run(folder)  # a checkpoint folder inside a run
        raise ConversionError(
            f"{folder}: no config.json; expected a vitkit run folder, a transformers ViT folder or a timm hub folder"
        )
    config = read_json_file(config_path)
    if is_run_config(config):
        return read_run(folder)
    if "model_type" in config:
        return read_hf_folder(folder)
    if "architecture" in config or "pretrained_cfg" in config:
        path = timm_folder_weights(folder)
        state, _ = read_weights_file(path)
        return from_timm_state(state, path, hub_config=config, num_heads=num_heads)
    raise ConversionError(
        f"{config_path}: neither a vitkit run config, a transformers config nor a timm config"
    )


def _read_file(path: str, num_heads: int | None, img_size: tuple[int, int] | None = None) -> Checkpoint:
    if path.endswith(".npz"):
        arrays = read_npz(path)
        return read_bit_npz(arrays, path) if is_bit_npz(arrays) else read_official(path, arrays, img_size)
    if not path.endswith((".safetensors", *TORCH_SUFFIXES)):
        raise ConversionError(
            f"{path}: unknown file type; expected .npz (official/big_vision), .safetensors, "
            f"{', '.join(TORCH_SUFFIXES)}, a folder or a hub id"
        )
    state, meta = read_weights_file(path)
    if meta.get("format") == "vitkit" and "config" in meta:
        return read_model_file(path, state, meta)
    # weights written by `vitkit train` inside a run folder: model.safetensors, model_raw.safetensors, a
    # checkpoint's model/ema.safetensors (older vitkit versions wrote some without metadata)
    if meta.get("format") == "vitkit" or in_run(path):
        return read_run(path)
    return _from_state(path, state, num_heads, img_size)


def in_run(path: str) -> bool:
    """Whether a weights file is one that training wrote into a vitkit run (`run_dir_of`; another file there,
    such as a timm file copied in, is read as what it is)."""
    run_dir = run_dir_of(path)
    return run_dir is not None and holds_run(run_dir)


def read_checkpoint(
    source: Source, *, num_heads: int | None = None, img_size: int | tuple[int, int] | None = None
) -> Checkpoint:
    """Read any supported checkpoint into vitkit names with its inferred ModelConfig.

    `source`: an official/big_vision `.npz`; timm `.safetensors`/`.pth`/`.bin`; a transformers ViT folder; a vitkit
    run folder, checkpoint folder or exported `.safetensors`; a hub id (`hf-hub:timm/...`, `google/vit-...`); or
    a state dict in memory with timm's or transformers' names (`timm_model.state_dict()`), or a model in memory
    (a vitkit model, a transformers ViT with its config, a timm model).
    `num_heads` is needed only for fused-qkv files whose shape is not one of the paper's. `img_size`, the size a
    model is wanted at, tells a bare timm state dict's image size where its position embedding leaves it open (a
    square row count with a class token: a square grid without a class-token row, or (g-1) x (g+1) with one).
    """
    img_size = (img_size, img_size) if isinstance(img_size, int) else img_size
    if isinstance(source, nn.Module):
        return _from_module(source, num_heads)
    if isinstance(source, Mapping):
        bad = [k for k, v in source.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
        if bad:
            raise ConversionError(f"state dict: keys must be names and values tensors; not so for {bad[:3]}")
        state = strip_module({k: v.detach() for k, v in source.items()})
        if is_hf_state(state):
            log.warning(
                "a transformers state dict without its config: its LayerNorm eps, GELU and heads are unknown (a "
                "model built from it takes transformers' defaults: eps 1e-12, erf GELU, heads by width; a model "
                "given keeps its own); pass the transformers model itself (or its folder) to use its config"
            )
        return _from_state("<state dict>", state, num_heads, img_size)
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(
            f"pretrained={source!r:.60}: expected a path, a hub id, a state dict or a model, not {type(source).__name__}"
        )
    source = os.fspath(source)
    path = os.path.expanduser(source)
    if os.path.isdir(path):
        return _read_folder(path, num_heads)
    if os.path.isfile(path):
        return _read_file(path, num_heads, img_size)
    if is_hub_id(source):
        return _read_folder(fetch(source), num_heads)
    raise FileNotFoundError(
        f"{source} does not exist (not a file or folder, and not a hub id such as 'hf-hub:timm/<name>' "
        "or 'google/vit-base-patch16-224')"
    )
