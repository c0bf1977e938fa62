"""google-research/vision_transformer and big_vision (AugReg) .npz checkpoints -> vitkit state dicts.

Flax names and layouts (kernels are (in, out); attention kernels are split by head):
  embedding/kernel (P, P, C, D)                  -> patch_embed.proj.weight (D, C, P, P)
  cls (1, 1, D)                                  -> cls_token
  Transformer/posembed_input/pos_embedding       -> pos_embed (official: class token included)
  pos_embedding (big_vision, top level)          -> pos_embed (no class-token entry: a zero row is added)
  Transformer/encoderblock_<i>/ or the scanned Transformer/encoderblock/ with a leading depth axis:
    LayerNorm_0                                  -> blocks.i.norm1
    MultiHeadDotProductAttention_1 (_0 in big_vision)/{query,key,value} (D, H, hd) -> blocks.i.attn.qkv
    .../out/kernel (H, hd, D)                    -> blocks.i.attn.proj
    LayerNorm_2 (LayerNorm_1 in big_vision)      -> blocks.i.norm2
    MlpBlock_3 (MlpBlock_0 in big_vision)/Dense_{0,1} -> blocks.i.mlp.fc{1,2}
  Transformer/encoder_norm                       -> norm
  pre_logits (Dense + tanh)                      -> pre_logits.fc
  head                                           -> head
Hybrids (R50+ViT-B/16 and the like), their BiT ResNet (kernels (kh, kw, in, out) -> (out, in, kh, kw)):
  conv_root/kernel, gn_root/{scale,bias}         -> patch_embed.backbone.stem.{conv,norm} (the root alone:
                                                    patch_embed.backbone.{conv,norm})
  block<i>/unit<j>/conv{1,2,3}, gn{1,2,3}        -> patch_embed.backbone.stages.i-1.blocks.j-1.{conv,norm}{1,2,3}
  block<i>/unit<j>/conv_proj, gn_proj            -> ....downsample.{conv,norm}
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch

from vitkit.convert.checkpoint import Checkpoint, infer_config, prepend_prefix_posemb, token_stride
from vitkit.convert.files import ConversionError, read_npz

log = logging.getLogger(__name__)

PREFIXES = ("opt/target/", "params/", "")


def _t(a: np.ndarray) -> torch.Tensor:
    """A float32 tensor (copied) from a numpy array."""
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))


class _Reader:
    """Pops arrays by name so that whatever is left at the end can be reported."""

    def __init__(self, arrays: dict[str, np.ndarray], prefix: str, path: str):
        self.left = {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)}
        self.path = path
        self.used: set[str] = set()  # stacked arrays read by index, dropped once every block is read

    def has(self, key: str) -> bool:
        return key in self.left

    def pop(self, key: str, idx: int | None = None, ndim: int | None = None) -> np.ndarray:
        """Array `key` (of a scanned layout: its entry `idx`), checked to hold numbers (and `ndim` axes)."""
        if key not in self.left:
            raise ConversionError(f"{self.path}: missing array {key!r}")
        a = self.left[key]
        if not np.issubdtype(a.dtype, np.number):
            raise ConversionError(f"{self.path}: array {key!r} holds {a.dtype}, not numbers")
        if idx is None:
            del self.left[key]
        else:
            if a.ndim == 0 or a.shape[0] <= idx:
                raise ConversionError(
                    f"{self.path}: array {key!r} of shape {a.shape} has no entry for block {idx} (the scanned "
                    "blocks' arrays disagree on the depth)"
                )
            self.used.add(key)
            a = a[idx]
        if ndim is not None and a.ndim != ndim:
            where = key if idx is None else f"{key}[{idx}]"
            raise ConversionError(f"{self.path}: array {where!r} has shape {a.shape}; expected {ndim} axes")
        return a

    def drop_used(self) -> None:
        for key in self.used:
            self.left.pop(key, None)
        self.used.clear()


def _detect_prefix(arrays: dict[str, np.ndarray], path: str) -> str:
    for prefix in PREFIXES:
        if f"{prefix}embedding/kernel" in arrays:
            return prefix
    some = sorted(arrays)[:6]
    raise ConversionError(
        f"{path}: no 'embedding/kernel' (optionally under 'opt/target/' or 'params/'): not a ViT checkpoint "
        f"of the official or big_vision code (first keys: {some})"
    )


def _pick(r: _Reader, base: str, options: tuple[str, ...], what: str) -> str:
    for name in options:
        if any(k.startswith(f"{base}{name}/") for k in r.left):
            return name
    raise ConversionError(f"{r.path}: no {what} ({' or '.join(options)}) under {base!r}")


def _block(r: _Reader, base: str, idx: int | None, out: dict[str, torch.Tensor], i: int) -> int:
    """Convert one encoder block into `out` under blocks.i; returns its number of heads."""
    mha = _pick(r, base, ("MultiHeadDotProductAttention_1", "MultiHeadDotProductAttention_0"), "attention")
    mlp = _pick(r, base, ("MlpBlock_3", "MlpBlock_0"), "MLP block")
    ln2 = "LayerNorm_2" if any(k.startswith(f"{base}LayerNorm_2/") for k in r.left) else "LayerNorm_1"
    a = f"{base}{mha}/"
    q, k, v = (r.pop(f"{a}{n}/kernel", idx, ndim=3) for n in ("query", "key", "value"))  # (D, H, hd) each
    proj = r.pop(f"{a}out/kernel", idx, ndim=3)  # (H, hd, D)
    dim, heads = q.shape[0], q.shape[1]
    if k.shape != q.shape or v.shape != q.shape or proj.shape != (q.shape[1], q.shape[2], dim):
        raise ConversionError(
            f"{r.path}: block {i}'s attention kernels disagree: query {q.shape}, key {k.shape}, value {v.shape} "
            f"(each (D, heads, head width)), out {proj.shape} (heads, head width, D)"
        )
    out[f"blocks.{i}.attn.qkv.weight"] = torch.cat([_t(w.reshape(dim, -1).T) for w in (q, k, v)])  # (3D, D)
    if f"{a}query/bias" in r.left:
        out[f"blocks.{i}.attn.qkv.bias"] = torch.cat(
            [_t(r.pop(f"{a}{n}/bias", idx).reshape(-1)) for n in ("query", "key", "value")]
        )
    out[f"blocks.{i}.attn.proj.weight"] = _t(proj.reshape(-1, dim).T)  # (D, H*hd)
    out[f"blocks.{i}.attn.proj.bias"] = _t(r.pop(f"{a}out/bias", idx))
    for src, dst in (("LayerNorm_0", "norm1"), (ln2, "norm2")):
        out[f"blocks.{i}.{dst}.weight"] = _t(r.pop(f"{base}{src}/scale", idx))
        out[f"blocks.{i}.{dst}.bias"] = _t(r.pop(f"{base}{src}/bias", idx))
    for j in range(2):
        out[f"blocks.{i}.mlp.fc{j + 1}.weight"] = _t(r.pop(f"{base}{mlp}/Dense_{j}/kernel", idx).T)
        out[f"blocks.{i}.mlp.fc{j + 1}.bias"] = _t(r.pop(f"{base}{mlp}/Dense_{j}/bias", idx))
    return int(heads)


def _backbone(r: _Reader, out: dict[str, torch.Tensor]) -> None:
    """A hybrid's ResNet (official names) into `out` under timm's names; nothing for a plain ViT."""
    if not r.has("conv_root/kernel"):
        return
    stages = sorted({int(k.split("/")[0][5:]) for k in r.left if k.startswith("block") and "/unit" in k})
    root = "patch_embed.backbone." + ("stem." if stages else "")
    out[f"{root}conv.weight"] = _t(r.pop("conv_root/kernel").transpose(3, 2, 0, 1))
    out[f"{root}norm.weight"] = _t(r.pop("gn_root/scale"))
    out[f"{root}norm.bias"] = _t(r.pop("gn_root/bias"))
    for i in stages:
        j = 1
        while r.has(f"block{i}/unit{j}/conv1/kernel"):
            src, dst = f"block{i}/unit{j}/", f"patch_embed.backbone.stages.{i - 1}.blocks.{j - 1}."
            for a, b in [(f"conv{n}", f"conv{n}") for n in (1, 2, 3)] + [("conv_proj", "downsample.conv")]:
                if r.has(f"{src}{a}/kernel"):
                    out[f"{dst}{b}.weight"] = _t(r.pop(f"{src}{a}/kernel").transpose(3, 2, 0, 1))
            for a, b in [(f"gn{n}", f"norm{n}") for n in (1, 2, 3)] + [("gn_proj", "downsample.norm")]:
                if r.has(f"{src}{a}/scale"):
                    out[f"{dst}{b}.weight"] = _t(r.pop(f"{src}{a}/scale"))
                    out[f"{dst}{b}.bias"] = _t(r.pop(f"{src}{a}/bias"))
            j += 1


def convert_official(arrays: dict[str, np.ndarray], path: str) -> tuple[dict[str, torch.Tensor], dict]:
    """vitkit state dict (+ unconverted arrays under their names) and facts: heads, layout, posemb."""
    prefix = _detect_prefix(arrays, path)
    r = _Reader(arrays, prefix, path)
    out: dict[str, torch.Tensor] = {}
    kernel = r.pop("embedding/kernel", ndim=4)  # (P, P, C, D)
    out["patch_embed.proj.weight"] = _t(kernel.transpose(3, 2, 0, 1))  # (D, C, P, P)
    out["patch_embed.proj.bias"] = _t(r.pop("embedding/bias"))
    _backbone(r, out)
    if r.has("cls"):
        out["cls_token"] = _t(r.pop("cls")).reshape(1, 1, -1)
    big_vision = r.has("pos_embedding") or prefix == "params/"
    for key in ("Transformer/posembed_input/pos_embedding", "pos_embedding"):
        if r.has(key):
            pe = _t(r.pop(key))
            out["pos_embed"] = pe if pe.ndim == 3 else pe.reshape(1, -1, pe.shape[-1])  # (1, N, D)
    scanned = "Transformer/encoderblock/"
    heads: list[int] = []
    if any(k.startswith(scanned) for k in r.left):
        ln0 = r.left.get(f"{scanned}LayerNorm_0/scale")
        if ln0 is None or ln0.ndim != 2:
            shape = None if ln0 is None else ln0.shape
            raise ConversionError(f"{path}: {scanned}LayerNorm_0/scale is {shape}; expected (depth, D)")
        depth = int(ln0.shape[0])
        for i in range(depth):
            heads.append(_block(r, scanned, i, out, i))
        r.drop_used()
    else:
        i = 0
        while any(k.startswith(f"Transformer/encoderblock_{i}/") for k in r.left):
            heads.append(_block(r, f"Transformer/encoderblock_{i}/", None, out, i))
            i += 1
        later = sorted({k.split("/")[1] for k in r.left if k.startswith("Transformer/encoderblock_")})
        if later:  # a gap in the numbering: the blocks after it would be left out
            raise ConversionError(f"{path}: Transformer/encoderblock_{i} is missing, but {later[0]} is there")
    if len(set(heads)) > 1:
        raise ConversionError(
            f"{path}: the blocks' attention heads differ ({heads}); a ViT's blocks all have the same"
        )
    out["norm.weight"] = _t(r.pop("Transformer/encoder_norm/scale"))
    out["norm.bias"] = _t(r.pop("Transformer/encoder_norm/bias"))
    for src, dst in (("pre_logits", "pre_logits.fc"), ("head", "head")):
        if r.has(f"{src}/kernel"):
            out[f"{dst}.weight"] = _t(r.pop(f"{src}/kernel").T)
            out[f"{dst}.bias"] = _t(r.pop(f"{src}/bias"))
    if any(k.startswith("MAPHead_0/") for k in r.left):
        raise ConversionError(
            f"{path}: attention-pooling (MAP) heads are not supported; vitkit pools by token or GAP"
        )
    for k, v in r.left.items():  # kept under their original names, so that a strict load names them
        try:
            out[prefix + k] = torch.from_numpy(np.array(v))
        except TypeError:
            out[prefix + k] = torch.empty(0)
    return out, {"num_heads": heads[0] if heads else 0, "layout": "big_vision" if big_vision else "official"}


def read_official(
    path: str, arrays: dict[str, np.ndarray] | None = None, img_size: tuple[int, int] | None = None
) -> Checkpoint:
    """Read an official or big_vision .npz (no pickles) into a Checkpoint (`arrays`: the file, already read;
    `img_size`: the size asked for, which reads a grid the file cannot give, one that is not square)."""
    arrays = read_npz(path) if arrays is None else arrays
    state, facts = convert_official(arrays, path)
    # the official code adds the embedding after the class token, so its row is there (1 + N rows that happen to
    # be a square are no sign of its absence); big_vision adds it before, so it never is
    if facts["layout"] == "big_vision" and "pos_embed" in state:
        prepend_prefix_posemb(state, grid_tokens=int(state["pos_embed"].shape[1]))
    if "pos_embed" not in state and facts["layout"] != "big_vision":  # only big_vision's is fixed (sin-cos)
        raise ConversionError(
            f"{path}: missing array 'Transformer/posembed_input/pos_embedding': the official code always learns a "
            "position embedding (a damaged or incomplete file?)"
        )
    posemb = None if "pos_embed" in state else "sincos2d"  # big_vision's fixed 2D sin-cos
    size = None
    if img_size and posemb is None:
        n = int(state["pos_embed"].shape[1]) - ("cls_token" in state)  # patch rows
        stride = token_stride(state, path)
        if math.isqrt(n) ** 2 != n and (img_size[0] // stride) * (img_size[1] // stride) == n:
            size = tuple(img_size)
    cfg = infer_config(state, path, num_heads=facts["num_heads"], norm_eps=1e-6, posemb=posemb, img_size=size)
    meta = {"mean": [0.5] * cfg.in_chans, "std": [0.5] * cfg.in_chans}  # both codes scale pixels to [-1, 1]
    log.info(
        "%s: read with the erf GELU (timm's and transformers' reading of these files); mlp_act='gelu_tanh' "
        "computes the official JAX code's tanh GELU, whose logits differ by ~1e-4",
        path,
    )
    return Checkpoint(state, cfg, facts["layout"], path, meta, heads_stated=cfg.arch == "vit")
