"""timm's batch-norm ResNets (`resnet50`, `resnet101`, ... : bottlenecks, 7x7 stem) <-> vitkit's ResNet names.

  conv1 / bn1                       -> stem.conv / stem.norm
  layer<i>.<j>.conv<n> / bn<n>      -> stages.<i-1>.blocks.<j>.conv<n> / norm<n>
  layer<i>.<j>.downsample.0 / .1    -> stages.<i-1>.blocks.<j>.downsample.conv / .norm
  fc (Linear, (K, C))               -> head.fc (1x1 conv, (K, C, 1, 1))
Variants vitkit does not build are refused by name: basic blocks (resnet18/34), deep stems (resnet50d),
grouped or wider bottlenecks (resnext, wide_resnet); other extras (SE, ...) are left for a strict load to name.
"""

from __future__ import annotations

import logging
import re

import torch

from vitkit.config import RESNET_DEPTHS, ModelConfig, bit_depth, cnn_name
from vitkit.convert.checkpoint import Checkpoint
from vitkit.convert.files import ConversionError
from vitkit.models.data_config import IMAGENET_MEAN, IMAGENET_STD
from vitkit.models.resnet import ROOT_WIDTH, STAGE_WIDTHS

log = logging.getLogger(__name__)

_BLOCK = re.compile(r"^layer(\d+)\.(\d+)\.(.*)$")
IMAGENET_MEAN_STD = {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}  # timm's resnet default


def is_timm_resnet_state(state: dict[str, torch.Tensor]) -> bool:
    """Whether a state dict has the names of timm's (and torchvision's) ResNet: conv1, layer1.0, ..."""
    return any(k.startswith("layer1.0.") for k in state) and (
        "conv1.weight" in state or "conv1.0.weight" in state
    )


def _block_key(rest: str) -> str:
    """A bottleneck's key after `layer<i>.<j>.` in vitkit's names."""
    rest = re.sub(r"^bn(\d)\.", r"norm\1.", rest)
    return rest.replace("downsample.0.", "downsample.conv.").replace("downsample.1.", "downsample.norm.")


def from_timm_resnet_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm's ResNet names -> vitkit's (keys it does not know are kept as they are)."""
    out = {}
    for k, v in state.items():
        m = _BLOCK.match(k)
        if m:
            k = f"stages.{int(m.group(1)) - 1}.blocks.{m.group(2)}.{_block_key(m.group(3))}"
        elif k.startswith(("conv1.", "bn1.")):
            k = (
                k.replace("conv1.", "stem.conv.", 1)
                if k.startswith("conv1.")
                else k.replace("bn1.", "stem.norm.", 1)
            )
        elif k in ("fc.weight", "fc.bias"):
            k, v = "head." + k, (v[:, :, None, None] if k == "fc.weight" else v)
        out[k] = v
    return out


def to_timm_resnet_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """vitkit's ResNet names -> timm's (the inverse of `from_timm_resnet_names`)."""
    out = {}
    for k, v in state.items():
        m = re.match(r"^stages\.(\d+)\.blocks\.(\d+)\.(.*)$", k)
        if m:
            rest = re.sub(r"^norm(\d)\.", r"bn\1.", m.group(3))
            rest = rest.replace("downsample.conv.", "downsample.0.").replace(
                "downsample.norm.", "downsample.1."
            )
            k = f"layer{int(m.group(1)) + 1}.{m.group(2)}.{rest}"
        elif k.startswith("stem."):
            k = k.replace("stem.conv.", "conv1.").replace("stem.norm.", "bn1.")
        elif k in ("head.fc.weight", "head.fc.bias"):
            k, v = k[len("head.") :], (v.flatten(1) if k == "head.fc.weight" else v)
        out[k] = v
    return out


def _depths(state: dict[str, torch.Tensor], where: str) -> tuple[int, ...]:
    """Bottlenecks per stage from `layer<i>.<j>.` keys; gaps are an error naming the stage."""
    blocks: dict[int, set[int]] = {}
    for k in state:
        m = _BLOCK.match(k)
        if m:
            blocks.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
    stages = sorted(blocks)
    if stages != list(range(1, len(stages) + 1)) or len(stages) > len(STAGE_WIDTHS):
        raise ConversionError(f"{where}: ResNet stages layer{stages}; expected layer1..layer4 without gaps")
    for i in stages:
        if sorted(blocks[i]) != list(range(len(blocks[i]))):
            raise ConversionError(f"{where}: layer{i}'s blocks are {sorted(blocks[i])}; expected 0..n-1")
    return tuple(len(blocks[i]) for i in stages)


def infer_resnet_config(
    state: dict[str, torch.Tensor], where: str, img_size: tuple[int, int] | None = None
) -> ModelConfig:
    """The arch='resnet' ModelConfig implied by a state dict in timm's ResNet names."""
    if "conv1.weight" not in state:
        raise ConversionError(
            f"{where}: a deep-stem ResNet (conv1.0.weight: timm's resnet*d); vitkit's stem is one 7x7 conv"
        )
    stem = state["conv1.weight"]
    if stem.ndim != 4 or stem.shape[0] != ROOT_WIDTH or tuple(stem.shape[2:]) != (7, 7):
        raise ConversionError(
            f"{where}: conv1.weight is {tuple(stem.shape)}; vitkit's ResNet stem is (64, C, 7, 7)"
        )
    if "layer1.0.conv3.weight" not in state:
        raise ConversionError(
            f"{where}: a basic-block ResNet (no layer1.0.conv3: timm's resnet18/34); vitkit's ResNets use bottlenecks"
        )
    layers = _depths(state, where)
    if RESNET_DEPTHS.get(bit_depth(layers)) != layers:
        raise ConversionError(
            f"{where}: a ResNet of stage depths {layers}; vitkit's ResNets are "
            f"{', '.join(f'{d}: {v}' for d, v in RESNET_DEPTHS.items())} (timm's resnet26 (2, 2, 2, 2) is not its "
            "ResNet-26 (1, 2, 4, 1), which follows the SASA paper)"
        )
    for i in range(len(layers)):
        out, mid = STAGE_WIDTHS[i], STAGE_WIDTHS[i] // 4
        shapes = {
            f"layer{i + 1}.0.conv3.weight": (out, mid, 1, 1),
            f"layer{i + 1}.0.conv2.weight": (mid, mid, 3, 3),
        }
        for key, want in shapes.items():
            got = tuple(state[key].shape) if key in state else None
            if got != want:
                raise ConversionError(
                    f"{where}: {key} is {got}; a ResNet bottleneck has {want} there (grouped or wider blocks, as "
                    "resnext or wide_resnet, are other models)"
                )
    fc = state.get("fc.weight")
    if img_size is None:
        log.info("%s: the image size is not stored; assuming 224x224 (a CNN takes any size)", where)
    return ModelConfig(
        name=cnn_name("resnet", layers),
        arch="resnet",
        backbone=layers,
        in_chans=int(stem.shape[1]),
        num_classes=int(fc.shape[0]) if fc is not None else 0,
        img_size=img_size or (224, 224),
    )


def from_timm_resnet_state(
    state: dict[str, torch.Tensor],
    where: str,
    img_size: tuple[int, int] | None = None,
    meta: dict | None = None,
) -> Checkpoint:
    """A Checkpoint from a timm ResNet state dict, in vitkit's names."""
    cfg = infer_resnet_config(state, where, img_size)
    meta = dict(meta or {})
    for key, value in IMAGENET_MEAN_STD.items():
        meta.setdefault(key, value if cfg.in_chans == 3 else [sum(value) / 3] * cfg.in_chans)
    return Checkpoint(from_timm_resnet_names(state), cfg, "timm", where, meta)
