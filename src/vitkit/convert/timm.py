"""timm VisionTransformer weights (.safetensors, .pth/.bin, or a hub folder with timm's config.json); timm's
BiT ResNet-v2 and batch-norm ResNet files are handed to their converters.

timm's parameter names are vitkit's, so conversion is mostly checking: a DDP `module.` prefix is stripped, a
position embedding without a class-token row (timm's `no_embed_class`) gets a zero row, and what vitkit's
ViT does not have (fc_norm, register tokens, LayerScale, ...) is left under its name for a strict load to name.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from typing import Any

import torch
from torch import nn

from vitkit.convert.bit import from_bit_state, is_bit_state
from vitkit.convert.checkpoint import (
    PREPROCESS_KEYS,
    Checkpoint,
    guess_num_heads,
    infer_config,
    prepend_prefix_posemb,
    token_stride,
)
from vitkit.convert.files import ConversionError
from vitkit.convert.resnet import from_timm_resnet_state, is_timm_resnet_state
from vitkit.data.imagefolder import RESAMPLE

log = logging.getLogger(__name__)

# timm's act_layer names of the activations vitkit's MLP computes (the erf GELU and its tanh approximation)
TIMM_ACTS = {"gelu": "gelu", "gelu_tanh": "gelu_tanh"}


def is_timm_state(state: dict[str, torch.Tensor]) -> bool:
    """Whether a state dict uses timm's (= vitkit's) ViT names, a BiT ResNet-v2's (timm's resnetv2_*_bit) or
    timm's ResNet's (resnet50, ...)."""
    state = strip_module(state)
    return "patch_embed.proj.weight" in state or is_bit_state(state) or is_timm_resnet_state(state)


def strip_module(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The names without the prefixes wrappers add to all of them: DDP's `module.`, torch.compile's `_orig_mod.`."""
    state = dict(state)
    while state:
        prefix = next((p for p in ("module.", "_orig_mod.") if all(k.startswith(p) for k in state)), None)
        if prefix is None:
            break
        state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


def _hub_config_facts(config: dict[str, Any], where: str) -> dict[str, Any]:
    """What timm's hub config.json says that weights do not: image size, preprocessing, pooling, heads."""
    pre = config.get("pretrained_cfg") or {}
    facts: dict[str, Any] = {}
    size = pre.get("input_size")
    if isinstance(size, (list, tuple)) and len(size) == 3:
        facts["img_size"] = (int(size[1]), int(size[2]))
    for key in ("mean", "std"):
        if isinstance(pre.get(key), (list, tuple)):
            facts[key] = [float(v) for v in pre[key]]
    if isinstance(pre.get("crop_pct"), (int, float)):
        if not 0 < pre["crop_pct"] <= 1:
            raise ConversionError(f"{where}: pretrained_cfg crop_pct={pre['crop_pct']!r} must lie in (0, 1]")
        facts["crop_pct"] = float(pre["crop_pct"])
    if pre.get("interpolation") in RESAMPLE:  # what PIL resamples with (not timm's "random")
        facts["interpolation"] = pre["interpolation"]
    if isinstance(pre.get("crop_mode"), str):
        facts["crop_mode"] = pre["crop_mode"]
    names = pre.get("label_names", config.get("label_names"))
    if isinstance(names, (list, tuple)) and all(isinstance(n, str) for n in names):
        facts["classes"] = list(names)
    args = {**_architecture_args(config, where), **(config.get("model_args") or {})}
    if "num_heads" in args:
        facts["num_heads"] = int(args["num_heads"])
    act = args.get("act_layer")
    if act is not None and act not in TIMM_ACTS:
        raise ConversionError(
            f"{where}: timm act_layer={act!r}; vitkit's MLP computes {', '.join(map(repr, TIMM_ACTS))}"
        )
    facts["mlp_act"] = TIMM_ACTS.get(act, "gelu")
    facts["dynamic_img_size"] = bool(args.get("dynamic_img_size", False))
    if isinstance(args.get("no_embed_class"), bool):  # whether pos_embed has a class-token row
        facts["no_embed_class"] = args["no_embed_class"]
    if isinstance(args.get("norm_eps"), float):  # a module's LayerNorm eps (timm_module_config)
        facts["norm_eps"] = args["norm_eps"]
    pool = args.get("global_pool", config.get("global_pool"))
    if pool == "":  # timm's unpooled tokens: the weights are a token-pooled model's
        log.warning(
            "%s: timm global_pool='' (unpooled tokens): read as the pooled model its weights are (by the class "
            "token where it has one, else by the mean); call reset_classifier(0, '') on it for the tokens (B, N, D), "
            "as timm gives them",
            where,
        )
        pool = None
    if pool not in (None, "token", "avg"):
        raise ConversionError(
            f"{where}: timm global_pool={pool!r} is not supported (vitkit pools by token or avg)"
        )
    facts["global_pool"] = pool
    return facts


def from_timm_state(
    state: dict[str, torch.Tensor],
    where: str,
    *,
    hub_config: dict[str, Any] | None = None,
    num_heads: int | None = None,
    img_size: tuple[int, int] | None = None,
) -> Checkpoint:
    """A Checkpoint from a timm state dict (and, from the hub, timm's config.json); `img_size`: the size the
    caller wants, which decides the one layout a state dict leaves open (see `_open_layout`)."""
    state = strip_module(state)
    facts = _hub_config_facts(hub_config, where) if hub_config else {}
    side = _open_layout(state, facts)
    if side:  # a square row count with a class token: say which reading is taken
        asked = _tokens(state, tuple(img_size), where) if img_size else None
        if asked in (side * side, side * side - 1):
            facts["img_size"] = tuple(img_size)
        if asked == side * side - 1:
            log.warning(
                "%s: pos_embed's %d rows read as a class-token row and a %dx%d grid, as img_size=%s gives; a "
                "%dx%d grid without one (timm's no_embed_class) would be loaded at its own size, then resampled",
                where, side * side, side - 1, side + 1, tuple(img_size), side, side,
            )  # fmt: skip
        elif asked != side * side:
            log.warning(
                "%s: pos_embed's %d rows read as a %dx%d grid without a class-token row (timm's no_embed_class, "
                "big_vision); if it is a %dx%d grid with one, load it at that size (img_size= in create_model or "
                "model_from_source, --img-size in convert and finetune)",
                where, side * side, side, side, side - 1, side + 1,
            )  # fmt: skip
    elif img_size and "img_size" not in facts and state.get("pos_embed", torch.empty(0)).ndim == 3:
        # no square grid under either reading: the file cannot give its own size, the size asked can
        rows = int(state["pos_embed"].shape[1])
        counts = (rows, rows - 1) if "cls_token" in state else (rows,)
        square = any(c > 0 and math.isqrt(c) ** 2 == c for c in counts)
        if not square and _tokens(state, tuple(img_size), where) in counts:
            facts["img_size"] = tuple(img_size)
    if is_bit_state(state):  # timm's resnetv2_*_bit: the BiT baseline
        meta = {k: facts[k] for k in PREPROCESS_KEYS if k in facts}
        return from_bit_state(state, where, img_size=facts.get("img_size"), meta=meta)
    if is_timm_resnet_state(state):  # timm's resnet50, ...: the batch-norm ResNet baseline
        meta = {k: facts[k] for k in PREPROCESS_KEYS if k in facts}
        return from_timm_resnet_state(state, where, img_size=facts.get("img_size"), meta=meta)
    if "fc_norm.weight" in state:
        raise ConversionError(
            f"{where}: has fc_norm (timm's average pooling with a norm after pooling); vitkit's GAP normalises "
            "before pooling as the paper's code does, so these weights would compute something else"
        )
    if "dist_token" in state:
        raise ConversionError(
            f"{where}: has a distillation token (DeiT's dist_token and head_dist); vitkit's ViT has the class "
            "token only, as the paper's"
        )
    if "reg_token" in state:
        raise ConversionError(
            f"{where}: has register tokens (timm's reg_tokens={int(state['reg_token'].shape[1])}); vitkit's ViT "
            "has the class token only, as the paper's"
        )
    if facts.get("global_pool") == "avg" and "cls_token" in state:
        raise ConversionError(
            f"{where}: a class token pooled by average (timm global_pool='avg' with class_token=True) is not "
            "supported; vitkit's GAP models have no class token"
        )
    prepend_prefix_posemb(state, _grid_tokens(state, facts, where))
    # stated by the model or its config first: a conflict is named later
    heads = facts.get("num_heads") or num_heads
    eps = facts.get("norm_eps", 1e-6)
    cfg = infer_config(state, where, num_heads=heads, norm_eps=eps, img_size=facts.get("img_size"))
    cfg = dataclasses.replace(
        cfg, mlp_act=facts.get("mlp_act", "gelu"), dynamic_img_size=facts.get("dynamic_img_size", False)
    )
    meta = {k: facts[k] for k in (*PREPROCESS_KEYS, "classes") if k in facts}
    known = (
        bool(heads) or guess_num_heads(cfg.embed_dim, cfg.depth, cfg.mlp_dim, where, say=False) is not None
    )
    return Checkpoint(state, cfg, "timm", where, meta, heads_known=known, heads_stated=bool(heads))


def _grid_tokens(state: dict[str, torch.Tensor], facts: dict[str, Any], where: str) -> int | None:
    """The patch tokens pos_embed holds beside any class-token row, where the config says (its
    no_embed_class, else its image size); None: a square count is guessed to have no class-token row."""
    pe = state.get("pos_embed")
    if pe is None or "cls_token" not in state:
        return None
    if "no_embed_class" in facts:
        return int(pe.shape[1]) - (0 if facts["no_embed_class"] else 1)
    if "img_size" in facts:
        return _tokens(state, facts["img_size"], where)
    return None


def _open_layout(state: dict[str, torch.Tensor], facts: dict[str, Any]) -> int:
    """The side g when pos_embed's layout is open: a class token and g^2 rows, which a g x g grid without a
    class-token row and a (g-1) x (g+1) grid with one both fit, and no config to say which; else 0."""
    pe = state.get("pos_embed")
    if pe is None or "cls_token" not in state or "no_embed_class" in facts or "img_size" in facts:
        return 0
    n = int(pe.shape[1])
    side = math.isqrt(n)
    return side if side * side == n and n > 1 else 0


def _tokens(state: dict[str, torch.Tensor], img_size: tuple[int, int], where: str) -> int:
    """Patch tokens of an image of `img_size` under this checkpoint's token stride."""
    stride = token_stride(state, where)
    return (img_size[0] // stride) * (img_size[1] // stride)


# what timm's hub config.json leaves to its named architecture and vitkit cannot read from the weights
ARCHITECTURE_KEYS = ("num_heads", "act_layer", "norm_eps", "no_embed_class")


# create_model's own keywords, which say where weights, configs and caches come from: a folder's config.json
# must not point them anywhere
NOT_MODEL_ARGS = (
    "pretrained", "pretrained_cfg", "pretrained_cfg_overlay", "checkpoint_path", "cache_dir", "scriptable",
    "exportable", "no_jit",
)  # fmt: skip


def _architecture_args(config: dict[str, Any], where: str) -> dict[str, Any]:
    """The model arguments timm's `architecture` implies and config.json's model_args leave out (timm writes
    only those given to create_model): heads, activation, LayerNorm eps, read from timm's module tree."""
    arch, args = config.get("architecture"), config.get("model_args") or {}
    if not isinstance(arch, str) or all(k in args for k in ARCHITECTURE_KEYS[:3]):
        return {}
    try:
        if ":" in arch:  # hf-hub:, local-dir: ... would have timm read (or fetch) another model's config
            raise ValueError("it names a source, not an architecture")
        model = _timm_skeleton(arch, {k: v for k, v in args.items() if k not in NOT_MODEL_ARGS})
    except Exception as e:  # timm missing, or too old to know the architecture
        log.warning(
            "%s: config.json names timm's %s but leaves out its %s, and timm could not build it to say them (%s: "
            "%s): read as vitkit's defaults (heads from the width, the erf GELU, LayerNorm eps 1e-6); pass "
            "num_heads (--num-heads) if they differ",
            where, arch, "/".join(k for k in ARCHITECTURE_KEYS[:3] if k not in args), type(e).__name__, e,
        )  # fmt: skip
        return {}
    implied = timm_module_config(model)["model_args"]
    return {k: implied[k] for k in ARCHITECTURE_KEYS if k in implied}


def _timm_skeleton(arch: str, args: dict[str, Any]) -> nn.Module:
    """timm's `arch` with random weights, for its module tree: on the meta device (no memory), else (timm
    versions whose constructors read numbers off tensors: drop-path rates) one block of it on the CPU."""
    import timm

    try:
        with torch.device("meta"):
            return timm.create_model(arch, pretrained=False, **args)
    except Exception:
        with torch.device("cpu"):
            return timm.create_model(arch, pretrained=False, **(args | {"depth": 1}))


def timm_module_config(model: nn.Module) -> dict[str, Any]:
    """A timm VisionTransformer in memory described as timm's hub config.json describes one: its image size,
    preprocessing, heads, activation, pooling, LayerNorm eps and position-embedding layout."""
    pre = {k: v for k, v in (getattr(model, "pretrained_cfg", None) or {}).items() if k in PREPROCESS_KEYS}
    embed = getattr(model, "patch_embed", None)
    size = getattr(embed, "img_size", None)
    if isinstance(size, (tuple, list)) and len(size) == 2:  # the model's own, not its pretrained_cfg's
        chans = ((getattr(model, "pretrained_cfg", None) or {}).get("input_size") or (3,))[0]
        pre["input_size"] = [chans, int(size[0]), int(size[1])]
    args: dict[str, Any] = {}
    blocks = getattr(model, "blocks", None)
    if isinstance(blocks, nn.Sequential) and len(blocks):
        heads = getattr(getattr(blocks[0], "attn", None), "num_heads", None)
        if isinstance(heads, int):
            args["num_heads"] = heads
        act = getattr(getattr(blocks[0], "mlp", None), "act", None)
        if isinstance(act, nn.GELU):
            args["act_layer"] = "gelu_tanh" if act.approximate == "tanh" else "gelu"
        elif act is not None:  # timm's own GELU and GELUTanh, else a name _hub_config_facts refuses
            args["act_layer"] = {"GELU": "gelu", "GELUTanh": "gelu_tanh"}.get(
                type(act).__name__, type(act).__name__
            )
    for key, kind in (("global_pool", str), ("dynamic_img_size", bool), ("no_embed_class", bool)):
        if isinstance(getattr(model, key, None), kind):  # a ViT's (a ResNet's global_pool is a module)
            args[key] = getattr(model, key)
    norm = getattr(model, "norm", None)
    if isinstance(norm, nn.LayerNorm):
        args["norm_eps"] = float(norm.eps)
    return {"pretrained_cfg": pre, "model_args": args}


def timm_folder_weights(folder: str) -> str:
    """The weights file of a timm hub folder."""
    for name in ("model.safetensors", "pytorch_model.bin"):
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            return path
    raise ConversionError(f"{folder}: timm config.json found but no model.safetensors or pytorch_model.bin")
