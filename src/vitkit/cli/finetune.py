"""`vitkit finetune --from SOURCE`: the paper's transfer recipe from any supported checkpoint."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import time
from typing import Any

import torch

from vitkit.cli.common import (
    PRECISION_HELP,
    TqdmProgress,
    UserError,
    command_overrides,
    image_size,
    nonneg_int,
    path_arg,
    positive_int,
    set_keys,
    warn_unread,
)
from vitkit.cli.outputs import out_holds_source, refuse_training_into
from vitkit.cli.train import FLAG_KEYS as TRAIN_FLAG_KEYS
from vitkit.config import RunConfig, apply_overrides
from vitkit.convert import Checkpoint, ConversionError
from vitkit.eval.metrics import top5_text
from vitkit.recipes import FINETUNE_IMG_SIZE, PAPER_FINETUNE_STEPS, RECIPES, get_recipe, hyperrule

# the train command's flags that fine-tuning takes too (the image size: --img-size, the recipe or the checkpoint)
FLAG_KEYS = {
    k: v for k, v in TRAIN_FLAG_KEYS.items() if k not in ("img_size", "checkpoint_every", "strategy")
} | {"layer_decay": "optim.layer_decay"}
# the recipe's fine-tuning regularisation; the architecture comes from the checkpoint
RECIPE_MODEL_FIELDS = ("drop_rate", "attn_drop_rate", "drop_path_rate", "head_drop_rate")
CNN_FINETUNE_FIELDS = ("drop_rate", "drop_path_rate")  # the CNN baselines have no attention dropout

log = logging.getLogger(__name__)


def finetune_config(args: argparse.Namespace, ckpt: Checkpoint) -> RunConfig:
    """The recipe with the checkpoint's architecture, the asked resolution, flags and --set overrides."""
    cfg = get_recipe(args.recipe)
    size = args.img_size or FINETUNE_IMG_SIZE.get(args.recipe) or ckpt.config.img_size
    size = (size, size) if isinstance(size, int) else tuple(size)
    if not args.img_size and args.recipe in FINETUNE_IMG_SIZE and ckpt.config.arch == "vit":
        stride = ckpt.config.token_stride
        if any(side % stride for side in size):  # a size the user never typed: say where it came from
            near = max(1, round(size[0] / stride)) * stride
            raise UserError(
                f"the {args.recipe} recipe fine-tunes at {size[0]}x{size[1]} by default, which {ckpt.config.name}'s "
                f"{stride}-pixel tokens do not divide: pass --img-size (e.g. {near})"
            )
    model = dataclasses.replace(
        ckpt.config,
        img_size=size,
        head_init="zero",
        **{
            k: getattr(cfg.model, k)
            for k in RECIPE_MODEL_FIELDS
            if ckpt.config.arch == "vit" or k in CNN_FINETUNE_FIELDS
        },
    )
    overrides = user_overrides(args)
    cfg = apply_overrides(dataclasses.replace(cfg, model=model), overrides)
    if not args.dataset and not any(o.strip().startswith("data.dataset=") for o in args.set or []):
        log.info("fine-tuning on %s, the recipe's dataset (--dataset to choose another)", cfg.data.dataset)
    steps = PAPER_FINETUNE_STEPS.get(cfg.data.dataset) if cfg.recipe == "paper-finetune" else None
    if steps and not set_keys(overrides) & {"train.steps", "train.epochs"}:
        cfg = dataclasses.replace(
            cfg, train=dataclasses.replace(cfg.train, steps=steps)
        )  # the official preset
    return cfg


def user_overrides(args: argparse.Namespace) -> list[str]:
    """The command's flags and --set as config overrides (they win over the recipe and its rules)."""
    return command_overrides(args, FLAG_KEYS)


def _named(classes: list[str] | None) -> list[str] | None:
    """Class names that name something: None for transformers' placeholders (LABEL_0, LABEL_1, ...). Digits
    are names (MNIST's classes); converted runs write no classes where their source has none."""
    if not classes or list(classes) == [f"LABEL_{i}" for i in range(len(classes))]:
        return None
    return list(classes)


def _other_classes(ckpt: Checkpoint, splits: Any) -> bool:
    """Whether the checkpoint's head is for other classes than the dataset's, by their names (the paper replaces
    the head whatever they are; a head for the dataset's own classes is kept, as for a move to a higher
    resolution); said either way."""
    theirs, ours = _named(ckpt.meta.get("classes")), list(getattr(splits, "classes", None) or [])
    k = ckpt.config.num_classes
    if theirs and ours and list(theirs) != ours:
        log.info("new zero-initialised head: the checkpoint's %d classes are not the dataset's", k)
        return True
    if theirs and ours:
        log.info(
            "the checkpoint's head is kept: its %d classes are the dataset's (--reset-head for a new one)", k
        )
    elif k:
        log.warning(
            "the checkpoint's head is kept: it has as many classes (%d) as the dataset and does not name them, so "
            "they are taken to be the dataset's; pass --reset-head for the paper's new zero-initialised head",
            k,
        )
    return False


def resample_used(model_cfg: Any, asked: str, report: Any) -> str | None:
    """How the loaded weights were moved to the model's size, for pretrained.json (None: they were not)."""
    if report.resampled:
        return {
            "sincos2d": "sincos2d at patch centres",
            "learn2d": "linear, each axis's table",
        }.get(model_cfg.posemb, asked)
    if report.relative_resampled:  # an attention-augmented ResNet's 1-D tables
        return "linear, the relative position tables"
    return None


def run_finetune(args: argparse.Namespace) -> tuple[dict[str, Any], RunConfig, dict[str, Any]]:
    """Read the checkpoint, adapt it to the dataset and resolution, train; (summary, config, provenance)."""
    from vitkit.convert import load_pretrained, read_checkpoint
    from vitkit.data.datasets import load_dataset
    from vitkit.models import build_model
    from vitkit.train.loop import resolve_for_data, train
    from vitkit.train.runfiles import CONFIG

    if args.out and out_holds_source(args.out, args.source):
        raise UserError(
            f"--out {args.out} holds the checkpoint fine-tuned from (--from {args.source}): choose another --out"
        )
    if args.out and os.path.exists(os.path.join(args.out, CONFIG)) and not args.overwrite:
        raise UserError(f"--out {args.out} already holds a run; pass --overwrite to start afresh there")
    if args.out:
        refuse_training_into(args.out)
    try:
        ckpt = read_checkpoint(args.source, num_heads=args.num_heads, img_size=args.img_size)
    except ConversionError as e:
        if "does not say the image size" not in str(e):
            raise
        raise UserError(  # --img-size here is the fine-tuning size, not the file's
            f"{e}. For finetune: convert it at its own size first (vitkit convert {args.source} --img-size HxW "
            "--out RUN), then fine-tune --from RUN"
        ) from None
    cfg = finetune_config(args, ckpt)
    splits = load_dataset(cfg.data, img_size=cfg.model.img_size, seed=cfg.train.seed)
    cfg = resolve_for_data(cfg, splits, warn=False)  # the checkpoint's classes and channels: adapted below
    if cfg.recipe == "bit-hyperrule":  # its length, warmup and MixUp follow the training set's size
        given = set_keys(user_overrides(args))
        cfg = apply_overrides(cfg, hyperrule(len(splits.train), cfg.model.img_size, given))
    reset = (
        args.reset_head or cfg.model.num_classes != ckpt.config.num_classes or _other_classes(ckpt, splits)
    )
    if reset:
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, representation_size=None))
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model, weights_follow=True)
    report = load_pretrained(model, ckpt, resample=args.resample, reset_head=reset or None)
    cfg = dataclasses.replace(cfg, model=model.cfg)
    warn_unread(cfg, args.set)
    # preprocess as in pre-training (the checkpoint's statistics, one per channel once the filters were adapted)
    mean, std = model.preprocess.get("mean"), model.preprocess.get("std")
    if mean and std and len(mean) == len(std) == splits.in_chans:
        splits = dataclasses.replace(splits, mean=tuple(mean), std=tuple(std))
    provenance = {
        "from": os.path.abspath(args.source) if os.path.exists(args.source) else args.source,  # or a hub id
        "format": ckpt.format,
        "checkpoint_img_size": list(ckpt.config.img_size),
        "img_size": list(cfg.model.img_size),
        "resample": resample_used(cfg.model, args.resample, report),
        "head_reset": report.head_reset,
        "channels_adapted": report.channels_adapted,
    }
    if args.threads:
        torch.set_num_threads(args.threads)
    state = model.state_dict()
    summary = train(
        cfg,
        args.out,
        progress=TqdmProgress(not args.no_progress),
        splits=splits,
        init_state=state,
        init_from=provenance,
    )
    return summary, cfg, provenance


def cmd_finetune(args: argparse.Namespace) -> int:
    from vitkit.cli.train import write_report

    t0 = time.time()
    summary, cfg, prov = run_finetune(args)
    if args.json:
        out = {k: v for k, v in summary.items() if k != "confusion"} | {"pretrained": prov}
        print(json.dumps(out, indent=2))
    if args.out and not args.no_report:
        write_report(args.out, cfg)
    if args.json:
        return 0
    g0, g1 = prov["checkpoint_img_size"], prov["img_size"]
    head = "new zero-initialised head" if prov["head_reset"] else "pretrained head"
    where = f"; weights: {os.path.join(args.out, 'model.safetensors')}" if args.out else ""
    tta = f"with {summary['tta']} TTA " if "tta" in summary else ""
    print(
        f"{cfg.recipe}: {cfg.model.name} from {args.source} ({prov['format']}, {g0[0]}x{g0[1]} -> {g1[0]}x{g1[1]}, "
        f"{head}) on {summary['dataset']}: test top-1 {summary['test_top1']:.2%}, top-5 {top5_text(summary['test_top5'], len(summary['per_class']))} "
        f"{tta}after {summary['steps']} steps; wall {time.time() - t0:.0f} s{where}"
    )
    if summary.get("tta_gain"):
        from vitkit.eval.tta import describe_gain

        print(describe_gain(summary["tta"], summary["test_top1_no_tta"], summary["tta_gain"]))
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser(
        "finetune", help="fine-tune pretrained weights on a dataset, optionally at a new resolution"
    )
    p.add_argument(
        "--from", dest="source", required=True, metavar="SOURCE", help="run folder, file or hub id"
    )
    p.add_argument(
        "--recipe",
        choices=sorted(RECIPES),
        default="finetune-small",
        help="finetune-small (CPU-sized, default), paper-finetune (the paper's: batch 512, SGD) or bit-hyperrule "
        "(BiT's: its length by the dataset's size)",
    )
    p.add_argument("--dataset", help="fashion-mnist, mnist, cifar10, cifar100, imagefolder, synthetic")
    p.add_argument("--data-dir", type=path_arg)
    p.add_argument(
        "--img-size",
        type=image_size,
        help="fine-tuning resolution, N or HxW (default: 384 px for paper-finetune, else the checkpoint's)",
    )
    p.add_argument(
        "--resample",
        choices=["official", "bicubic"],
        default="official",
        help="a learned position embedding's 2-D resampling to --img-size (learn2d: each axis's table linearly; "
        "sincos2d: recomputed at the patch centres)",
    )
    p.add_argument(
        "--reset-head", action="store_true", help="new zero-initialised head even if classes match"
    )
    p.add_argument(
        "--num-heads", type=positive_int, help="heads, for fused-qkv files whose shape is not the paper's"
    )
    p.add_argument("--epochs", type=positive_int, help="default: the recipe's length")
    p.add_argument("--steps", type=positive_int, help="optimizer steps (overrides --epochs)")
    p.add_argument("--batch-size", type=positive_int, help="global batch per optimizer step")
    p.add_argument(
        "--micro-batch-size", type=nonneg_int, help="accumulate over micro-batches of this size (0: none)"
    )
    p.add_argument("--lr", type=float, help="peak learning rate (default: the recipe's)")
    p.add_argument(
        "--layer-decay",
        type=float,
        metavar="D",
        help="layer-wise learning-rate decay, e.g. 0.75 (ViTs; default off)",
    )
    p.add_argument("--seed", type=int, help="default: 0")
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--precision", choices=["fp32", "bf16", "bf16-pure", "auto"], help=PRECISION_HELP)
    p.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="any config key, e.g. optim.warmup_steps=50"
    )
    p.add_argument("--out", type=path_arg, help="run folder for config, metrics, checkpoints and weights")
    p.add_argument("--overwrite", action="store_true", help="start afresh in an --out that holds a run")
    p.add_argument("--threads", type=positive_int, help="torch CPU threads")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--no-report", action="store_true", help="do not write RUN_DIR/report.html at the end")
    p.set_defaults(func=cmd_finetune)
