"""BiT ResNet-v2 weights: timm's `resnetv2_*_bit` state dicts (vitkit's names) and the official BiT .npz files.

Official BiT (google-research/big_transfer) names, kernels (kh, kw, in, out) -> (out, in, kh, kw):
  resnet/root_block/standardized_conv2d/kernel           -> stem.conv.weight
  resnet/block<i>/unit<jj>/{a,b,c}/standardized_conv2d   -> stages.i-1.blocks.j-1.conv{1,2,3}
  resnet/block<i>/unit<jj>/{a,b,c}/group_norm/{gamma,beta} -> stages.i-1.blocks.j-1.norm{1,2,3}
  resnet/block<i>/unit<jj>/a/proj/standardized_conv2d    -> stages.i-1.blocks.j-1.downsample.conv
  resnet/group_norm/{gamma,beta}                         -> norm
  resnet/head/conv2d/{kernel,bias}                       -> head.fc
"""

from __future__ import annotations

import logging
import re

import numpy as np
import torch

from vitkit.config import ModelConfig, bit_depth
from vitkit.convert.checkpoint import Checkpoint, stage_depths
from vitkit.convert.files import ConversionError
from vitkit.models.resnet import ROOT_WIDTH, STAGE_WIDTHS

log = logging.getLogger(__name__)

_NPZ_UNIT = re.compile(r"^resnet/block(\d+)/unit(\d+)/")
NPZ_ROOT = "resnet/root_block/standardized_conv2d/kernel"
BIT_MEAN_STD = {"mean": 0.5, "std": 0.5}  # BiT scales pixels to [-1, 1]


def is_bit_state(state: dict[str, torch.Tensor]) -> bool:
    """Whether a state dict has a BiT ResNet-v2's (timm's) names: stem.conv, stages.N.blocks.M."""
    return "stem.conv.weight" in state and any(k.startswith("stages.") and ".blocks." in k for k in state)


def _refuse_batchnorm(state: dict[str, torch.Tensor], where: str) -> None:
    """timm's resnetv2_50/101 share BiT's names but use BatchNorm and plain convs: another model."""
    stats = sorted(k for k in state if k.endswith(("running_mean", "running_var")))
    if stats:
        raise ConversionError(
            f"{where}: a ResNet with BatchNorm ({stats[0]}, ...) in BiT's names, not BiT's GroupNorm and "
            "weight-standardised convs: vitkit's own ResNet/SASA/AA weights load from their run folder or the file "
            "`vitkit export` wrote (both record the config); timm's BatchNorm ResNet-v2 is not a model vitkit builds"
        )


def is_bit_npz(arrays: dict[str, np.ndarray]) -> bool:
    """Whether an .npz holds an official BiT checkpoint."""
    return NPZ_ROOT in arrays


def infer_bit_config(
    state: dict[str, torch.Tensor], where: str, img_size: tuple[int, int] | None = None
) -> ModelConfig:
    """The arch='bit' ModelConfig implied by a state dict in timm's names (depths, width, channels, classes)."""
    _refuse_batchnorm(state, where)
    stem = state["stem.conv.weight"]  # (64w, C, 7, 7)
    if stem.ndim != 4 or tuple(stem.shape[2:]) != (7, 7) or stem.shape[0] % ROOT_WIDTH:
        raise ConversionError(
            f"{where}: stem.conv.weight is {tuple(stem.shape)}; BiT's is (64 x width, C, 7, 7)"
        )
    wf, in_chans = int(stem.shape[0]) // ROOT_WIDTH, int(stem.shape[1])
    layers = stage_depths(state, "", where)
    if len(layers) > len(STAGE_WIDTHS):
        raise ConversionError(f"{where}: {len(layers)} ResNet stages; BiT has at most {len(STAGE_WIDTHS)}")
    for i in range(len(layers)):
        w = state.get(f"stages.{i}.blocks.0.conv3.weight")
        if w is None or int(w.shape[0]) != STAGE_WIDTHS[i] * wf:
            got = None if w is None else tuple(w.shape)
            raise ConversionError(
                f"{where}: stages.{i}.blocks.0.conv3.weight is {got}; a BiT ResNet of width x{wf} has "
                f"{STAGE_WIDTHS[i] * wf} output channels there"
            )
    head = state.get("head.fc.weight")
    if img_size is None:
        log.info("%s: the image size is not stored; assuming BiT's 224x224 (a CNN takes any size)", where)
    return ModelConfig(
        name=f"BiT-R{bit_depth(layers)}x{wf}",
        arch="bit",
        backbone=layers,
        width_factor=wf,
        in_chans=in_chans,
        num_classes=int(head.shape[0]) if head is not None else 0,
        img_size=img_size or (224, 224),
    )


def from_bit_state(
    state: dict[str, torch.Tensor],
    where: str,
    fmt: str = "timm",
    img_size: tuple[int, int] | None = None,
    meta: dict | None = None,
) -> Checkpoint:
    """A Checkpoint from a BiT state dict in timm's names."""
    cfg = infer_bit_config(state, where, img_size)
    meta = dict(meta or {})
    for key, value in BIT_MEAN_STD.items():
        meta.setdefault(key, [value] * cfg.in_chans)
    return Checkpoint(state, cfg, fmt, where, meta)


def _t(a: np.ndarray) -> torch.Tensor:
    """float32 tensor from an array; 4-D kernels HWIO -> OIHW."""
    a = np.asarray(a, dtype=np.float32)
    if a.ndim == 4:
        a = a.transpose(3, 2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(a))


def read_bit_npz(arrays: dict[str, np.ndarray], path: str) -> Checkpoint:
    """An official BiT .npz (read without pickles) as a Checkpoint in vitkit's names."""
    left = dict(arrays)

    def take(key: str) -> torch.Tensor:
        if key not in left:
            raise ConversionError(f"{path}: missing array {key!r}")
        return _t(left.pop(key))

    state = {"stem.conv.weight": take(NPZ_ROOT)}
    units = sorted({(int(m.group(1)), int(m.group(2))) for k in arrays if (m := _NPZ_UNIT.match(k))})
    for i, j in units:
        src, dst = f"resnet/block{i}/unit{j:02d}/", f"stages.{i - 1}.blocks.{j - 1}."
        for n, part in enumerate("abc", start=1):
            state[f"{dst}conv{n}.weight"] = take(f"{src}{part}/standardized_conv2d/kernel")
            state[f"{dst}norm{n}.weight"] = take(f"{src}{part}/group_norm/gamma").flatten()
            state[f"{dst}norm{n}.bias"] = take(f"{src}{part}/group_norm/beta").flatten()
        proj = f"{src}a/proj/standardized_conv2d/kernel"
        if proj in left:
            state[f"{dst}downsample.conv.weight"] = take(proj)
    state["norm.weight"] = take("resnet/group_norm/gamma").flatten()
    state["norm.bias"] = take("resnet/group_norm/beta").flatten()
    if "resnet/head/conv2d/kernel" in left:
        state["head.fc.weight"] = take("resnet/head/conv2d/kernel")  # (K, C, 1, 1)
        state["head.fc.bias"] = take("resnet/head/conv2d/bias").flatten()
    for key, a in left.items():  # unmapped arrays keep their names, for a strict load to name them
        state[key] = torch.from_numpy(np.array(a))
    return from_bit_state(state, path, fmt="official")
