"""Test-time augmentation: a model's logits averaged over each image and its mirror image."""

from __future__ import annotations

from collections.abc import Callable

import torch

from vitkit.config import TTA_MODES


def check_tta(tta: str, where: str = "tta") -> str:
    """`tta` if it names a mode, else a ValueError naming `where` and the modes."""
    if tta not in TTA_MODES:
        raise ValueError(f"{where}={tta!r}: expected one of {', '.join(TTA_MODES)}")
    return tta


def tta_logits(
    model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, tta: str = "none"
) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits of `x`, logits with `tta`): with "hflip" the second is the mean of the logits of `x` and of `x`
    mirrored left-right (airbench's flip TTA); with "none" both are the same tensor. Both fp32, (B, classes)."""
    check_tta(tta)
    plain = model(x).float()  # (B, classes)
    if tta == "none":
        return plain, plain
    plain = plain.clone()  # a CUDA-graph replay of the same graph may write over its output's memory
    return plain, (plain + model(x.flip(-1)).float()) / 2
