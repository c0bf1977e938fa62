"""Hugging Face transformers ViTModel / ViTForImageClassification folders -> vitkit.

A folder holds config.json and model.safetensors (or pytorch_model.bin, or sharded files with an index).
Names (transformers <= 4 and the files `save_pretrained` writes; transformers 5 in-memory names too):
  [vit.]embeddings.patch_embeddings.projection   -> patch_embed.proj
  [vit.]embeddings.cls_token / position_embeddings -> cls_token / pos_embed
  [vit.]encoder.layer.i.attention.attention.{query,key,value} -> blocks.i.attn.qkv (concatenated)
  [vit.]encoder.layer.i.attention.output.dense   -> blocks.i.attn.proj
  [vit.]encoder.layer.i.intermediate.dense / output.dense -> blocks.i.mlp.fc1 / fc2
  [vit.]encoder.layer.i.layernorm_before / _after -> blocks.i.norm1 / norm2
  [vit.]layernorm -> norm;  pooler.dense (+ tanh) -> pre_logits.fc;  classifier -> head
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from typing import Any

import torch

from vitkit.convert.checkpoint import Checkpoint, guess_num_heads, infer_config
from vitkit.convert.files import ConversionError, read_json_file, read_weights_file

_RENAMES: list[tuple[re.Pattern, str]] = [
    (re.compile(p), r)
    for p, r in [
        (r"^embeddings\.patch_embeddings\.projection\.(weight|bias)$", r"patch_embed.proj.\1"),
        (r"^embeddings\.cls_token$", "cls_token"),
        (r"^embeddings\.position_embeddings$", "pos_embed"),
        (r"^(?:encoder\.layer|layers)\.(\d+)\.attention\.(?:attention\.)?(query|key|value)\.(weight|bias)$", r"qkv.\1.\2.\3"),
        (r"^(?:encoder\.layer|layers)\.(\d+)\.attention\.([qkv])_proj\.(weight|bias)$", r"qkv.\1.\2.\3"),
        (r"^(?:encoder\.layer|layers)\.(\d+)\.attention\.(?:output\.dense|o_proj)\.(weight|bias)$", r"blocks.\1.attn.proj.\2"),
        (r"^(?:encoder\.layer|layers)\.(\d+)\.(?:intermediate\.dense|mlp\.fc1)\.(weight|bias)$", r"blocks.\1.mlp.fc1.\2"),
        (r"^(?:encoder\.layer|layers)\.(\d+)\.(?:output\.dense|mlp\.fc2)\.(weight|bias)$", r"blocks.\1.mlp.fc2.\2"),
        (r"^(?:encoder\.layer|layers)\.(\d+)\.layernorm_before\.(weight|bias)$", r"blocks.\1.norm1.\2"),
        (r"^(?:encoder\.layer|layers)\.(\d+)\.layernorm_after\.(weight|bias)$", r"blocks.\1.norm2.\2"),
        (r"^layernorm\.(weight|bias)$", r"norm.\1"),
        (r"^pooler\.dense\.(weight|bias)$", r"pre_logits.fc.\1"),
        (r"^classifier\.(weight|bias)$", r"head.\1"),
    ]
]  # fmt: skip
_QKV_ORDER = {"query": 0, "key": 1, "value": 2, "q": 0, "k": 1, "v": 2}
_DROPPED = ("embeddings.mask_token",)  # used only for masked-image pre-training


def is_hf_state(state: dict[str, torch.Tensor]) -> bool:
    """Whether a state dict uses transformers' ViT names."""
    return any(k.removeprefix("vit.") == "embeddings.patch_embeddings.projection.weight" for k in state)


def convert_hf_state(
    state: dict[str, torch.Tensor], where: str = "transformers weights"
) -> dict[str, torch.Tensor]:
    """Rename to vitkit's names, concatenating query/key/value; unknown keys keep their names (`where`: the
    source, for errors)."""
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], dict[int, torch.Tensor]] = {}
    for key, value in state.items():
        name = key.removeprefix("vit.")
        if name in _DROPPED:
            continue
        for pattern, repl in _RENAMES:
            if pattern.match(name):
                new = pattern.sub(repl, name)
                if new.startswith("qkv."):
                    _, layer, part, kind = new.split(".")
                    qkv.setdefault((layer, kind), {})[_QKV_ORDER[part]] = value
                else:
                    out[new] = value
                break
        else:
            out[key] = value
    for (layer, kind), parts in qkv.items():
        if sorted(parts) != [0, 1, 2]:
            names = [n for n, i in _QKV_ORDER.items() if len(n) > 1 and i not in parts]
            missing = ", ".join(f"encoder.layer.{layer}.attention.attention.{n}.{kind}" for n in names)
            raise ConversionError(f"{where}: missing {missing} (layer {layer}'s query/key/value {kind})")
        out[f"blocks.{layer}.attn.qkv.{kind}"] = torch.cat([parts[0], parts[1], parts[2]])  # (3D, ...)
    return out


def _read_sharded(index_path: str) -> dict[str, torch.Tensor]:
    folder = os.path.dirname(index_path)
    index = read_json_file(index_path)
    files = sorted(set((index.get("weight_map") or {}).values()))
    if not files:
        raise ConversionError(f"{index_path}: no weight_map")
    state: dict[str, torch.Tensor] = {}
    for name in files:
        state.update(read_weights_file(os.path.join(folder, name))[0])
    return state


def hf_folder_weights(folder: str) -> dict[str, torch.Tensor]:
    """The tensors of a transformers model folder (safetensors preferred; .bin read weights-only)."""
    for name in ("model.safetensors", "pytorch_model.bin"):
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            return read_weights_file(path)[0]
    for name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            return _read_sharded(path)
    raise ConversionError(f"{folder}: config.json found but no model.safetensors or pytorch_model.bin")


def _pair(v: Any) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, (int, float)) else (int(v[0]), int(v[1]))


# transformers' activations vitkit's MLP computes: the erf GELU, and two names of its tanh approximation
HF_ACTS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh"}


def _check_hf_config(config: dict[str, Any], where: str) -> None:
    if config.get("model_type", "vit") != "vit":
        raise ConversionError(f"{where}: model_type={config.get('model_type')!r}; only 'vit' is supported")
    if config.get("hidden_act", "gelu") not in HF_ACTS:
        raise ConversionError(
            f"{where}: hidden_act={config['hidden_act']!r}; vitkit's MLP takes {', '.join(map(repr, HF_ACTS))}"
        )
    if config.get("pooler_act", "tanh") != "tanh":
        raise ConversionError(f"{where}: pooler_act={config['pooler_act']!r}; vitkit's pre-logits use tanh")


def from_hf_state(
    state: dict[str, torch.Tensor],
    config: dict[str, Any],
    where: str,
    img_size: tuple[int, int] | None = None,
) -> Checkpoint:
    """A Checkpoint from transformers weights and their config.json dict; `img_size`, the size asked for, reads
    a grid that weights without a config cannot give (one that is not square)."""
    _check_hf_config(config, where)
    converted = convert_hf_state(state, where)
    img = _pair(config["image_size"]) if "image_size" in config else _asked_grid(converted, img_size)
    cfg = infer_config(
        converted,
        where,
        num_heads=int(config["num_attention_heads"]) if "num_attention_heads" in config else None,
        norm_eps=float(config.get("layer_norm_eps", 1e-12)),
        img_size=img,
    )
    cfg = dataclasses.replace(cfg, mlp_act=HF_ACTS[config.get("hidden_act", "gelu")])
    meta: dict[str, Any] = {}
    labels = config.get("id2label")
    if isinstance(labels, dict) and len(labels) == cfg.num_classes and cfg.num_classes:
        meta["classes"] = [str(labels.get(str(i), labels.get(i, i))) for i in range(cfg.num_classes)]
    known = "num_attention_heads" in config or guess_num_heads(
        cfg.embed_dim, cfg.depth, cfg.mlp_dim, where, say=False
    )
    stated = "num_attention_heads" in config
    return Checkpoint(converted, cfg, "hf", where, meta, heads_known=bool(known), heads_stated=stated)


def _asked_grid(state: dict[str, torch.Tensor], img_size: tuple[int, int] | None) -> tuple[int, int] | None:
    """`img_size` where its grid has as many patches as the position embedding's rows past the class token and
    those are no square (a square is read as a square grid, as transformers does), else None."""
    pos, proj = state.get("pos_embed"), state.get("patch_embed.proj.weight")
    if img_size is None or pos is None or proj is None:
        return None
    n, p = int(pos.shape[1]) - 1, int(proj.shape[-1])
    fits = (img_size[0] // p) * (img_size[1] // p) == n
    return tuple(img_size) if fits and math.isqrt(n) ** 2 != n else None


def read_hf_folder(folder: str) -> Checkpoint:
    """Read a ViTModel / ViTForImageClassification folder written by `save_pretrained`."""
    config = read_json_file(os.path.join(folder, "config.json"))
    ckpt = from_hf_state(hf_folder_weights(folder), config, folder)
    pre = os.path.join(folder, "preprocessor_config.json")
    if os.path.isfile(pre):
        try:
            p = read_json_file(pre)
            if isinstance(p.get("image_mean"), list) and isinstance(p.get("image_std"), list):
                ckpt.meta.update(
                    mean=[float(v) for v in p["image_mean"]], std=[float(v) for v in p["image_std"]]
                )
        except (ConversionError, json.JSONDecodeError, ValueError):
            pass  # preprocessing hints are optional
    ckpt.meta.setdefault("mean", [0.5] * ckpt.config.in_chans)  # the Google ViT checkpoints' [-1, 1] scaling
    ckpt.meta.setdefault("std", [0.5] * ckpt.config.in_chans)
    return ckpt
