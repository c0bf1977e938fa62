"""What `vitkit inspect`, `report` and `fewshot` analyse: a run (folder, checkpoint, weights file) or pretrained
weights as a Subject, and the images they look at (a run's test images, files, or noise)."""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

import torch

from vitkit.cli.common import UserError, find_run, load_run
from vitkit.cli.rundata import local_data

log = logging.getLogger("vitkit")


@dataclasses.dataclass
class Subject:
    """A model to inspect and what is known about its inputs (a run's data.json, or defaults)."""

    model: torch.nn.Module
    name: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: list[str]
    run: Any = None  # LoadedRun for a run folder
    run_dir: str | None = None
    weights: str | None = None  # the weights file analysed
    # weights of the run other than its final ones: what their report is named after (best, model_raw, ...)
    label: str | None = None


def is_run_path(path: str) -> bool:
    """A run folder, a checkpoint folder in one, or a weights file in one."""
    from vitkit.train.runfiles import holds_run

    p = os.path.abspath(path)
    if os.path.isdir(p):
        if holds_run(p):
            return True
        run_dir = os.path.dirname(os.path.dirname(p))  # a checkpoint folder: RUN/checkpoints/<name>
        return os.path.exists(os.path.join(p, "model.safetensors")) and holds_run(run_dir)
    if os.path.isfile(p) and p.endswith(".safetensors"):
        from vitkit.cli.common import run_of_file

        try:
            run_dir = run_of_file(p)  # a file training wrote, or a vitkit export beside a run
        except UserError:  # another file in a run folder: a model of its own
            return False
        return run_dir is not None and holds_run(run_dir)
    return False


def load_subject(source: str, device: torch.device | str = "cpu") -> Subject:
    """A run (folder, checkpoint, weights file) or, through vitkit.convert, pretrained weights."""
    if is_run_path(source):
        from vitkit.convert.runs import CONVERTED

        run = load_run(source, device)
        c = run.cfg.model.in_chans
        classes = run.data.get("classes") or [str(i) for i in range(run.cfg.model.num_classes)]
        run_dir, label = weights_label(source)
        if run.cfg.recipe == CONVERTED:  # its data config is the default; data.json names the source
            how = f"converted from {run.data.get('dataset') or run.cfg.expected}"
        else:
            how = f"{run.cfg.recipe} on {run.cfg.data.dataset}"
        return Subject(
            run.model,
            f"{run.cfg.model.name} ({how})",
            tuple(run.data.get("mean") or [0.5] * c),
            tuple(run.data.get("std") or [0.5] * c),
            list(classes),
            run,
            run_dir,
            run.weights_path,
            label,
        )
    try:
        from vitkit.convert import model_from_source
    except ImportError as e:
        raise UserError(
            f"{source} is not a run folder (config.json + model.safetensors), and loading pretrained weights "
            f"needs vitkit.convert.model_from_source, which is unavailable: {e}"
        ) from None
    model = model_from_source(source)
    model = model.to(device).eval()
    # the weights' own normalisation, as timm's resolve_model_data_config gives it (the official ViT weights:
    # [-1, 1]; timm's DeiT: ImageNet's mean and std), and their class names where they have them
    pre = model.pretrained_cfg
    classes = list(pre.get("label_names") or [])
    return Subject(model, f"{model.cfg.name} ({source})", tuple(pre["mean"]), tuple(pre["std"]), classes)


@dataclasses.dataclass
class Inputs:
    """The images analysed: uint8 (B, C, H, W) at the model's size, with labels and titles when known."""

    images: torch.Tensor
    description: str
    labels: torch.Tensor | None = None
    titles: list[str] | None = None
    noise: bool = False  # no real images: predictions are not shown


def noise_inputs(subject: Subject, n: int, why: str) -> Inputs:
    """Deterministic uniform-noise images, when no real ones are at hand."""
    cfg = subject.model.cfg
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, cfg.in_chans, *cfg.img_size), generator=g, dtype=torch.uint8)
    return Inputs(images, f"{n} uniform-noise images ({why})", noise=True)


def sample_inputs(subject: Subject, n: int) -> Inputs:
    """n test images of a run's dataset drawn at random (seed 0); uniform noise (with a warning) when there are
    none."""
    from vitkit.data.transforms import resize

    cfg = subject.model.cfg
    if subject.run is None:
        log.warning("no --images given: using noise images for the attention analyses")
        return noise_inputs(subject, n, "no --images given")
    from vitkit.convert.runs import CONVERTED
    from vitkit.data.datasets import load_dataset

    rc = subject.run.cfg
    if rc.recipe == CONVERTED:  # converted weights: no dataset of their own
        log.warning(
            "%s holds converted weights, no dataset: using noise images (`vitkit inspect %s --images FILE...` "
            "analyses real ones)",
            subject.run_dir,
            subject.run_dir,
        )
        return noise_inputs(subject, n, "converted weights, no --images given")
    try:
        splits = load_dataset(
            local_data(rc.data, None, subject.run_dir),
            img_size=rc.model.img_size,
            seed=rc.train.seed,
            train_by_batch=True,  # its test images are analysed
        )
    except (OSError, ValueError, RuntimeError, UserError) as e:
        log.warning("could not load the test images of %s (%s): using noise images", rc.data.dataset, e)
        return noise_inputs(subject, n, f"the test images of {rc.data.dataset} could not be loaded")
    ds = splits.test if len(splits.test) else splits.train
    m = min(n, len(ds))
    # a random draw (seed 0), as the paper averages over random images: the first ones of a split stored class by
    # class (an image folder's) are all of one class
    pick = torch.randperm(len(ds), generator=torch.Generator().manual_seed(0))[:m].sort().values
    images, labels = ds.get_batch(pick)
    images = resize(images.cpu().float(), cfg.img_size).round().clamp(0, 255).to(torch.uint8)
    if m == 0 or images.shape[1] != cfg.in_chans:
        log.warning(
            "dataset %s has no usable test images for this model: using noise images", rc.data.dataset
        )
        return noise_inputs(subject, n, f"{rc.data.dataset} has no usable test images")
    labels = labels.cpu()
    titles = [f"true: {subject.classes[int(y)]}" for y in labels] if subject.classes else None
    return Inputs(images, f"{m} test images of {rc.data.dataset} (drawn at random, seed 0)", labels, titles)


def file_inputs(subject: Subject, paths: list[str]) -> Inputs:
    """Image files read as `vitkit predict` reads them: at the run's native size (its data's), with its weights'
    crop and interpolation, in the model's channels, then resized to the model's size."""
    from vitkit.cli.common import read_image_files
    from vitkit.data.transforms import resize

    cfg = subject.model.cfg
    images = read_image_files(paths, subject.model, subject.run.data if subject.run else {}, subject.name)
    if images.shape[-2:] != cfg.img_size:  # uint8 again, as the figures show them
        images = resize(images.float(), cfg.img_size).round().clamp(0, 255).to(torch.uint8)
    return Inputs(images, f"{len(images)} image file(s)", titles=[os.path.basename(p) for p in paths])


def default_output(run_dir: str, label: str | None, stem: str, suffix: str = "") -> str:
    """Where a run's report (or inspection) goes: RUN/report.html for its final weights, RUN/report-best.html
    for its checkpoints/best (so that a checkpoint's does not replace the final weights')."""
    return os.path.join(run_dir, f"{stem}-{label}{suffix}" if label else f"{stem}{suffix}")


def weights_label(path: str) -> tuple[str | None, str | None]:
    """(run_dir, a label for weights other than the run's final ones, else None) of a run path: a checkpoint
    folder's name for its weights of record (best), with the file's stem for another of its files
    (step-00000002-model: the raw weights beside the EMA), the stem for another file in the run (model_raw)."""
    from vitkit.convert.runs import folder_weights

    run_dir, weights = find_run(path)
    weights = os.path.abspath(weights)
    folder, stem = os.path.dirname(weights), os.path.splitext(os.path.basename(weights))[0]
    if run_dir is None or weights == os.path.abspath(os.path.join(run_dir, "model.safetensors")):
        return run_dir, None
    if folder == os.path.abspath(run_dir):
        return run_dir, stem
    name = os.path.basename(folder)
    return run_dir, name if weights == os.path.abspath(folder_weights(folder)) else f"{name}-{stem}"
