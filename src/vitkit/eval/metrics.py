"""Classification metrics as pure functions of logits and labels."""

from __future__ import annotations

import math

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


def wilson_interval(correct: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval of an accuracy `correct` / `n` (95% by default): where the true accuracy of the
    model on data like the test set lies, given the test set's finite size."""
    if n <= 0:
        return (0.0, 1.0)
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value of two classifiers scored on the same images: `only_a` images that A alone
    gets right, `only_b` that B alone does (a binomial test of the discordant pairs at 1/2)."""
    n = only_a + only_b
    if n == 0:
        return 1.0
    k = min(only_a, only_b)
    log_half = n * math.log(0.5)
    tail = sum(
        math.exp(math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + log_half)
        for i in range(k + 1)
    )
    return min(1.0, 2 * tail)


def paired_difference(only_a: int, only_b: int, n: int, z: float = 1.959964) -> tuple[float, float, float]:
    """Accuracy of B minus A on the same `n` images, with its (normal-approximation) 95% interval: (diff, lo, hi)."""
    d = (only_b - only_a) / n
    se = math.sqrt(max(only_a + only_b - n * d * d, 0.0)) / n
    return d, d - z * se, d + z * se
