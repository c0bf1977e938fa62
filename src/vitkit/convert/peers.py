"""Export a vitkit ViT as a timm or Hugging Face transformers model folder, which their own loaders read:
`timm.create_model("local-dir:FOLDER", pretrained=True)` and `ViTForImageClassification.from_pretrained(FOLDER)`.

Both peers hold the paper's ViT (class token or timm's GAP, pre-LN blocks, final norm, linear head); what they
lack is refused with the reason: the R50 hybrid, the CNN baselines, the 1-D relative attention, the pre-logits
layer, and (transformers) GAP and headless models. vitkit's fixed or factorised position embeddings (sincos2d,
learn2d) are written as the full table they add (timm's `no_embed_class` table, transformers' table with a zero
row for the class token): the same function, a learned table in the peer.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any

import torch

from vitkit.atomic import json_safe, write_json
from vitkit.convert.export import quiet_loggers
from vitkit.convert.files import ConversionError
from vitkit.train.checkpoint import save_weights

log = logging.getLogger(__name__)

PEER_FORMATS = ("timm", "hf")
# timm's registered names of the paper's sizes (width, depth, heads); model_args give every other shape
_TIMM_SIZES = {(192, 12, 3): "tiny", (384, 12, 6): "small", (768, 12, 12): "base", (1024, 24, 16): "large"}
_TIMM_PATCHES = {"tiny": (16,), "small": (16, 32), "base": (8, 16, 32), "large": (16, 32)}
_HF_ACTS = {"gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh"}
_PIL_RESAMPLE = {"nearest": 0, "bilinear": 2, "bicubic": 3}


def check_exportable(model: torch.nn.Module, fmt: str) -> None:
    """Refuse, naming the reason, a model the peer `fmt` ("timm" or "hf") cannot compute."""
    if fmt not in PEER_FORMATS:
        raise ConversionError(f"format {fmt!r}: expected one of {', '.join(PEER_FORMATS)}")
    peer = {"timm": "timm's VisionTransformer", "hf": "transformers' ViTForImageClassification"}[fmt]
    cfg = getattr(model, "cfg", None)
    why = None
    if cfg is None or cfg.arch != "vit":
        name = cfg.name if cfg is not None else type(model).__name__
        why = f"{name} is not a ViT (the CNN baselines export as safetensors or ONNX)"
    elif cfg.backbone is not None:
        why = "the R50 hybrid's ResNet stem has no counterpart there"
    elif cfg.posemb == "relative":
        why = "posemb='relative' (the paper's 1-D relative attention) has no counterpart there"
    elif cfg.representation_size:
        why = "it has no pre-logits layer (the pre-training head); fine-tune with a reset head first"
    elif fmt == "hf" and cfg.pool != "token":
        why = "it pools by the class token only (this model: GAP); --format timm keeps GAP"
    elif fmt == "hf" and cfg.num_classes == 0:
        why = "this model has no head (num_classes=0); --format timm writes a headless model"
    if why:
        raise ConversionError(f"cannot export to {peer}: {why}")
    if fmt == "timm" and cfg.norm_eps != 1e-6:
        log.warning(
            "timm's ViT normalises with LayerNorm eps 1e-6, this model with %g: its logits will differ slightly "
            "(the export's check measures by how much)",
            cfg.norm_eps,
        )


def _patch_table(model: torch.nn.Module) -> torch.Tensor | None:
    """The position embedding added to the patch tokens only (sincos2d, learn2d), (1, Np, D); else None."""
    pe = model._patch_posemb()
    return None if pe is None else pe.detach().float().contiguous()


def _class_names(model: torch.nn.Module, meta: dict[str, Any]) -> list[str] | None:
    classes = meta.get("classes") or model.preprocess.get("classes")
    return [str(c) for c in classes] if classes and len(classes) == model.cfg.num_classes else None


def _mlp_ratio(dim: int, hidden: int) -> float:
    """timm's mlp_ratio whose int(dim * ratio) is `hidden` exactly."""
    ratio = hidden / dim
    return ratio if int(dim * ratio) == hidden else (hidden + 0.5) / dim


def timm_export(model: torch.nn.Module, meta: dict[str, Any] | None = None) -> tuple[dict, dict]:
    """(timm's config.json, timm's state dict) of a vitkit ViT; `meta` may name classes, mean, std."""
    check_exportable(model, "timm")
    cfg, meta = model.cfg, meta or {}
    state = {k: v.detach() for k, v in model.state_dict().items() if not k.startswith("pos_embed_")}
    table = _patch_table(model)
    if table is not None:
        state["pos_embed"] = table  # (1, Np, D), added before the class token joins (no_embed_class)
    size = _TIMM_SIZES.get((cfg.embed_dim, cfg.depth, cfg.num_heads))
    arch = (
        f"vit_{size}_patch{cfg.patch_size}_224"
        if size and cfg.patch_size in _TIMM_PATCHES[size]
        else "vit_base_patch16_224"
    )
    args: dict[str, Any] = {
        "img_size": list(cfg.img_size),
        "patch_size": cfg.patch_size,
        "in_chans": cfg.in_chans,
        "num_classes": cfg.num_classes,
        "embed_dim": cfg.embed_dim,
        "depth": cfg.depth,
        "num_heads": cfg.num_heads,
        "mlp_ratio": _mlp_ratio(cfg.embed_dim, cfg.mlp_dim),
        "qkv_bias": cfg.qkv_bias,
        "global_pool": "token" if cfg.pool == "token" else "avg",
        "class_token": cfg.pool == "token",
        "fc_norm": False,  # vitkit's GAP normalises the tokens, then pools (timm's default for avg: the reverse)
        "pos_embed": "none" if cfg.posemb == "none" else "learn",
        "no_embed_class": table is not None,
        "act_layer": cfg.mlp_act,
    }
    if cfg.dynamic_img_size:
        args["dynamic_img_size"] = True
        if table is not None:
            log.warning(
                "dynamic_img_size with posemb=%r: at another size timm resamples the exported table bicubically, "
                "vitkit %s, so the logits differ there (at %dx%d they agree)",
                cfg.posemb,
                "recomputes it" if cfg.posemb == "sincos2d" else "resamples each axis",
                *cfg.img_size,
            )
    pre = {k: v for k, v in model.pretrained_cfg.items() if k not in ("architecture", "source")}
    pre["fixed_input_size"] = not cfg.dynamic_img_size
    pre.update({k: list(meta[k]) for k in ("mean", "std") if meta.get(k)})
    pre.pop("label_names", None)
    names = _class_names(model, meta)
    if names:
        pre["label_names"] = names
    config = {
        "architecture": arch,
        "num_classes": cfg.num_classes,
        "num_features": cfg.embed_dim,
        "global_pool": args["global_pool"],
        "model_args": args,
        "pretrained_cfg": pre,
    }
    return json_safe(config), state


def _hf_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """transformers' names (as `save_pretrained` writes them) for a class-token vitkit ViT."""
    cfg, sd = model.cfg, {k: v.detach() for k, v in model.state_dict().items()}
    d, n = cfg.embed_dim, cfg.num_tokens
    if cfg.posemb == "learn":
        pe = sd["pos_embed"]  # (1, N, D), the class token's row first
    else:  # the class token gets no position embedding in vitkit's 2D kinds and with none
        table = _patch_table(model)
        table = torch.zeros(1, n - 1, d) if table is None else table
        pe = torch.cat([torch.zeros(1, 1, d, dtype=table.dtype), table], dim=1)  # (1, N, D)
    out = {
        "vit.embeddings.cls_token": sd["cls_token"],
        "vit.embeddings.position_embeddings": pe,
        "vit.embeddings.patch_embeddings.projection.weight": sd["patch_embed.proj.weight"],
        "vit.embeddings.patch_embeddings.projection.bias": sd["patch_embed.proj.bias"],
        "vit.layernorm.weight": sd["norm.weight"],
        "vit.layernorm.bias": sd["norm.bias"],
        "classifier.weight": sd["head.weight"],
        "classifier.bias": sd["head.bias"],
    }
    renames = {
        "attn.proj": "attention.output.dense",
        "mlp.fc1": "intermediate.dense",
        "mlp.fc2": "output.dense",
        "norm1": "layernorm_before",
        "norm2": "layernorm_after",
    }
    for i in range(cfg.depth):
        ours, theirs = f"blocks.{i}.", f"vit.encoder.layer.{i}."
        for kind in ("weight", "bias"):
            if f"{ours}attn.qkv.{kind}" in sd:  # (3D, ...) -> query, key, value
                for part, t in zip(("query", "key", "value"), sd[f"{ours}attn.qkv.{kind}"].chunk(3)):
                    out[f"{theirs}attention.attention.{part}.{kind}"] = t.contiguous()
            for a, b in renames.items():
                out[f"{theirs}{b}.{kind}"] = sd[f"{ours}{a}.{kind}"]
    return out


def hf_export(model: torch.nn.Module, meta: dict[str, Any] | None = None) -> tuple[dict, dict, dict]:
    """(config.json, preprocessor_config.json, state dict) of a transformers ViTForImageClassification folder."""
    check_exportable(model, "hf")
    cfg, meta = model.cfg, meta or {}
    names = _class_names(model, meta) or [f"LABEL_{i}" for i in range(cfg.num_classes)]
    h, w = cfg.img_size
    config = {
        "architectures": ["ViTForImageClassification"],
        "model_type": "vit",
        "hidden_size": cfg.embed_dim,
        "num_hidden_layers": cfg.depth,
        "num_attention_heads": cfg.num_heads,
        "intermediate_size": cfg.mlp_dim,
        "hidden_act": _HF_ACTS[cfg.mlp_act],
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "initializer_range": 0.02,
        "layer_norm_eps": cfg.norm_eps,
        "image_size": h if h == w else [h, w],
        "patch_size": cfg.patch_size,
        "num_channels": cfg.in_chans,
        "qkv_bias": cfg.qkv_bias,
        "encoder_stride": cfg.patch_size,
        "id2label": {str(i): c for i, c in enumerate(names)},
        "label2id": {c: i for i, c in enumerate(names)},
        "dtype": "float32",
    }
    pre_cfg = model.pretrained_cfg
    mean, std = list(meta.get("mean") or pre_cfg["mean"]), list(meta.get("std") or pre_cfg["std"])
    resample = _PIL_RESAMPLE.get(pre_cfg.get("interpolation", "bilinear"), 2)
    # the timm export's preprocessing (pretrained_cfg: vitkit's own when crop_pct is 1): the shorter side to
    # size / crop_pct, a centre crop (BitImageProcessor's), for square inputs; a non-square input is resized
    # to it (ViTImageProcessor's: the aspect ratio is not kept)
    common = {
        "do_resize": True,
        "resample": resample,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": mean,
        "image_std": std,
    }
    crop_pct = float(pre_cfg.get("crop_pct") or 1.0)
    if h == w and pre_cfg.get("crop_mode", "center") == "center":
        processor = {
            "image_processor_type": "BitImageProcessor",
            "size": {"shortest_edge": math.floor(h / crop_pct)},  # timm's scale size
            "do_center_crop": True,
            "crop_size": {"height": h, "width": w},
            "do_convert_rgb": cfg.in_chans == 3,
            **common,
        }
    else:
        log.warning(
            "transformers' image processor for a %dx%d input resizes every image to it: the aspect ratio is not "
            "kept (vitkit predict and timm resize the shorter side and crop)",
            h,
            w,
        )
        processor = {
            "image_processor_type": "ViTImageProcessor",
            "size": {"height": h, "width": w},
            "do_convert_rgb": cfg.in_chans == 3,
            **common,
        }
    if cfg.dynamic_img_size:
        log.warning(
            "dynamic_img_size is not exported to transformers (it takes interpolate_pos_encoding=True)"
        )
    return config, processor, _hf_state(model)


def save_peer_folder(
    folder: str, fmt: str, model: torch.nn.Module, meta: dict[str, Any] | None = None
) -> list[str]:
    """Write `model` as a timm or transformers folder (each file atomically, config.json last); returns the
    files written."""
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise ConversionError(
            f"{folder} is a file; a {fmt} export is a folder (config.json, model.safetensors)"
        )
    model = model.eval()
    if fmt == "timm":
        config, state = timm_export(model, meta)
        files = {"config.json": config}
    else:
        config, processor, state = hf_export(model, meta)
        files = {"preprocessor_config.json": processor, "config.json": config}
    os.makedirs(folder, exist_ok=True)
    stale = os.path.join(folder, "preprocessor_config.json")  # an earlier transformers export's
    if fmt == "timm" and os.path.isfile(stale):
        os.remove(stale)
    weights = os.path.join(folder, "model.safetensors")
    save_weights(weights, {k: v.float().cpu().contiguous() for k, v in state.items()}, {"format": "pt"})
    written = [weights]
    for name, obj in files.items():
        write_json(os.path.join(folder, name), obj)
        written.append(os.path.join(folder, name))
    return written


class PeerMissingError(ConversionError):
    """The peer library that would load an export is not installed."""


def load_peer(folder: str, fmt: str) -> torch.nn.Module:
    """The folder loaded by the peer library itself (timm or transformers, which must be installed), eval mode."""
    if fmt == "timm":
        try:
            import timm
        except ImportError:
            raise PeerMissingError("loading a timm export needs timm: pip install timm") from None
        with quiet_loggers("timm"):  # it logs each file it reads at INFO
            return timm.create_model(f"local-dir:{os.path.abspath(folder)}", pretrained=True).eval()
    try:
        from transformers import ViTForImageClassification
        from transformers.utils import logging as hf_logging
    except ImportError:
        raise PeerMissingError(
            "loading a transformers export needs transformers: pip install transformers"
        ) from None
    hf_logging.disable_progress_bar()  # its per-tensor loading bar
    try:
        return ViTForImageClassification.from_pretrained(folder).eval()
    finally:
        hf_logging.enable_progress_bar()


def check_peer(
    folder: str, fmt: str, model: torch.nn.Module, batch_sizes: tuple[int, ...] = (1, 3), seed: int = 0
) -> float:
    """Max |peer - vitkit| of the logits for random images, the peer loading `folder` with its own code."""
    peer = load_peer(folder, fmt)
    model = model.eval()
    cfg = model.cfg
    gen = torch.Generator().manual_seed(seed)
    worst = 0.0
    device = next(model.parameters()).device
    for b in batch_sizes:
        x = torch.randn(b, cfg.in_chans, *cfg.img_size, generator=gen)  # (B, C, H, W)
        with torch.no_grad():
            ref = model(x.to(device, next(model.parameters()).dtype)).float().cpu()
            out = peer(x)
        out = out.logits if hasattr(out, "logits") else out
        if tuple(out.shape) != tuple(ref.shape):
            raise ConversionError(
                f"{folder}: {fmt} gave logits {tuple(out.shape)}, vitkit {tuple(ref.shape)}"
            )
        worst = max(worst, float((out.float() - ref).abs().max()))
    return worst
