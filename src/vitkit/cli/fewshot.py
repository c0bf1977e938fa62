"""`vitkit fewshot`: the paper's few-shot linear evaluation of a run or of pretrained weights on a dataset."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
from typing import TYPE_CHECKING, Any

from vitkit.cli.common import UserError, path_arg, positive_float, positive_int
from vitkit.cli.rundata import another_dataset, check_folder_unchanged, folder_chans, local_data
from vitkit.eval.fewshot import L2_REG, SEEDS, SHOTS

if TYPE_CHECKING:
    from vitkit.config import DataConfig

log = logging.getLogger(__name__)


def _data_config(args: argparse.Namespace, subject):
    """The dataset evaluated on: --dataset, else the run's own."""
    from vitkit.config import DataConfig
    from vitkit.convert.runs import CONVERTED

    run = subject.run
    if run is None or run.cfg.recipe == CONVERTED:
        if not args.dataset:
            raise UserError(f"{args.source} holds pretrained weights, no dataset: pass --dataset")
        data_cfg = DataConfig(dataset=args.dataset, data_dir=args.data_dir)
    else:
        data_cfg = run.cfg.data
        if args.dataset and args.dataset != data_cfg.dataset:  # another dataset: not in the run's data folder
            data_cfg = another_dataset(data_cfg, args.dataset)
        data_cfg = local_data(data_cfg, args.data_dir, args.source)
    if args.val_fraction is not None:
        _refuse_redrawing(args, run, data_cfg)
        data_cfg = dataclasses.replace(data_cfg, val_fraction=args.val_fraction)
    return data_cfg


def _refuse_redrawing(args: argparse.Namespace, run: Any, data_cfg: DataConfig) -> None:
    """Refuse a larger --val-fraction on the image folder a run drew its test split from: it holds the run's own
    test split and images the run trained on (a smaller one is part of the run's test split: allowed)."""
    if run is None or data_cfg.dataset != "imagefolder" or run.cfg.data.dataset != "imagefolder":
        return
    was = run.cfg.data.val_fraction
    drawn = (run.data.get("sources") or {}).get("test", "train" if was else None) == "train"
    folder, own = data_cfg.data_dir, run.cfg.data.data_dir
    if (
        drawn
        and args.val_fraction > was
        and (not folder or not own or os.path.realpath(folder) == os.path.realpath(own))
    ):
        raise UserError(
            f"{args.source} was trained on {own or 'its image folder'}'s train/ less its data.val_fraction={was:g} "
            f"test split; --val-fraction {args.val_fraction:g} would draw a larger one from train/, holding images "
            "the run trained on: leave --val-fraction out, or score another folder (--data-dir) or dataset (--dataset)"
        )


def _preprocess(subject, in_chans: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The model's input normalisation: its run's, else the loaded weights' (timm's hub config), else [-1, 1]."""
    pre = getattr(subject.model, "preprocess", {}) if subject.run is None else {}
    mean, std = pre.get("mean"), pre.get("std")
    if mean and std and len(mean) == len(std) == in_chans:
        return tuple(mean), tuple(std)
    return subject.mean, subject.std


def cmd_fewshot(args: argparse.Namespace) -> int:
    from vitkit.cli.subjects import is_run_path, load_subject
    from vitkit.data.datasets import load_dataset
    from vitkit.eval.fewshot import fewshot_evaluate, model_input
    from vitkit.train.loop import resolve_device

    if not args.dataset and not is_run_path(args.source):  # before loading (downloading) the weights
        raise UserError(f"{args.source} is not a run folder: pass --dataset for pretrained weights")
    device = resolve_device(args.device)
    subject = load_subject(args.source, device)
    cfg = subject.model.cfg
    data_cfg = _data_config(args, subject)
    # a run's own dataset split as it was in training (imagefolder's val_fraction, synthetic data: by its seed)
    own = subject.run is not None and data_cfg.dataset == subject.run.cfg.data.dataset
    seed = subject.run.cfg.train.seed if own else 0
    # an image folder's train/ read per batch: only the shots drawn are decoded
    splits = load_dataset(
        data_cfg, img_size=cfg.img_size, seed=seed, in_chans=folder_chans(cfg.in_chans), train_by_batch=True
    )
    if own and data_cfg.dataset == "imagefolder":  # shots from train/, scored on test: as in training
        for split in ("test", "train"):  # the images scored, and those the shots are drawn from
            check_folder_unchanged(
                subject.run.data, splits, split, args.source, data_cfg.data_dir, subject.run.cfg.data.data_dir
            )
    if splits.in_chans not in (1, cfg.in_chans):
        raise UserError(
            f"dataset {data_cfg.dataset} has {splits.in_chans}-channel images, {subject.name} takes {cfg.in_chans}"
        )
    transform = model_input(cfg.img_size, cfg.in_chans, *_preprocess(subject, cfg.in_chans))

    bar = None
    if not args.no_progress:
        from tqdm import tqdm

        # disable=None: none when stderr is no terminal (a log of 2>&1 would get the bar and the table on one line)
        bar = tqdm(unit="img", desc="embedding", dynamic_ncols=True, leave=False, disable=None)
    try:
        res = fewshot_evaluate(
            subject.model,
            splits.train,
            splits.test,
            transform,
            num_classes=splits.num_classes,
            shots=args.shots,
            seeds=args.seeds,
            l2_reg=args.l2_reg,
            device=device,
            batch_size=args.batch_size,
            test_limit=args.test_limit,
            progress=bar.update if bar is not None else None,
            class_names=list(getattr(splits, "classes", None) or []),
        )
    finally:
        if bar is not None:
            bar.close()
    res = {"source": args.source, "model": subject.name, "dataset": data_cfg.dataset} | res
    if args.json:
        print(json.dumps(res))
        return 0
    print(
        f"few-shot linear evaluation of {subject.name} on {data_cfg.dataset}: pre-logits of width {res['dim']}, "
        f"ridge l2 {res['l2_reg']:g}, {res['num_test']} test images, {args.seeds} seed(s)"
    )
    print(f"  {'shots':>5}  {'top-1':>7}  {'std':>6}  per seed")
    for k, r in res["shots"].items():
        seeds = " ".join(f"{a:.2%}" for a in r["seeds"])
        print(f"  {k:>5}  {r['mean']:>7.2%}  {r['std']:>6.2%}  {seeds}")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser(
        "fewshot",
        help="few-shot linear accuracy of the frozen representation (the paper's ridge regression)",
        description="Embed K images per class with the frozen model (its pre-logits), fit a ridge regression to "
        "{-1,1} targets in closed form, and report test top-1 (the paper's Section 4.1; big_vision's defaults).",
    )
    p.add_argument(
        "source", metavar="RUN_DIR|SOURCE", help="a run folder or checkpoint, or pretrained weights"
    )
    p.add_argument("--dataset", help="default: the run's (required for pretrained weights)")
    p.add_argument("--data-dir", type=path_arg)
    p.add_argument(
        "--shots", type=positive_int, nargs="+", default=list(SHOTS), metavar="K", help="default: 1 5 10 25"
    )
    p.add_argument(
        "--seeds", type=positive_int, default=SEEDS, help=f"draws of the K-shot sets (default {SEEDS})"
    )
    p.add_argument(
        "--l2-reg", type=positive_float, default=L2_REG, help=f"ridge penalty (default {L2_REG:g})"
    )
    p.add_argument(
        "--test-limit", type=positive_int, metavar="N", help="score on N test images drawn at random (seed 0)"
    )
    p.add_argument(
        "--val-fraction",
        type=float,
        metavar="F",
        help="imagefolder without val/: hold out this fraction as test",
    )
    p.add_argument("--batch-size", type=positive_int, default=256)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the results as one JSON object")
    p.set_defaults(func=cmd_fewshot)
