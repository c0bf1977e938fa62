"""Few-shot linear evaluation (the paper's Section 4.1): closed-form ridge regression on frozen representations.

A subset of `shots` training images per class is embedded by the frozen model (its pre-logits: the pooled,
normalised class token or GAP, through the pre-logits layer when there is one), the features are whitened and
mapped to {-1, 1}^K targets by L2-regularised least squares, solved exactly; the test images are classified by
the largest output. The defaults are big_vision's (`configs/common_fewshot.py`): 1, 5, 10 and 25 shots, three
seeds, l2 = 2^10, a constant bias feature of 100 so that the bias is nearly unregularised.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from vitkit.data.transforms import normalize, resize

SHOTS = (1, 5, 10, 25)
SEEDS = 3
L2_REG = 2.0**10
BIAS_FEATURE = 100.0  # the bias is a weight on this constant feature: a large value regularises it little


def class_orders(labels: torch.Tensor, num_classes: int, seed: int) -> list[torch.Tensor]:
    """Per class, the indices of its samples in a random order drawn from `seed` (shots take a prefix, so the
    1-shot set of a seed is part of its 5-shot set, as big_vision's)."""
    labels = labels.cpu()
    g = torch.Generator().manual_seed(seed)
    orders = []
    for c in range(num_classes):
        idx = (labels == c).nonzero().flatten()
        orders.append(idx[torch.randperm(len(idx), generator=g)])
    return orders


def fewshot_indices(
    orders: list[torch.Tensor], shots: int, class_names: Sequence[str] | None = None
) -> torch.Tensor:
    """The first `shots` indices of each class's order, class by class; too few samples of a class is an error
    (naming it by `class_names` where given)."""
    short = [(c, len(o)) for c, o in enumerate(orders) if len(o) < shots]
    if short:
        c, n = short[0]
        which = f"class {c} ({class_names[c]!r})" if class_names and c < len(class_names) else f"class {c}"
        raise ValueError(
            f"{shots}-shot evaluation needs {shots} training image(s) of every class; {which} has {n}"
            + (f" ({len(short)} classes have too few)" if len(short) > 1 else "")
        )
    return torch.cat([o[:shots] for o in orders])  # (K * shots,)


def ridge_fit(
    x: torch.Tensor, y: torch.Tensor, num_classes: int, l2_reg: float = L2_REG
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Least squares from whitened features `x` (n, d) (plus the bias feature) to {-1, 1} one-hot targets of
    `y` (n,), with an L2 penalty: (weights (d + 1, K), mean (d,), std (d,)), in float64."""
    if not (isinstance(l2_reg, (int, float)) and math.isfinite(l2_reg) and l2_reg > 0):
        raise ValueError(f"l2_reg must be a positive number, got {l2_reg!r}")
    if x.ndim != 2 or y.shape != (x.shape[0],):
        raise ValueError(
            f"expected features (n, d) and labels (n,), got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    x = x.double()
    mean = x.mean(0)
    std = x.std(0, correction=0) + 1e-5
    a = _design(x, mean, std)  # (n, d + 1)
    t = 2.0 * nn.functional.one_hot(y.long(), num_classes).double() - 1.0  # (n, K)
    n, d = a.shape
    eye = torch.eye(min(n, d), dtype=a.dtype, device=a.device)
    if n >= d:  # (A^T A + l2 I)^-1 A^T T
        w = torch.linalg.solve(a.T @ a + l2_reg * eye, a.T @ t)
    else:  # the same solution through the n x n system: A^T (A A^T + l2 I)^-1 T
        w = a.T @ torch.linalg.solve(a @ a.T + l2_reg * eye, t)
    return w, mean, std  # (d + 1, K), (d,), (d,)


def ridge_predict(x: torch.Tensor, w: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Class indices (n,) of features `x` (n, d) under a `ridge_fit` solution."""
    return (_design(x.double(), mean, std) @ w).argmax(-1)


def _design(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Whitened features with the constant bias feature appended: (n, d + 1)."""
    x = (x - mean) / std
    return torch.cat([x, x.new_full((x.shape[0], 1), BIAS_FEATURE)], 1)


@torch.no_grad()
def representations(
    model: nn.Module,
    dataset,
    idx: torch.Tensor,
    transform,
    *,
    device: torch.device | str = "cpu",
    batch_size: int = 256,
    precision: str = "fp32",
    progress=None,
) -> torch.Tensor:
    """The frozen pre-logits (n, D) float32 (CPU) of `dataset`'s samples `idx`; `transform` maps uint8 batches
    to the model's input (grey images are repeated to a colour model's channels)."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    in_chans = _in_chans(model)
    dtype = next(model.parameters()).dtype  # a bf16/fp16 model takes its own dtype
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    out = []
    try:
        for chunk in idx.split(batch_size):
            images, _ = dataset.get_batch(chunk)
            x = transform(images.to(device))  # (B, C, H, W)
            if in_chans is not None and x.shape[1] != in_chans:
                if x.shape[1] != 1:
                    raise ValueError(f"the images have {x.shape[1]} channels, the model takes {in_chans}")
                x = x.expand(-1, in_chans, -1, -1)
            with autocast:
                f = model.forward_head(model.forward_features(x.to(dtype)), pre_logits=True)  # (B, D)
            out.append(f.float().cpu())
            if progress is not None:
                progress(len(chunk))
    finally:
        model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, 0)


def model_input(
    img_size: tuple[int, int], in_chans: int, mean: Sequence[float], std: Sequence[float]
) -> Callable[[torch.Tensor], torch.Tensor]:
    """uint8 images (B, c, h, w) of any size, grey or of the model's channels -> its normalised input
    (B, in_chans, H, W): resized, grey repeated to the model's channels."""
    mean, std = tuple(mean), tuple(std)

    def transform(images: torch.Tensor) -> torch.Tensor:
        x = resize(images.float(), img_size).expand(-1, in_chans, -1, -1)  # (B, C, H, W)
        return normalize(x, mean, std)

    return transform


def _in_chans(model: nn.Module) -> int | None:
    cfg = getattr(model, "cfg", None)
    return getattr(cfg, "in_chans", None)


def fewshot_evaluate(
    model: nn.Module,
    train,
    test,
    transform,
    *,
    num_classes: int,
    shots: Sequence[int] = SHOTS,
    seeds: int = SEEDS,
    l2_reg: float = L2_REG,
    device: torch.device | str = "cpu",
    batch_size: int = 256,
    precision: str = "fp32",
    test_limit: int | None = None,
    progress=None,
    class_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Few-shot accuracy of `model`'s frozen representation: for each shot count and seed, a ridge classifier
    fit on `shots` images per class of `train`, scored on `test` (`test_limit` of its images drawn at random,
    seed 0, if given: a split may be in class order).

    Only the training images drawn are embedded (the test images once). Returns `{"shots": {k: {"mean", "std",
    "seeds"}}, "num_test", "dim", "l2_reg"}`; accuracies are fractions.
    """
    shots = sorted({int(k) for k in shots})
    if not shots or shots[0] < 1:
        raise ValueError(f"shots must be positive integers, got {list(shots)}")
    if seeds < 1:
        raise ValueError(f"seeds must be at least 1, got {seeds}")
    if l2_reg <= 0:
        raise ValueError(f"l2_reg must be positive, got {l2_reg}")
    n_test = len(test) if test_limit is None else min(len(test), test_limit)
    if n_test < 1:
        raise ValueError("few-shot evaluation needs at least one test image")
    orders = [class_orders(train.labels, num_classes, seed) for seed in range(seeds)]
    chosen = {(s, k): fewshot_indices(orders[s], k, class_names) for s in range(seeds) for k in shots}
    drawn = torch.unique(torch.cat(list(chosen.values())))  # sorted: each training image embedded once
    kw = dict(device=device, batch_size=batch_size, precision=precision, progress=progress)
    train_feats = representations(model, train, drawn, transform, **kw)  # (n_drawn, D)
    test_idx = torch.arange(n_test)
    if n_test < len(test):
        test_idx = (
            torch.randperm(len(test), generator=torch.Generator().manual_seed(0))[:n_test].sort().values
        )
    test_feats = representations(model, test, test_idx, transform, **kw)  # (n_test, D)
    test_labels = test.labels.cpu()[test_idx]
    train_labels = train.labels.cpu()
    results = {}
    for k in shots:
        accs = []
        for s in range(seeds):
            idx = chosen[(s, k)]
            feats = train_feats[torch.searchsorted(drawn, idx)]  # (K * k, D)
            w, mean, std = ridge_fit(feats, train_labels[idx], num_classes, l2_reg)
            pred = ridge_predict(test_feats, w, mean, std)
            accs.append(float((pred == test_labels).double().mean()))
        t = torch.tensor(accs, dtype=torch.float64)
        results[k] = {"mean": float(t.mean()), "std": float(t.std(correction=0)), "seeds": accs}
    return {"shots": results, "num_test": n_test, "dim": int(test_feats.shape[1]), "l2_reg": float(l2_reg)}
