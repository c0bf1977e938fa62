"""Test-time augmentation: a model's logits averaged over each image and its mirror image."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from vitkit.config import TTA_MODES
from vitkit.eval.metrics import mcnemar_exact, paired_difference


def check_tta(tta: str) -> str:
    """`tta` if it names a mode, else a ValueError naming the value and the modes."""
    if tta not in TTA_MODES:
        raise ValueError(f"tta={tta!r}: expected one of {', '.join(TTA_MODES)}")
    return tta


def tta_gain(gained: int, lost: int, n: int) -> dict[str, Any]:
    """What TTA changed on the same `n` images: the top-1 gain with its paired 95% interval and McNemar's exact
    p-value, from the images it made right (`gained`) and wrong (`lost`)."""
    diff, lo, hi = paired_difference(lost, gained, n)
    return {
        "diff": diff,
        "diff_ci95": [lo, hi],
        "gained": gained,
        "lost": lost,
        "p_mcnemar": mcnemar_exact(lost, gained),
    }


def describe_gain(tta: str, plain_top1: float, gain: dict[str, Any]) -> str:
    """One line: the TTA's gain over the plain top-1, with its interval and p-value."""
    lo, hi = gain["diff_ci95"]
    return (
        f"{tta} TTA: {gain['diff']:+.2%} [{lo:+.2%}, {hi:+.2%}] over {plain_top1:.2%} without (images made right "
        f"{gain['gained']}, made wrong {gain['lost']}; McNemar p = {gain['p_mcnemar']:.2g})"
    )


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
