"""`vitkit train | eval | predict`."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import re
import time

import torch

from vitkit.cli.common import (
    PRECISION_HELP,
    TqdmProgress,
    UserError,
    add_tta_argument,
    command_overrides,
    image_size,
    load_run,
    nonneg_int,
    path_arg,
    positive_int,
    run_normalisation,
    run_tta,
    set_keys,
    warn_unread,
)
from vitkit.cli.outputs import refuse_training_into
from vitkit.cli.rundata import another_dataset, check_dataset_fits, folder_chans, local_data
from vitkit.config import RunConfig, apply_overrides, to_dict
from vitkit.eval.metrics import top5_text
from vitkit.recipes import GPU_RECIPES, RECIPES, get_recipe

log = logging.getLogger("vitkit")

# flag -> config key
FLAG_KEYS = {
    "dataset": "data.dataset",
    "data_dir": "data.data_dir",
    "img_size": "model.img_size",
    "epochs": "train.epochs",
    "steps": "train.steps",
    "batch_size": "train.batch_size",
    "micro_batch_size": "train.micro_batch_size",
    "lr": "optim.lr",
    "seed": "train.seed",
    "device": "train.device",
    "checkpoint_every": "train.checkpoint_every",
    "precision": "train.precision",
    "strategy": "train.strategy",
}


# keys a resumed run may change without a word: where the data is, and what the dataset sets
RESUME_QUIET = (
    "data.data_dir", "data.num_workers", "model.num_classes", "model.in_chans", "train.log_every",
    "train.checkpoint_every", "train.dist_timeout_s", "train.eval_every", "train.fewshot_every",
    "train.epochs", "train.steps",  # the trainer says what a new length does to the schedule
)  # fmt: skip
# keys a resumed run may change: its length, and how (not what) it computes; and what the dataset fixes
RESUME_MAY_CHANGE = (
    "train.epochs",
    "train.steps",
    "train.strategy",
    "train.device",
    "train.compile",  # a prefix: train.compile_mode and train.compile_scope too
    "train.grad_checkpointing",  # how the step runs, not what it computes (on to resume after running out of memory)
    "train.fused_bias_gelu",  # the same function, another kernel
    "train.dist_timeout_s",
    "train.eval_",  # a prefix: when and how evaluations run (eval_every, eval_tta, eval_batch_size)
    "train.fewshot",  # the few-shot probes (fewshot_every, _datasets, _shots, _test_limit)
    # accumulation: the same update up to rounding (ViTs, GroupNorm CNNs), the usual way on after running out of
    # memory; with BatchNorm or Mixup/CutMix (drawn per micro-batch) another, as valid, batch split
    "train.micro_batch_size",
    "train.data_on_device",
    "train.log_every",
    "train.checkpoint_every",
    "data.num_workers",
    "data.data_dir",
    "model.num_classes",  # both set from the dataset, whatever the command said
    "model.in_chans",
)


def model_overrides(name: str, img_size=None, shape: dict | None = None) -> list[str]:
    """--model ViT-S/4 -> the registry's width/depth/heads/MLP/patch (a hybrid's or BiT's ResNet) as overrides;
    `img_size` is the size the run will use (the name is checked against it, not against 224).

    A CNN's name also sets the ViT-only options back to their defaults (the recipe's pool, posemb, ... are a
    ViT's), and any name the options of the other CNN kinds (a SASA recipe's window on an AA model).
    """
    from vitkit.config import ARCH_FIELDS, ARCH_ONLY, CNN_READS, VIT_ONLY
    from vitkit.models import model_config

    def text(v) -> str:
        if v is None:
            return "none"
        if isinstance(v, bool):
            return str(v).lower()
        if isinstance(v, tuple):
            return ",".join(map(str, v)) or "()"
        return str(v)

    given = dict(shape or {}) | ({} if img_size is None else {"img_size": img_size})
    # `shape`: --set's heads or MLP, which a width off the paper's table needs
    m = model_config(name, **given)
    keys = list(ARCH_FIELDS)
    if m.arch != "vit":
        keys += [k for k in VIT_ONLY if k not in keys and k not in CNN_READS.get(m.arch, ())]
    keys += [k for k, arch in ARCH_ONLY.items() if arch != m.arch and k not in keys]
    return [f"model.{k}={text(getattr(m, k))}" for k in keys]


def _set_value(args: argparse.Namespace, key: str, tp: type):
    """The last `--set key=...`, parsed as `tp` (model.img_size: 224, 224x160, (224, 160)), or None."""
    from vitkit.config.overrides import parse_value

    given = [o.split("=", 1)[1] for o in args.set or [] if o.split("=", 1)[0].strip() == key]
    return parse_value(key, given[-1], tp) if given else None


def _set_img_size(args: argparse.Namespace) -> tuple[int, int] | None:
    return _set_value(args, "model.img_size", tuple[int, int])


def resolve_config(args: argparse.Namespace, base: RunConfig | None = None) -> RunConfig:
    """The run's config: `base` (else --recipe's, else the default recipe) with the flags and --set applied."""
    cfg = base if base is not None else get_recipe(args.recipe or "fashion-mnist")
    overrides = []
    if args.model is not None:  # "" is refused as a name, not ignored
        # the name is checked against the size the run will use: --img-size, else --set's, else the recipe's
        size = getattr(args, "img_size", None) or _set_img_size(args) or cfg.model.img_size
        shape = {k: _set_value(args, f"model.{k}", int) for k in ("num_heads", "mlp_dim")}
        overrides += model_overrides(args.model, size, {k: v for k, v in shape.items() if v is not None})
    if args.compile:
        overrides.append("train.compile=true")
    resolved = _renamed(apply_overrides(cfg, overrides + command_overrides(args, FLAG_KEYS)), args.set or [])
    return _prelogits_follow_width(cfg, resolved, args.set or [])


def _prelogits_follow_width(recipe: RunConfig, cfg: RunConfig, sets: list[str]) -> RunConfig:
    """A recipe's pre-logits of the model's width (paper-pretrain's, as the official code) stay of the model's
    width when --model or --set changes it, unless --set gives model.representation_size."""
    before, m = recipe.model, cfg.model
    keys = set_keys(sets)
    if before.representation_size != before.embed_dim or m.embed_dim == before.embed_dim or m.arch != "vit":
        return cfg
    if "model.representation_size" in keys or m.representation_size != before.representation_size:
        return cfg
    return dataclasses.replace(cfg, model=dataclasses.replace(m, representation_size=m.embed_dim))


def _renamed(cfg: RunConfig, sets: list[str]) -> RunConfig:
    """A ViT's name ends in its token stride (ViT-fmnist/4): --set of the patch size or backbone that changed
    the stride renames it, unless --set names the model too."""
    m = cfg.model
    keys = set_keys(sets)
    suffix = re.search(r"/(\d+)$", m.name)
    if "model.name" in keys or not keys & {"model.patch_size", "model.backbone"} or m.arch != "vit":
        return cfg
    if suffix is None or int(suffix.group(1)) == m.token_stride:
        return cfg
    return dataclasses.replace(
        cfg, model=dataclasses.replace(m, name=f"{m.name[: suffix.start()]}/{m.token_stride}")
    )


def _on_run(args: argparse.Namespace, out: str) -> tuple[RunConfig | None, RunConfig]:
    """(this command's flags applied to the run's config, None if it names another recipe; the run's config)."""
    from vitkit.train.runfiles import read_config

    saved = read_config(out)
    if args.recipe and args.recipe != saved.recipe:
        return None, saved
    saved_here = dataclasses.replace(saved, data=local_data(saved.data, getattr(args, "data_dir", None), out))
    return resolve_config(args, saved_here), saved


def _restart_differences(args: argparse.Namespace, out: str) -> list[str]:
    """How the run in `out` differs from the run this command starts afresh (its flags on its recipe, as the first
    attempt wrote it), but for the keys the dataset sets whatever the command said. (Its flags on the run's own
    config would match any run on every key the command does not name.)"""
    from vitkit.train.loop import absolute_data_dir
    from vitkit.train.runfiles import read_config

    saved = read_config(out)
    diff = _differences(to_dict(absolute_data_dir(resolve_config(args))), to_dict(saved))
    return [d for d in diff if not d.startswith(("model.num_classes", "model.in_chans"))]


def _differences(a: dict, b: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _differences(va, vb, f"{prefix}{k}.")
        elif va != vb:
            out.append(f"{prefix}{k}: {vb!r} in the run, {va!r} now")
    return out


def _warn_gpu_recipe_on_cpu(cfg: RunConfig, main: bool) -> None:
    """A recipe sized for one GPU started on the CPU: say what it will cost before the hours go by."""
    from vitkit.train.loop import resolve_device

    cost = GPU_RECIPES.get(cfg.recipe)
    own = get_recipe(cfg.recipe).train if cost else None
    full = own is not None and (cfg.train.steps, cfg.train.epochs) == (own.steps, own.epochs)  # not shortened
    if cost and full and main and resolve_device(cfg.train.device).type == "cpu":
        log.warning(
            "recipe %s is sized for one GPU (--device cuda); on this CPU %s. Shorten it with --epochs/--steps, "
            "or train the default recipe (fashion-mnist) here",
            cfg.recipe,
            cost,
        )


def cmd_train(args: argparse.Namespace) -> int:
    from vitkit.train import distributed as D
    from vitkit.train.loop import train
    from vitkit.train.runfiles import CONFIG

    out = args.out
    resume = False
    info = D.from_env()
    if not info.is_main:
        logging.getLogger().setLevel(logging.WARNING)
    if out is None and not args.resume:  # a long run's weights would be lost without a word
        log.warning(
            "no --out: the trained weights, checkpoints and report are not saved (--out RUN_DIR keeps them)"
        )
    if args.resume and args.overwrite:
        raise UserError("--resume continues a run and --overwrite starts afresh over it: give one of them")
    restart = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    if int(restart) > 0 and out and not args.resume and os.path.exists(os.path.join(out, CONFIG)):
        # a restart resumes only the run this very command started: the refusal of a folder holding another run
        # (the first attempt's error) must not become a resume of it
        diff = _restart_differences(args, out)
        if not diff and D.started_by_this_job(out) is not False:
            log.info("torchrun restarted the job (restart %s): resuming %s", restart, out)
            args.resume = out
        elif args.overwrite:
            log.info(
                "torchrun restarted the job (restart %s): %s holds another run; starting afresh", restart, out
            )
        else:
            why = (
                f"it differs: {'; '.join(diff)}"
                if diff
                else "torchrun's store has no record of an earlier attempt starting it: the first attempt refused "
                "it, or rank 0 moved to another node (then continue with --resume)"
            )
            raise UserError(
                f"torchrun restarted the job, but {out} holds a run this job did not start ({why}); the run is "
                f"left as it is: use --resume {out} to continue it, or --overwrite"
            )
    if args.resume:
        if out and os.path.abspath(out) != os.path.abspath(args.resume):
            raise UserError(f"--resume {args.resume} and --out {out} name different folders")
        out = args.resume
        if not os.path.exists(out):
            raise UserError(f"--resume {out}: no such folder")
        if not os.path.exists(os.path.join(out, CONFIG)):
            raise UserError(f"--resume {out}: no {CONFIG} there (is it a run folder?)")
        cfg, saved = _on_run(args, out)  # the flags given apply on top of the run's config
        if cfg is None:
            raise UserError(f"--resume {out}: the run's recipe is {saved.recipe}, not {args.recipe}")
        diff = _differences(to_dict(cfg), to_dict(saved))
        refused = [d for d in diff if not d.startswith(RESUME_MAY_CHANGE)]
        if refused:
            raise UserError(
                f"--resume {out}: the command differs from the run's config: {'; '.join(refused)}"
            )
        changed = [d for d in diff if not d.startswith(RESUME_QUIET)]
        evaluation = [d for d in changed if d.startswith(("train.eval_", "train.fewshot"))]
        arithmetic = [d for d in changed if d not in evaluation]
        if arithmetic and info.is_main:
            log.info(
                "--resume %s with %s: the continuation is not bitwise an uninterrupted run's where this changes "
                "the arithmetic",
                out,
                "; ".join(arithmetic),
            )
        if evaluation and info.is_main:
            log.info(
                "--resume %s with other evaluations (training unchanged): %s", out, "; ".join(evaluation)
            )
        resume = True
    elif out and info.is_main and os.path.exists(os.path.join(out, CONFIG)) and not args.overwrite:
        raise UserError(f"--out {out} already holds a run: use --resume {out} to continue it, or --overwrite")
    else:
        if out:
            refuse_training_into(out)
        cfg = resolve_config(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    _warn_gpu_recipe_on_cpu(cfg, info.is_main)
    warn_unread(cfg, args.set, info.is_main)
    t0 = time.time()
    summary = train(
        cfg,
        out,
        resume=resume,
        progress=TqdmProgress(not args.no_progress),
        tensorboard=args.tensorboard,
        info=info,
        # once a fresh run's files are written, a torchrun restart may continue it
        on_start=(lambda: D.record_started(out)) if out and not resume else None,
    )
    if not info.is_main:
        return 0
    wall = time.time() - t0
    if args.json:
        print(json.dumps({k: v for k, v in summary.items() if k not in ("confusion",)}, indent=2))
    else:
        where = f"; weights: {os.path.join(out, 'model.safetensors')}" if out else ""
        tta = f", {summary['tta']} TTA" if "tta" in summary else ""
        print(
            f"{cfg.recipe}: {summary['model']} on {summary['dataset']}: test top-1 {summary['test_top1']:.2%} "
            f"[95% interval {summary['test_top1_ci95'][0]:.2%}, {summary['test_top1_ci95'][1]:.2%}], "
            f"top-5 {top5_text(summary['test_top5'], len(summary['per_class']))} ({summary['num_samples']} images, {summary['weights']} weights{tta}) "
            f"after {summary['epochs']:.1f} epochs; training {summary['train_seconds']:.0f} s "
            f"({summary['train_img_s']:.0f} img/s), wall {wall:.0f} s{where}"
        )
        if summary.get("tta_gain"):
            from vitkit.eval.tta import describe_gain

            print(describe_gain(summary["tta"], summary["test_top1_no_tta"], summary["tta_gain"]))
        if "val_top1" in summary:
            print(
                f"val top-1 {summary['val_top1']:.2%} ({summary['val_num_samples']} images of the validation split); "
                f"checkpoints/best chosen on val ({summary['best_val_top1']:.2%}): test top-1 "
                f"{summary['best_test_top1']:.2%}"
            )
    if out and not getattr(args, "no_report", False):
        write_report(out, cfg)
    return 0


def write_report(out: str, cfg: RunConfig) -> None:
    """RUN_DIR/report.html after training; a failure is a warning: the trained run is kept as it is."""
    from vitkit.train import distributed as D

    if not D.from_env().is_main:
        return
    try:
        from vitkit.cli.inspect import report_for_run
        from vitkit.train.loop import resolve_device

        device = resolve_device(cfg.train.device)
        log.info("report: %s", report_for_run(out, device=device))
    except Exception as e:  # the report is a convenience; never lose the run over it
        log.warning(
            "could not write %s/report.html (%s: %s); try `vitkit report %s`", out, type(e).__name__, e, out
        )


def cmd_eval(args: argparse.Namespace) -> int:
    from vitkit.convert.runs import CONVERTED
    from vitkit.data.datasets import load_dataset
    from vitkit.data.transforms import BatchTransform
    from vitkit.eval.evaluate import evaluate
    from vitkit.eval.tta import describe_gain
    from vitkit.train.loop import resolve_device

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    run = load_run(args.run, device)
    data_cfg = run.cfg.data
    if run.cfg.recipe == CONVERTED and not args.dataset:
        raise UserError(
            f"{args.run} holds converted weights ({run.cfg.expected}), no dataset: pass --dataset"
        )
    if args.dataset and args.dataset != data_cfg.dataset:  # another dataset: not in the run's data folder
        data_cfg = another_dataset(data_cfg, args.dataset)
    data_cfg = local_data(data_cfg, args.data_dir, args.run)
    splits = load_dataset(
        data_cfg,
        img_size=run.cfg.model.img_size,
        seed=run.cfg.train.seed,
        in_chans=folder_chans(run.cfg.model.in_chans),
        # an image folder's train/ is not decoded to score test/ (with the run's own normalisation)
        train_by_batch=args.split != "train" and bool(run.data.get("mean")),
    )
    check_dataset_fits(
        run,
        splits,
        data_cfg.dataset,
        args.run,
        own=data_cfg.dataset == run.cfg.data.dataset == "imagefolder",
        split=args.split,
        folder=data_cfg.data_dir,
    )
    transform = BatchTransform(data_cfg, run.cfg.model.img_size, *run_normalisation(run, splits))
    try:
        ds = splits.split(args.split)
    except ValueError as e:
        raise UserError(f"{args.run}: {e}") from None
    model = run.model
    if args.fast:
        example = transform.eval(ds.get_batch(torch.arange(min(len(ds), args.batch_size)))[0].to(device))
        model = _fast(run.model, example)
    tta = run_tta(args, run.cfg)
    res = evaluate(
        model,
        ds,
        transform.eval,
        num_classes=splits.num_classes,
        device=device,
        batch_size=args.batch_size,
        tta=tta,
    )
    if args.json:
        extra = {"weights": run.weights_path, "fast": args.fast, "tta": tta}
        print(json.dumps({k: v for k, v in res.items() if k != "confusion"} | extra))
    else:
        lo, hi = res["top1_ci95"]
        note = f", {tta} TTA" if tta != "none" else ""
        print(
            f"{args.split}: top-1 {res['top1']:.2%} [95% interval {lo:.2%}, {hi:.2%}]  top-5 {top5_text(res['top5'], splits.num_classes)}  "
            f"loss {res['loss']:.4f}  ({res['num_samples']} images, {run.weights_path}{note})"
        )
        if res.get("tta_gain"):
            print(f"  {describe_gain(tta, res['top1_no_tta'], res['tta_gain'])}")
        classes = splits.classes
        for name, acc in zip(classes, res["per_class"]):
            print(f"  {name:<16} {acc:.2%}" if acc is not None else f"  {name:<16} (no samples)")
    return 0


def _fast(model: torch.nn.Module, example: torch.Tensor) -> torch.nn.Module:
    """The fast inference path (int8 ONNX Runtime on CPU, torch.compile on CUDA), logged; int8 is fed one image
    at a time, so that an image's answer (and a score) does not depend on the images batched with it."""
    from vitkit.perf.fast import OneImageAtATime, fast_inference

    fast, info = fast_inference(model, example=example)
    log.info("fast inference path: %s (%s)", info["method"], info["dtype"])
    return OneImageAtATime(fast) if info["dtype"] == "int8" else fast


def cmd_predict(args: argparse.Namespace) -> int:
    from vitkit.cli.common import read_image_files
    from vitkit.data.transforms import normalize, resize
    from vitkit.eval.tta import tta_logits
    from vitkit.train.loop import resolve_device

    device = resolve_device(args.device)
    run = load_run(args.run, device)
    in_chans = run.cfg.model.in_chans
    if run.cfg.model.num_classes < 1:
        raise UserError(
            f"{args.run}: the model has no classification head (num_classes=0: features only); fine-tune or "
            "convert weights with a head to predict classes"
        )
    classes = run.data.get("classes") or [str(i) for i in range(run.cfg.model.num_classes)]
    mean = tuple(run.data.get("mean") or [0.5] * in_chans)
    std = tuple(run.data.get("std") or [0.5] * in_chans)
    images = read_image_files(args.images, run.model, run.data, args.run)  # (B, C, h, w) uint8
    batch = normalize(resize(images.float(), run.cfg.model.img_size), mean, std)  # (B, C, H, W)
    model = _fast(run.model, batch[:64].to(device)) if args.fast else run.model
    with torch.inference_mode():  # in chunks of 64 (memory)
        all_probs = torch.cat(
            [
                tta_logits(model, part.to(device), run_tta(args, run.cfg))[1].softmax(-1).cpu()
                for part in batch.split(64)
            ]
        )
    results = []
    for path, probs in zip(args.images, all_probs):
        k = min(args.topk, len(classes))
        top = probs.topk(k)
        preds = [
            {"class": classes[i], "index": int(i), "prob": float(p)} for p, i in zip(top.values, top.indices)
        ]
        results.append({"image": path, "predictions": preds})
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for r in results:
            best = ", ".join(f"{p['class']} {p['prob']:.1%}" for p in r["predictions"])
            print(f"{r['image']}: {best}")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train a ViT and evaluate it (default: the fashion-mnist recipe)")
    p.add_argument(
        "--recipe", choices=sorted(RECIPES), default=None, help="named recipe (default fashion-mnist)"
    )
    p.add_argument("--dataset", help="fashion-mnist, mnist, cifar10, cifar100, imagefolder, synthetic")
    p.add_argument(
        "--data-dir",
        type=path_arg,
        help="where the dataset is (default: $VITKIT_DATA, Debian's package, download)",
    )
    p.add_argument("--model", help="variant such as ViT-S/4 (keeps the recipe's other model options)")
    p.add_argument(
        "--img-size", type=image_size, help="training resolution, N or HxW (default: the recipe's)"
    )
    p.add_argument("--epochs", type=positive_int, help="default: the recipe's")
    p.add_argument("--steps", type=positive_int, help="optimizer steps (overrides --epochs)")
    p.add_argument("--batch-size", type=positive_int, help="global batch per optimizer step")
    p.add_argument(
        "--micro-batch-size",
        type=nonneg_int,
        help="accumulate gradients over micro-batches of this size (0: none)",
    )
    p.add_argument("--lr", type=float, help="peak learning rate (default: the recipe's)")
    p.add_argument("--seed", type=int, help="default: the recipe's (0)")
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--precision", choices=["fp32", "bf16", "bf16-pure", "auto"], help=PRECISION_HELP)
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--strategy", choices=["auto", "ddp", "fsdp"], help="under torchrun (default: auto = ddp)")
    p.add_argument("--out", type=path_arg, help="run folder for config, metrics, checkpoints and weights")
    p.add_argument(
        "--resume", type=path_arg, metavar="RUN_DIR", help="continue a run from its last valid checkpoint"
    )
    p.add_argument("--overwrite", action="store_true", help="start afresh in an --out that holds a run")
    p.add_argument(
        "--checkpoint-every",
        type=nonneg_int,
        metavar="STEPS",
        help="default: the recipe's (0: once per epoch)",
    )
    p.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="any config key, e.g. model.drop_path_rate=0.1"
    )
    p.add_argument("--tensorboard", action="store_true", help="also log to RUN_DIR/tensorboard")
    p.add_argument("--threads", type=positive_int, help="torch CPU threads")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--no-report", action="store_true", help="do not write RUN_DIR/report.html at the end")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="evaluate a trained run or checkpoint")
    p.add_argument("run", metavar="RUN_DIR|CHECKPOINT")
    p.add_argument("--dataset", help="default: the run's")
    p.add_argument(
        "--data-dir", type=path_arg, help="default: the run's, else $VITKIT_DATA, Debian's package, download"
    )
    p.add_argument(
        "--split",
        choices=["test", "val", "train"],
        default="test",
        help="default: test; val: the validation split (held out of train/ by data.holdout, or an image folder's "
        "val/ beside its test/)",
    )
    p.add_argument("--batch-size", type=positive_int, default=512, help="default: 512")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    p.add_argument("--threads", type=positive_int, help="torch CPU threads")
    p.add_argument(
        "--json", action="store_true", help="print one JSON object (top1, top5, loss, num_samples, ...)"
    )
    p.add_argument("--fast", action="store_true", help="the fast inference path (CPU: int8 ONNX Runtime)")
    add_tta_argument(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("predict", help="classify image files with a trained run or checkpoint")
    p.add_argument("run", metavar="RUN_DIR|CHECKPOINT")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--topk", type=positive_int, default=5, help="classes shown per image (default 5)")
    p.add_argument("--device", default="cpu", help="cpu (default), auto, cuda or cuda:N")
    p.add_argument("--fast", action="store_true", help="the fast inference path (CPU: int8 ONNX Runtime)")
    p.add_argument("--json", action="store_true", help="print the predictions as JSON")
    add_tta_argument(p)
    p.set_defaults(func=cmd_predict)
