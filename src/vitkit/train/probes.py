"""Few-shot linear probes during training (train.fewshot_every): the datasets they read and one round of them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from vitkit.config import DataConfig, RunConfig, TrainConfig
from vitkit.data.datasets import Splits, load_dataset
from vitkit.eval.fewshot import fewshot_evaluate, model_input

# (train split, test split, uint8 batch -> model input, class count)
ProbeSet = tuple[Any, Any, Callable[[torch.Tensor], torch.Tensor], int]


def fewshot_sets(cfg: RunConfig, splits: Splits, own_transform: Callable) -> dict[str, ProbeSet]:
    """Each few-shot dataset of train.fewshot_datasets: the run's own splits (read as its evaluation reads
    them), or another dataset loaded from the usual places, grey images repeated to the model's channels.
    Refuses shot counts a training split cannot give, now rather than at the first probe."""
    c, t, own = cfg.model, cfg.train, cfg.data.dataset
    sets: dict[str, ProbeSet] = {}
    for name in t.fewshot_datasets or (own,):
        classes: list[str] = []
        if name == own:
            sets[name] = (splits.train, splits.test, own_transform, splits.num_classes)
            classes = list(getattr(splits, "classes", None) or [])
        elif name == "imagefolder":
            raise ValueError("train.fewshot_datasets: an imagefolder other than the run's own has no folder")
        else:
            other = load_dataset(DataConfig(dataset=name), img_size=c.img_size)
            if other.in_chans not in (1, c.in_chans):
                raise ValueError(
                    f"train.fewshot_datasets: {name} has {other.in_chans}-channel images, the model takes "
                    f"{c.in_chans}"
                )
            transform = model_input(c.img_size, c.in_chans, splits.mean, splits.std)
            sets[name] = (other.train, other.test, transform, other.num_classes)
            classes = list(getattr(other, "classes", None) or [])
        counts = torch.bincount(sets[name][0].labels.cpu(), minlength=sets[name][3])
        if int(counts.min()) < max(t.fewshot_shots):
            k = int(counts.argmin())
            which = f"class {k} ({classes[k]!r})" if k < len(classes) else f"class {k}"
            raise ValueError(
                f"train.fewshot_shots={list(t.fewshot_shots)}: {name}'s training split has "
                f"{int(counts.min())} image(s) of {which}; set shot counts up to that"
            )
    return sets


def fewshot_probe(
    model: nn.Module, sets: dict[str, ProbeSet], t: TrainConfig, device: torch.device, precision: str
) -> dict[str, dict[str, float]]:
    """One draw per shot count on each set: {dataset: {shots: linear top-1}} of `model`'s representation."""
    out = {}
    for name, (train, test, transform, classes) in sets.items():
        res = fewshot_evaluate(
            model,
            train,
            test,
            transform,
            num_classes=classes,
            shots=t.fewshot_shots,
            seeds=1,
            device=device,
            batch_size=t.eval_batch_size,
            precision="bf16" if precision.startswith("bf16") else precision,
            test_limit=t.fewshot_test_limit or None,
        )
        out[name] = {str(k): r["mean"] for k, r in res["shots"].items()}
    return out
