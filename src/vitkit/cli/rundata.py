"""A run's data on this machine: which dataset and folder a command reads for it, and whether they are still the
ones the run was trained on."""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

from vitkit.cli.common import LoadedRun, UserError
from vitkit.config import DataConfig

log = logging.getLogger(__name__)


def another_dataset(data: DataConfig, name: str) -> DataConfig:
    """A run's data config for scoring it on another dataset: not in the run's data folder, nor split by its
    val_fraction, hold-out or subset (its augmentation settings are not read by evaluation)."""
    return dataclasses.replace(data, dataset=name, data_dir=None, val_fraction=0.0, holdout=0.0, subset=1.0)


def local_data(data: DataConfig, given: str | None = None, where: str = "the run") -> DataConfig:
    """A run's data config on this machine: `--data-dir` if given (then the only place looked in); a data folder
    the run saved that is not here (trained elsewhere, or a relative path from another folder) is dropped with a
    warning, so the usual places ($VITKIT_DATA, Debian's package) are searched; an image folder, which has no
    other place, is an error asking for --data-dir."""
    if given:
        return dataclasses.replace(data, data_dir=given)
    if data.dataset == "imagefolder" and data.data_dir and not os.path.exists(data.data_dir):
        raise UserError(
            f"{where}'s image folder {data.data_dir} is not here (moved, or trained elsewhere?): pass --data-dir ROOT"
        )
    if data.data_dir and not os.path.exists(data.data_dir) and data.dataset != "imagefolder":
        log.warning(
            "%s's data folder %s is not here: looking for %s in the usual places (pass --data-dir to choose)",
            where,
            data.data_dir,
            data.dataset,
        )
        return dataclasses.replace(data, data_dir=None)
    return data


def folder_chans(in_chans: int) -> int | None:
    """The channels to decode an image folder to for a model of `in_chans`: greyscale for a 1-channel model
    (trained on Fashion-MNIST, say), else the default RGB (None)."""
    return 1 if in_chans == 1 else None


def check_dataset_fits(
    run: LoadedRun,
    splits: Any,
    dataset: str,
    where: str,
    own: bool,
    split: str = "test",
    folder: str | None = None,
) -> None:
    """Refuse scoring `run` on `splits` whose classes or channels are not the model's. Class names that differ
    from the run's data.json: an error when `own` (the run's own image folder, whose folder names are its labels:
    one renamed or added shifts them), else a warning (another dataset, or a reader's fallback names). The run's
    own image folder changed since training: see `check_folder_unchanged`."""
    m = run.cfg.model
    if splits.num_classes != m.num_classes:
        raise UserError(
            f"{where}: the model has {m.num_classes} classes, dataset {dataset} {splits.num_classes}"
        )
    if splits.in_chans != m.in_chans:
        raise UserError(
            f"{where}: the model takes {m.in_chans}-channel images, dataset {dataset} has {splits.in_chans}"
        )
    mine, theirs = run.data.get("classes"), list(getattr(splits, "classes", None) or [])
    if mine and theirs and list(mine) != theirs:
        i = next(i for i, (a, b) in enumerate(zip(mine, theirs)) if a != b)
        text = (
            f"{where}: dataset {dataset}'s class {i} is {theirs[i]!r}, the run's data.json says {mine[i]!r}: "
            "its labels would be scored against other classes"
        )
        if own:
            raise UserError(f"{text} (an image folder renamed or added to since training?)")
        log.warning("%s", text)
    if own:
        check_folder_unchanged(run.data, splits, split, where, folder, run.cfg.data.data_dir)


def check_folder_unchanged(
    data: dict[str, Any],
    splits: Any,
    split: str,
    where: str,
    folder: str | None = None,
    run_folder: str | None = None,
) -> None:
    """A run's own image folder (`folder`, read now, as the run's `run_folder`) against its data.json's record of
    it. A split the run drew by its seed from train/ (data.val_fraction's test, data.holdout's val) is refused when
    train/ changed: drawn afresh, or replaced by a new test/ beside the changed train/, it would hold images the
    model trained on. A split that now comes from another sub-folder (a test/ added beside an unchanged train/), or
    whose own sub-folder changed, is scored as it is now, with a warning. Another folder than the run's is not
    checked against the run's record (said so)."""
    from vitkit.data.imagefolder import listing_changes, source_changes

    source = getattr(splits, "sources", {}).get(split)
    if source is None:
        return
    if folder and run_folder and os.path.realpath(folder) != os.path.realpath(run_folder):
        log.info(
            "%s: scoring the image folder %s, not the run's %s (not checked against its record)",
            where,
            folder,
            run_folder,
        )
        return
    changed = listing_changes(data.get("files"), splits.files)
    if "files" not in data:  # runs before the listing was recorded: their split sizes
        sizes, now = data.get("sizes") or {}, len(splits.split(split))
        if isinstance(sizes, dict) and sizes.get(split) not in (None, now):
            changed = {source: f"its {split} split had {sizes[split]} images, now {now}"}
    was = source_changes(data.get("sources"), splits.sources).get(split, (source, source))[0]
    if was == "train" and split != "train" and "train" in changed:
        how = changed["train"] + ("" if was == source else f"; the split now comes from {source}/")
        raise UserError(
            f"{where}: the run drew its {split} split from the image folder's train/ by its seed, and the folder is "
            f"not as it was then ({how}): the split would now hold images the model trained on. Score the folder "
            "as it was, or another folder (--data-dir)"
        )
    if was != source:
        log.warning(
            "%s: the run's %s split was the image folder's %s/, now %s/: scoring that%s",
            where,
            split,
            was,
            source,
            ", which must not hold images the run trained on" if was == "train" else "",
        )
    elif source in changed:
        log.warning(
            "%s: the image folder's %s/ is not as the run was trained on it (%s): scoring the files there now",
            where,
            source,
            changed[source],
        )
