"""`vitkit compare`: runs scored on the same images, each accuracy with its 95% interval, each pair with the
accuracy difference, its interval and McNemar's exact test (is the difference more than the test set's noise?)."""

from __future__ import annotations

import argparse
import itertools
import json
import os
from typing import Any

import torch

from vitkit.cli.common import UserError, add_tta_argument, path_arg, positive_int
from vitkit.cli.rundata import another_dataset, check_dataset_fits, folder_chans, local_data


def _split_key(cfg, split: str, folder_given: bool = False) -> dict[str, Any]:
    """What decides which images a run's `split` holds, by setting: the dataset (an image folder's path, unless
    --data-dir names the one all are read from: runs moved, or trained elsewhere); for the test split of a real
    dataset nothing else, but the seed draws synthetic data and an image folder's carved-out test split too; the
    val split follows the seed and the holdout, the train split the subset as well."""
    d = cfg.data
    recorded = d.dataset == "imagefolder" and d.data_dir and not folder_given
    key: dict[str, Any] = {
        "data.dataset": d.dataset,
        "data.data_dir": os.path.abspath(d.data_dir) if recorded else None,
    }
    key["data.synthetic_size"] = d.synthetic_size if d.dataset == "synthetic" else None
    key["data.val_fraction"] = d.val_fraction
    seeded = d.dataset == "synthetic" or d.val_fraction > 0 or split != "test"
    key["train.seed"] = cfg.train.seed if seeded else None
    if split != "test":
        key["data.holdout"] = d.holdout
    if split == "train":
        key["data.subset"] = d.subset
    return key


def _key_difference(key: dict[str, Any], other: dict[str, Any]) -> str:
    """The settings two split keys differ in, with their values ("train.seed 1, not 0")."""
    return ", ".join(f"{k} {other[k]!r}, not {key[k]!r}" for k in key if other[k] != key[k])


def compare_predictions(labels: torch.Tensor, preds: list[torch.Tensor], names: list[str]) -> dict:
    """Accuracy and 95% interval of each prediction vector, and every pair's paired statistics."""
    from vitkit.eval.metrics import mcnemar_exact, paired_difference, wilson_interval

    n = len(labels)
    if n == 0:
        raise ValueError("comparing predictions needs at least one image")
    right = [p == labels for p in preds]
    runs = [
        {"run": name, "top1": float(r.double().mean()), "top1_ci95": list(wilson_interval(int(r.sum()), n))}
        for name, r in zip(names, right)
    ]
    pairs = []
    for i, j in itertools.combinations(range(len(preds)), 2):
        only_a, only_b = int((right[i] & ~right[j]).sum()), int((right[j] & ~right[i]).sum())
        diff, lo, hi = paired_difference(only_a, only_b, n)
        pairs.append({
            "a": names[i],
            "b": names[j],
            "i": i,
            "j": j,
            "only_a": only_a,
            "only_b": only_b,
            "both": int((right[i] & right[j]).sum()),
            "neither": int((~right[i] & ~right[j]).sum()),
            "agree": float((preds[i] == preds[j]).double().mean()),
            "diff": diff,
            "diff_ci95": [lo, hi],
            "p_mcnemar": mcnemar_exact(only_a, only_b),
        })  # fmt: skip
    return {"num_samples": n, "runs": runs, "pairs": pairs}


def cmd_compare(args: argparse.Namespace) -> int:
    from vitkit.cli.common import load_run, run_normalisation, run_tta
    from vitkit.convert.runs import CONVERTED
    from vitkit.data.datasets import load_dataset
    from vitkit.data.transforms import BatchTransform
    from vitkit.eval.evaluate import predict_labels
    from vitkit.train.loop import resolve_device

    if len(args.runs) < 2:
        raise UserError("compare needs two or more runs")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    runs = [load_run(path, device) for path in args.runs]
    converted = [p for p, r in zip(args.runs, runs) if r.cfg.recipe == CONVERTED]
    if converted and not args.dataset:
        raise UserError(f"{', '.join(converted)}: converted or exported weights, no dataset: pass --dataset")
    first = runs[0].cfg
    data_cfg = first.data
    if args.dataset and (args.dataset != data_cfg.dataset or converted):
        if args.split != "test":
            raise UserError(
                f"--dataset with --split {args.split}: another dataset's val/train split is no run's"
            )
        data_cfg = another_dataset(data_cfg, args.dataset)
    else:
        given = args.data_dir is not None
        key = _split_key(first, args.split, given)
        differ = {p: _split_key(r.cfg, args.split, given) for p, r in zip(args.runs, runs)}
        differ = {p: _key_difference(key, k) for p, k in differ.items() if k != key}
        if differ:
            raise UserError(
                f"--split {args.split}: "
                + "; ".join(
                    f"{p} would hold other images than {args.runs[0]} ({why})" for p, why in differ.items()
                )
            )
    data_cfg = local_data(data_cfg, args.data_dir, args.runs[0])
    loaded = {}  # an image folder is decoded at each model's size; in-memory datasets are resized per batch
    preds, labels, ttas = [], None, []
    for path, run in zip(args.runs, runs):
        folder = data_cfg.dataset == "imagefolder"
        size = run.cfg.model.img_size if folder else first.model.img_size
        key = (size, folder_chans(run.cfg.model.in_chans) if folder else None)
        if key not in loaded:
            loaded[key] = load_dataset(
                data_cfg,
                img_size=size,
                seed=first.train.seed,
                in_chans=key[1],
                # an image folder's train/ is not decoded to score test/ (with each run's own normalisation)
                train_by_batch=args.split != "train" and all(r.data.get("mean") for r in runs),
            )
        splits = loaded[key]
        try:
            ds = splits.split(args.split)
        except ValueError as e:
            raise UserError(f"{args.runs[0]}: {e}") from None
        check_dataset_fits(
            run,
            splits,
            data_cfg.dataset,
            path,
            own=data_cfg.dataset == run.cfg.data.dataset == "imagefolder",
            split=args.split,
            folder=data_cfg.data_dir,
        )
        if labels is not None and not torch.equal(labels, ds.labels.cpu()):
            raise UserError(f"{path}: its {args.split} split holds other images than {args.runs[0]}'s")
        labels = ds.labels.cpu()
        tf = BatchTransform(data_cfg, run.cfg.model.img_size, *run_normalisation(run, splits))
        ttas.append(run_tta(args, run.cfg))
        preds.append(
            predict_labels(run.model, ds, tf.eval, device=device, batch_size=args.batch_size, tta=ttas[-1])
        )
    res = compare_predictions(labels, preds, list(args.runs))
    for r, tta in zip(res["runs"], ttas):
        r["tta"] = tta
    res = {"dataset": data_cfg.dataset, "split": args.split} | res
    if args.json:
        print(json.dumps(res))
        return 0
    print(f"{data_cfg.dataset} {args.split} split, {res['num_samples']} images (95% intervals)")
    for i, r in enumerate(res["runs"]):
        lo, hi = r["top1_ci95"]
        tta = f"  ({r['tta']} TTA)" if r["tta"] != "none" else ""
        print(f"  {chr(65 + i)}  top-1 {r['top1']:.2%}  [{lo:.2%}, {hi:.2%}]  {r['run']}{tta}")
    if len(set(ttas)) > 1:
        print(
            "  (scored with different TTA: the differences include it; --tta none or hflip scores all alike)"
        )
    for p in res["pairs"]:
        a, b = chr(65 + p["i"]), chr(65 + p["j"])
        lo, hi = p["diff_ci95"]
        verdict = "they differ" if p["p_mcnemar"] < 0.05 else "not distinguishable on these images"
        pval = f"{p['p_mcnemar']:.3g}" if p["p_mcnemar"] > 0 else "< 1e-300"
        print(
            f"  {b} - {a}: {p['diff']:+.2%} [{lo:+.2%}, {hi:+.2%}]; right where the other is wrong: {a} "
            f"{p['only_a']}, {b} {p['only_b']} images; McNemar p = {pval} ({verdict} at 5%)"
        )
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser(
        "compare",
        help="runs on the same test images: accuracies with 95%% intervals, McNemar's test for each pair",
        description="Score two or more runs (or checkpoints) on the same images: each top-1 with its 95% Wilson "
        "interval, and for each pair the difference with its interval and the exact McNemar p-value.",
    )
    p.add_argument("runs", nargs="+", metavar="RUN_DIR|CHECKPOINT")
    p.add_argument("--dataset", help="default: the first run's")
    p.add_argument(
        "--data-dir",
        type=path_arg,
        help="default: the first run's, else $VITKIT_DATA, Debian's package, download",
    )
    p.add_argument(
        "--split",
        choices=["test", "val", "train"],
        default="test",
        help="default: test (val and train: runs that split the data alike)",
    )
    p.add_argument("--batch-size", type=positive_int, default=512, help="default: 512")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    p.add_argument("--threads", type=positive_int, help="torch CPU threads")
    p.add_argument("--json", action="store_true")
    add_tta_argument(p)
    p.set_defaults(func=cmd_compare)
