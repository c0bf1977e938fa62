"""Classification metrics as pure functions of logits and labels."""

from __future__ import annotations

import torch


def topk_correct(
    logits: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...] = (1, 5)
) -> dict[int, torch.Tensor]:
    """Number of samples whose label is among the top-k logits, for each k (clipped to the class count)."""
    maxk = min(max(ks), logits.shape[-1])
    top = logits.topk(maxk, dim=-1).indices  # (B, maxk)
    hit = top == labels[:, None]
    return {k: hit[:, : min(k, maxk)].any(dim=-1).sum() for k in ks}


def confusion_matrix(preds: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(K, K) counts: rows are true classes, columns predicted."""
    flat = labels.long() * num_classes + preds.long()
    return torch.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def per_class_accuracy(confusion: torch.Tensor) -> torch.Tensor:
    """Recall of each class from a confusion matrix (NaN for classes with no samples)."""
    totals = confusion.sum(dim=1).double()
    return confusion.diag().double() / totals
