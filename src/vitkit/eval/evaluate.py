"""evaluate(model, dataset) -> top-1 (with its 95% interval), top-5, loss, per-class accuracy, confusion matrix;
predict_labels(model, dataset) -> each sample's predicted class; both optionally with flip TTA."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vitkit.data.loader import eval_batches
from vitkit.eval.metrics import confusion_matrix, per_class_accuracy, topk_correct, wilson_interval
from vitkit.eval.tta import check_tta, tta_gain, tta_logits


@torch.no_grad()
def evaluate(
    model: nn.Module,
    dataset,
    transform,
    *,
    num_classes: int,
    device: torch.device,
    batch_size: int = 1024,
    precision: str = "fp32",
    rank: int = 0,
    world: int = 1,
    reduce=None,
    tta: str = "none",
) -> dict[str, Any]:
    """Evaluate on every sample of `dataset` (uint8 in, `transform` to float); `reduce` sums across ranks.
    With `tta` ("hflip") the metrics are those of the averaged logits, `top1_no_tta` is the top-1 of the first
    forward alone and `tta_gain` what the TTA changed (vitkit.eval.tta.tta_gain)."""
    check_tta(tta)
    if len(dataset) == 0:  # no accuracy to report (0.0 would read as a result)
        raise ValueError("evaluate: the dataset holds no images")
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    top1 = torch.zeros((), dtype=torch.long, device=device)
    top5 = torch.zeros((), dtype=torch.long, device=device)
    # TTA: images right without it, and those it made right / wrong (argmax, as the confusion matrix)
    plain1, gained, lost = (torch.zeros((), dtype=torch.long, device=device) for _ in range(3))
    conf = torch.zeros(num_classes, num_classes, dtype=torch.long, device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    mine = list(eval_batches(len(dataset), batch_size, rank, world))
    rounds = math.ceil(math.ceil(len(dataset) / batch_size) / world)
    for r in range(rounds):  # every rank runs the same number of forwards (sharded models need all ranks)
        if r >= len(mine):
            with autocast:  # as many forwards as the other ranks' batches (TTA: two)
                tta_logits(model, transform(dataset.get_batch(torch.arange(1))[0].to(device)), tta)
            continue
        idx = mine[r]
        images, labels = dataset.get_batch(idx)
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        with autocast:
            plain, logits = tta_logits(model, transform(images), tta)
        if tta != "none":
            right, was_right = logits.argmax(-1) == labels, plain.argmax(-1) == labels  # (B,)
            plain1 += was_right.sum()
            gained += (right & ~was_right).sum()
            lost += (was_right & ~right).sum()
        loss_sum += F.cross_entropy(logits, labels, reduction="sum").double()
        hits = topk_correct(logits, labels, (1, 5))
        top1 += hits[1]
        top5 += hits[5]
        conf += confusion_matrix(logits.argmax(-1), labels, num_classes)
    if reduce is not None:
        loss_sum, top1, top5, conf = reduce(loss_sum), reduce(top1), reduce(top5), reduce(conf)
        if tta != "none":
            plain1, gained, lost = reduce(plain1), reduce(gained), reduce(lost)
    model.train(was_training)
    n = int(conf.sum())
    conf_cpu = conf.cpu()
    extra = {}
    if tta != "none":
        extra = {"tta": tta, "top1_no_tta": float(plain1) / max(n, 1)}
        extra["tta_gain"] = tta_gain(int(gained), int(lost), n) if n else None
    return {
        "top1": float(top1) / max(n, 1),
        "top1_ci95": list(wilson_interval(int(top1), n)),  # the accuracy's 95% interval at this test-set size
        "top5": float(top5) / max(n, 1),
        "loss": float(loss_sum) / max(n, 1),
        "num_samples": n,
        "per_class": [None if math.isnan(v) else v for v in per_class_accuracy(conf_cpu).tolist()],
        "confusion": conf_cpu.tolist(),
    } | extra


@torch.no_grad()
def predict_labels(
    model: nn.Module,
    dataset,
    transform,
    *,
    device: torch.device,
    batch_size: int = 1024,
    precision: str = "fp32",
    tta: str = "none",
) -> torch.Tensor:
    """The predicted class (argmax, of the `tta`-averaged logits) of every sample of `dataset`, in order: (N,)
    int64 on the CPU."""
    check_tta(tta)
    was_training = model.training
    model.eval()
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    out = []
    for idx in eval_batches(len(dataset), batch_size):
        images, _ = dataset.get_batch(idx)
        with autocast:
            out.append(tta_logits(model, transform(images.to(device)), tta)[1].argmax(-1).cpu())
    model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)
