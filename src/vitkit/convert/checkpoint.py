"""A checkpoint in vitkit's parameter names, and the ModelConfig its tensors imply."""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field
from typing import Any

import torch

from vitkit.config import ModelConfig, backbone_stride
from vitkit.convert.files import ConversionError
from vitkit.models.data_config import EDITABLE
from vitkit.models.registry import WIDTHS, model_name

log = logging.getLogger(__name__)

_BLOCK = re.compile(r"^blocks\.(\d+)\.")


# the weights' preprocessing a source may state, kept in Checkpoint.meta and the model's pretrained_cfg
PREPROCESS_KEYS = EDITABLE


@dataclass
class Checkpoint:
    """Weights renamed to vitkit's (timm's) names, the config they imply, and where they came from.

    Keys a converter could not map keep their original names, so a strict load names them.
    `meta` holds what preprocessing needs when the source says it: mean, std, classes.
    """

    state: dict[str, torch.Tensor]
    config: ModelConfig
    format: str  # "official" | "big_vision" | "timm" | "hf" | "vitkit"
    path: str
    meta: dict[str, Any] = field(default_factory=dict)
    # False for fused-qkv weights of an unusual width: config.num_heads is then a placeholder
    heads_known: bool = True
    # the source states its heads (a vitkit config, an .npz's per-head shapes, transformers' or timm's config, a
    # model in memory, num_heads given): a model with others would compute another function; False where they
    # were guessed from the paper's table (a bare fused-qkv state dict)
    heads_stated: bool = False


def guess_num_heads(width: int, depth: int, mlp: int, where: str, say: bool = True) -> int | None:
    """Heads of a fused-qkv checkpoint: the paper's table when width/depth/MLP match, else width / 64 (logged
    if `say`), else None."""
    for name, (w, d, h, m) in WIDTHS.items():
        if (w, d, m) == (width, depth, mlp):
            if say:
                log.info(
                    "%s: num_heads not stored; %d as ViT-%s's (--num-heads if it had others)", where, h, name
                )
            return h
    if width % 64 == 0:
        if say:
            log.info("%s: num_heads not stored; assuming head width 64 -> %d heads", where, width // 64)
        return width // 64
    return None


def unknown_heads_error(ckpt: Checkpoint) -> ConversionError:
    """The error for building a model from a checkpoint whose number of heads is not known."""
    c = ckpt.config
    return ConversionError(
        f"{ckpt.path}: the number of attention heads is not stored in the checkpoint and width {c.embed_dim} "
        "is not a multiple of 64; pass num_heads=... (--num-heads on the command line) or a model name such as "
        "'ViT-S/16'"
    )


def stage_depths(state: dict[str, torch.Tensor], prefix: str, where: str) -> tuple[int, ...]:
    """ResNet stage depths from the `<prefix>stages.N.blocks.M.` keys, checked to be numbered 0..N-1."""
    pattern = re.compile(rf"^{re.escape(prefix)}stages\.(\d+)\.blocks\.(\d+)\.")
    blocks: dict[int, set[int]] = {}
    for k in state:
        if m := pattern.match(k):
            blocks.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
    if sorted(blocks) != list(range(len(blocks))):
        raise ConversionError(f"{where}: the ResNet's stages are {sorted(blocks)}, not numbered 0..N-1")
    layers = tuple(len(blocks[i]) for i in sorted(blocks))
    for i, n in enumerate(layers):
        if blocks[i] != set(range(n)):
            raise ConversionError(f"{where}: stage {i}'s blocks are {sorted(blocks[i])}, not numbered 0..N-1")
    return layers


def infer_backbone(state: dict[str, torch.Tensor], where: str) -> tuple[tuple[int, ...] | None, int | None]:
    """A hybrid's ResNet stage depths and input channels from timm's key layout; (None, None) for a plain ViT."""
    root = state.get("patch_embed.backbone.conv.weight")  # the root alone (timm's R+ViT layout)
    stem = state.get("patch_embed.backbone.stem.conv.weight") if root is None else root
    if stem is None:
        if any(k.startswith("patch_embed.backbone.") for k in state):
            some = sorted(k for k in state if k.startswith("patch_embed.backbone."))[:3]
            raise ConversionError(
                f"{where}: a hybrid whose CNN is not the BiT ResNet vitkit builds (keys such as {some}); "
                "vitkit reads the ResNet-v2 hybrids (R50/R26/root, as timm's vit_*_r50_s16, vit_*_r26_s32)"
            )
        return None, None
    if tuple(stem.shape[0:1]) + tuple(stem.shape[2:]) != (64, 7, 7):
        raise ConversionError(
            f"{where}: the hybrid's root conv is {tuple(stem.shape)}; vitkit's BiT root is (64, C, 7, 7) (width 1x)"
        )
    if root is not None:
        return (), int(root.shape[1])
    layers = stage_depths(state, "patch_embed.backbone.", where)
    return layers, int(stem.shape[1])


def _depth(state: dict[str, torch.Tensor], where: str) -> int:
    ids = sorted({int(m.group(1)) for k in state if (m := _BLOCK.match(k))})
    if not ids:
        raise ConversionError(f"{where}: no transformer blocks (blocks.N.*) found")
    if ids != list(range(len(ids))):
        raise ConversionError(f"{where}: transformer blocks are not numbered 0..N-1: {ids}")
    return len(ids)


def _require(state: dict[str, torch.Tensor], key: str, where: str) -> torch.Tensor:
    if key not in state:
        raise ConversionError(f"{where}: missing {key!r}; is this a Vision Transformer checkpoint?")
    return state[key]


def _check_blocks_agree(state: dict[str, torch.Tensor], where: str, depth: int) -> None:
    """Each encoder block's MLP and attention widths agree within it, and every block's tensors have the shapes
    of the others': else the tensors at fault are named (the config is read from block 0)."""
    pairs = [("mlp.fc1.weight", 0, "mlp.fc1.bias", 0), ("mlp.fc1.weight", 0, "mlp.fc2.weight", 1)]
    pairs += [("attn.qkv.weight", 0, "attn.qkv.bias", 0), ("attn.proj.weight", 1, "attn.qkv.weight", 1)]
    for i in range(depth):
        for a, da, b, db in pairs:
            ta, tb = state.get(f"blocks.{i}.{a}"), state.get(f"blocks.{i}.{b}")
            if ta is None or tb is None or ta.ndim <= da or tb.ndim <= db or ta.shape[da] == tb.shape[db]:
                continue
            raise ConversionError(
                f"{where}: blocks.{i}.{a} {tuple(ta.shape)} and blocks.{i}.{b} {tuple(tb.shape)} disagree on a width"
            )
    for name in sorted({k.split(".", 2)[2] for k in state if _BLOCK.match(k)}):
        shapes = {
            i: tuple(state[f"blocks.{i}.{name}"].shape) for i in range(depth) if f"blocks.{i}.{name}" in state
        }
        if len(set(shapes.values())) < 2:
            continue
        counts = list(shapes.values())
        common = max(set(counts), key=counts.count)
        if 2 * counts.count(common) > len(counts):  # a majority: the others are at fault
            odd = [f"blocks.{i}.{name} {shape}" for i, shape in shapes.items() if shape != common]
            raise ConversionError(f"{where}: {', '.join(odd)} unlike the other blocks' {common}")
        listed = ", ".join(f"blocks.{i}.{name} {shape}" for i, shape in shapes.items())
        raise ConversionError(f"{where}: the blocks' shapes differ: {listed}")


def token_stride(state: dict[str, torch.Tensor], where: str) -> int:
    """Pixels per token side: the patch size, times a hybrid's ResNet stride."""
    patch = int(_require(state, "patch_embed.proj.weight", where).shape[-1])
    backbone, _ = infer_backbone(state, where)
    return patch if backbone is None else patch * backbone_stride(backbone)


def _square_size(n: int, stride: int, what: str, where: str) -> tuple[int, int]:
    """The image size of a square grid of `n` patches (a file that does not say its size), else an error."""
    side = math.isqrt(max(n, 0))
    if side * side != n:
        raise ConversionError(
            f"{where}: {what} do not form a square grid, and the file does not say the image size: pass the "
            "model's img_size, or save it as a vitkit file (vitkit.convert.save_model_file) with its config"
        )
    return (side * stride, side * stride)


def infer_config(
    state: dict[str, torch.Tensor],
    where: str,
    *,
    num_heads: int | None = None,
    norm_eps: float = 1e-6,
    img_size: tuple[int, int] | None = None,
    posemb: str | None = None,
) -> ModelConfig:
    """The ModelConfig implied by a state dict in vitkit's names (width, depth, MLP, patch, pool, head, grid)."""
    proj = _require(state, "patch_embed.proj.weight", where)  # (D, C, P, P)
    if proj.ndim != 4 or proj.shape[2] != proj.shape[3]:
        raise ConversionError(
            f"{where}: patch_embed.proj.weight has shape {tuple(proj.shape)}, expected (D, C, P, P)"
        )
    width, in_chans, patch = int(proj.shape[0]), int(proj.shape[1]), int(proj.shape[2])
    backbone, backbone_in = infer_backbone(state, where)
    stride = token_stride(state, where)
    if backbone is not None:
        in_chans = backbone_in
    depth = _depth(state, where)
    _check_blocks_agree(state, where, depth)
    mlp = int(_require(state, "blocks.0.mlp.fc1.weight", where).shape[0])
    heads = num_heads or guess_num_heads(width, depth, mlp, where) or 1  # 1: unknown (see heads_known)
    pool = "token" if "cls_token" in state else "gap"
    prefix = 1 if pool == "token" else 0
    if posemb is None:
        posemb = "learn" if "pos_embed" in state else "learn2d" if "pos_embed_row" in state else "none"
        if posemb == "none" and "blocks.0.attn.rel_pos" in state:
            posemb = "relative"
    if img_size is None:
        if "pos_embed" in state:
            n = int(state["pos_embed"].shape[1]) - prefix
            img_size = _square_size(n, stride, f"{n} patch position embeddings", where)
        elif "pos_embed_row" in state:
            img_size = (state["pos_embed_row"].shape[1] * stride, state["pos_embed_col"].shape[1] * stride)
        elif posemb == "relative":  # 2 N - 1 offsets of N tokens
            n = (int(state["blocks.0.attn.rel_pos"].shape[0]) + 1) // 2 - prefix
            img_size = _square_size(n, stride, f"blocks.0.attn.rel_pos's offsets of {n} patches", where)
        else:
            img_size = (224, 224)
            log.info("%s: no position embedding to read the grid from; assuming 224x224 images", where)
    head = state.get("head.weight")
    pre = state.get("pre_logits.fc.weight")
    try:
        return ModelConfig(
            name=model_name(width, depth, heads, mlp, patch, backbone),
            img_size=img_size,
            patch_size=patch,
            in_chans=in_chans,
            num_classes=int(head.shape[0]) if head is not None else 0,
            embed_dim=width,
            depth=depth,
            num_heads=heads,
            mlp_dim=mlp,
            pool=pool,
            posemb=posemb,
            representation_size=int(pre.shape[0]) if pre is not None else None,
            qkv_bias="blocks.0.attn.qkv.bias" in state,
            norm_eps=norm_eps,
            backbone=backbone,
        )
    except ValueError as e:  # e.g. --num-heads that does not divide the width: name the file
        raise ConversionError(f"{where}: {e}") from None


def prepend_prefix_posemb(state: dict[str, torch.Tensor], grid_tokens: int | None = None) -> None:
    """Give the class token a zero position embedding when the checkpoint adds none to it (in place).

    big_vision and timm's `no_embed_class` models add the position embedding before prepending the class token;
    vitkit adds it after, so a zero row for the class token computes the same thing.
    """
    pe = state.get("pos_embed")
    if pe is None or "cls_token" not in state or pe.ndim != 3:  # another shape: the load names it as it is
        return
    n = int(pe.shape[1])
    without_prefix = grid_tokens == n if grid_tokens is not None else math.isqrt(n) ** 2 == n and n > 1
    if without_prefix:
        state["pos_embed"] = torch.cat([torch.zeros_like(pe[:, :1]), pe], dim=1)  # (1, 1 + N, D)


def adapt_channel_stats(values: list[float], in_chans: int) -> list[float]:
    """A per-channel mean or std for the channels `adapt_input_channels` made: their average for one (grey),
    else the same cycle of the checkpoint's channels."""
    if len(values) == in_chans:
        return list(values)
    if in_chans == 1:
        return [sum(values) / len(values)]
    return [values[i % len(values)] for i in range(in_chans)]
