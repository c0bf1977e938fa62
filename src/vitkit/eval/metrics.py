"""Classification metrics as pure functions of logits and labels."""

from __future__ import annotations

import math

import torch


def topk_correct(
    logits: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...] = (1, 5)
) -> dict[int, torch.Tensor]:
    """Number of samples whose label is among the top-k logits, for each k (clipped to the class count).

    Top-1 is argmax's prediction (the first of tied logits), as the confusion matrix, TTA's counts and `vitkit
    compare` take it; a top-1 hit counts for every k (topk may break a tie for another index)."""
    maxk = min(max(ks), logits.shape[-1])
    top = logits.topk(maxk, dim=-1).indices  # (B, maxk)
    first = logits.argmax(dim=-1) == labels  # (B,)
    hit = top == labels[:, None]
    return {k: first.sum() if k <= 1 else (hit[:, : min(k, maxk)].any(dim=-1) | first).sum() for k in ks}


def top5_text(top5: float, num_classes: int) -> str:
    """Top-5 accuracy as printed: "n/a" with 5 classes or fewer, where every label is in the top 5."""
    return f"{top5:.2%}" if num_classes > 5 else f"n/a ({num_classes} classes)"


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
    return (max(0.0, min(centre - half, p)), min(1.0, max(centre + half, p)))  # p inside despite rounding


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value of two classifiers scored on the same images: `only_a` images that A alone
    gets right, `only_b` that B alone does (a binomial test of the discordant pairs at 1/2)."""
    n = only_a + only_b
    return 1.0 if n == 0 else min(1.0, 2 * _binom_cdf(min(only_a, only_b), n, 0.5))


def _binom_cdf(k: int, m: int, theta: float) -> float:
    """P(X <= k) for X ~ Binomial(m, theta)."""
    if theta <= 0.0:
        return 1.0
    if theta >= 1.0:
        return 1.0 if k >= m else 0.0
    lt, l1 = math.log(theta), math.log1p(-theta)
    terms = (
        math.lgamma(m + 1) - math.lgamma(i + 1) - math.lgamma(m - i + 1) + i * lt + (m - i) * l1
        for i in range(k + 1)
    )
    return min(1.0, sum(math.exp(t) for t in terms))


def _solve(f, target: float) -> float:
    """The theta in [0, 1] where the decreasing f(theta) crosses `target` (bisection)."""
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if f(mid) > target else (lo, mid)
    return (lo + hi) / 2


def clopper_pearson(k: int, m: int, alpha: float = 0.05) -> tuple[float, float]:
    """Exact (Clopper-Pearson) interval of a binomial proportion k / m: where P(X >= k) and P(X <= k) are alpha/2."""
    lo = 0.0 if k == 0 else _solve(lambda t: _binom_cdf(k - 1, m, t), 1 - alpha / 2)
    hi = 1.0 if k == m else _solve(lambda t: _binom_cdf(k, m, t), alpha / 2)
    return lo, hi


def paired_difference(only_a: int, only_b: int, n: int, alpha: float = 0.05) -> tuple[float, float, float]:
    """Accuracy of B minus A on the same `n` images with its 95% interval: (diff, lo, hi). Given the m = only_a +
    only_b images where they disagree, diff = m / n (2 theta - 1) for theta the share B wins; theta's exact
    (Clopper-Pearson) interval gives the difference's, which excludes 0 exactly when McNemar's exact test rejects
    at `alpha`. With no disagreement, the bound on the disagreement rate itself (m = 0 of n) is given."""
    if n <= 0:
        raise ValueError("a paired difference needs at least one image")
    m = only_a + only_b
    if m == 0:
        bound = clopper_pearson(0, n, alpha)[1]
        return 0.0, -bound, bound
    t_lo, t_hi = clopper_pearson(only_b, m, alpha)
    return (only_b - only_a) / n, m / n * (2 * t_lo - 1), m / n * (2 * t_hi - 1)
