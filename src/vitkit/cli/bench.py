"""`vitkit bench`: throughput of vitkit beside timm, same config, same weights, same process."""

from __future__ import annotations

import argparse
import dataclasses
import json

import torch

from vitkit.cli.common import image_size, nonneg_int, positive_float, positive_int, size_label
from vitkit.cli.outputs import guard_output_file
from vitkit.config import COMPILE_MODES, COMPILE_SCOPES
from vitkit.models import model_config
from vitkit.recipes import RECIPES


def cmd_bench(args: argparse.Namespace) -> int:
    from vitkit.perf.benchmark import run_benchmark
    from vitkit.train.loop import resolve_device
    from vitkit.train.trainer import resolve_precision

    if args.threads:
        torch.set_num_threads(args.threads)
    # a compile mode or scope asks for compilation, a fast method for the fast path
    args.compile = args.compile or args.compile_mode is not None or args.compile_scope is not None
    args.fast = args.fast or args.fast_method is not None
    if args.profile:  # before the benchmark: a run's or checkpoint's file, or a folder, is refused at once
        guard_output_file(args.profile, args.overwrite, flag="--profile")
    if args.recipe:  # the recipe's model, batch and compile setting; timm as a plain loop beside it
        from vitkit.cli.train import model_overrides
        from vitkit.config import apply_overrides
        from vitkit.recipes import get_recipe

        run = get_recipe(args.recipe)
        cfg = run.model
        size = {  # --model/--img-size/... given: that model in the recipe's setting
            "img_size": args.img_size or cfg.img_size,
            "in_chans": args.in_chans or cfg.in_chans,
            "num_classes": cfg.num_classes if args.num_classes is None else args.num_classes,
        }
        # as `vitkit train --recipe R --model M`: the recipe's options on M's architecture
        if args.model is not None:
            cfg = apply_overrides(run, model_overrides(args.model, size["img_size"])).model
        cfg = dataclasses.replace(cfg, **size)
        # what one forward/backward of the recipe holds: its micro-batch where it accumulates (paper-pretrain's
        # 4096 is 64 at a time), at the recipe's precision on this device (auto: bf16 on CUDA, fp32 on the CPU)
        args.batch_size = args.batch_size or run.train.micro_batch_size or run.train.batch_size
        args.dtype = args.dtype or resolve_precision(run.train.precision, resolve_device(args.device))
        args.compile = args.compile or run.train.compile
        args.compile_mode = args.compile_mode or run.train.compile_mode
        args.compile_scope = args.compile_scope or run.train.compile_scope
        if args.mode == "train":  # the recipe's training path
            args.grad_checkpointing = args.grad_checkpointing or run.train.grad_checkpointing
    else:
        cfg = model_config(
            "ViT-S/16" if args.model is None else args.model,
            img_size=args.img_size or 224,
            num_classes=1000 if args.num_classes is None else args.num_classes,
            in_chans=args.in_chans or 3,
        )
    if args.set:
        from vitkit.config import RunConfig, apply_overrides

        other = [o for o in args.set if not o.strip().startswith("model.")]
        if other:
            raise ValueError(
                f"bench --set {other[0]!r}: only the model's keys (model.*) apply to a benchmark; the batch, "
                "compilation and precision have their own flags"
            )
        cfg = apply_overrides(RunConfig(model=cfg), args.set).model
    args.batch_size = args.batch_size or 32
    args.dtype = args.dtype or "fp32"
    res = run_benchmark(
        cfg,
        batch_size=args.batch_size,
        mode=args.mode,
        dtype=args.dtype,
        compile=args.compile,
        compile_mode=args.compile_mode or "default",
        compile_scope=args.compile_scope or "model",
        grad_checkpointing=args.grad_checkpointing,
        compare=args.compare,
        fast=args.fast,
        device=resolve_device(args.device),
        warmup=args.warmup,
        repeats=args.repeats,
        min_seconds=args.min_seconds,
        peer_plain=bool(args.recipe),
        fast_method=args.fast_method or "auto",
        profile=args.profile,
        optim=run.optim if args.recipe else None,  # the recipe's optimizer, decay groups and clipping
    )
    if args.json:
        print(json.dumps(res))
        return 0
    what = f"{res['model']} {size_label(tuple(res['img_size']))}px batch {res['batch_size']} {res['mode']} {res['dtype']}"
    compile_flag = (
        "compile" if res.get("compile_mode") in (None, "default") else f"compile {res['compile_mode']}"
    ) + (" (blocks)" if res.get("compile_scope") == "blocks" else "")
    fast_dtype = res.get("fast_path", {}).get("dtype")
    if args.fast and args.compile:  # the fast path replaces vitkit's compilation; only timm is compiled
        compile_flag = f"timm {compile_flag}" if args.compare and not args.recipe else ""
    fast_flag = f"fast path in {fast_dtype}" if args.fast else ""
    on = (
        (compile_flag, args.compile),
        (fast_flag, args.fast),
        ("grad checkpointing", args.grad_checkpointing),
    )
    flags = ", ".join(f for f, wanted in on if wanted and f) or "eager"
    if res.get("timm_dtype") and res["timm_dtype"] != res["dtype"]:
        flags += f"; timm in {res['timm_dtype']} autocast (AMP)"
    if args.recipe:
        flags += f"; recipe {args.recipe}"
        if args.mode == "train":
            every = run.train.batch_size
            note = "" if every == res["batch_size"] else f" (the recipe steps once per {every} images)"
            flags += f": its optimizer, a step per batch{note}"
        flags += "; timm as a plain eager loop" if res["timm_img_s"] is not None else ""
    print(f"{what} ({flags}) on {res['device_name']}, {res['threads']} threads, torch {res['torch']}")
    print(f"{'':8} {'img/s median':>13} {'min':>9} {'max':>9} {'GFLOP/s':>9} {'MFU':>6}")
    for name in ("vitkit", "timm"):
        if res.get(f"{name}_img_s") is None:
            continue
        mfu = res.get(f"{name}_mfu")
        print(
            f"{name:8} {res[f'{name}_img_s']:>13.2f} {res[f'{name}_img_s_min']:>9.2f} "
            f"{res[f'{name}_img_s_max']:>9.2f} {res[f'{name}_achieved_gflop_s']:>9.1f} "
            f"{f'{mfu:.1%}' if mfu else '-':>6}"
        )
    if res["ratio"]:
        print(f"ratio vitkit/timm: {res['ratio']:.3f}")
    labels = {
        "max_logit_diff_vs_timm": "max logit diff vs timm (both eager fp32)",
        "max_logit_diff_fast_vs_eager": f"max logit diff fast ({fast_dtype}) vs eager fp32",
    }
    for key, label in labels.items():
        if key in res:
            print(f"{label}: {res[key]:.2e}")
    if "fast_path" in res:
        fp = res["fast_path"]
        print(
            f"fast path: {fp['method']} in {fp['dtype']}"
            + (f", {fp['threads']} threads" if "threads" in fp else "")
        )
        if fast_dtype == "int8":
            print(
                "int8's accuracy cost on a trained model: python bench/fast_accuracy.py RUN (random weights here)"
            )
    ran = res["vitkit_executed_gflops_per_image"]
    executed = (
        ""
        if ran == res["gflops_per_image"]
        else (
            f" (the formula's, which GFLOP/s and MFU count; vitkit runs {ran / res['gflops_per_image']:.0%} of it: its "
            "last block for the class token only)"
        )
    )
    print(f"{res['gflops_per_image']:.2f} GFLOP per image ({res['mode']}){executed}")
    memory = f"peak memory {res['peak_memory_mb']:.0f} MiB: {res['peak_memory']}"
    if res.get("timm_peak_memory_mb") is not None:
        memory += f"; timm's step {res['timm_peak_memory_mb']:.0f} MiB"
    print(memory)
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="throughput of vitkit (and timm with --compare timm)")
    p.add_argument("--model", help="default ViT-S/16 (or the recipe's)")
    p.add_argument("--img-size", type=image_size, help="N or HxW; default 224 (or the recipe's)")
    p.add_argument("--in-chans", type=positive_int, help="default 3 (or the recipe's)")
    p.add_argument("--num-classes", type=nonneg_int, help="default 1000 (or the recipe's)")
    p.add_argument(
        "--batch-size",
        type=positive_int,
        default=None,
        help="default 32 (or the recipe's micro-batch, else batch)",
    )
    p.add_argument(
        "--recipe",
        choices=sorted(RECIPES),
        help="a recipe's model, batch and training path; timm as a plain eager loop",
    )
    p.add_argument(
        "--set",
        action="append",
        metavar="model.KEY=VALUE",
        help="a model option, e.g. model.sasa_stem=attention or model.pool=gap (repeatable)",
    )
    p.add_argument("--mode", choices=["infer", "train"], default="infer")
    p.add_argument(
        "--dtype",
        choices=["fp32", "bf16", "bf16-pure"],
        help="default fp32 (or the recipe's precision); bf16: autocast; bf16-pure: vitkit in bf16 with fp32 master "
        "weights (timm keeps autocast)",
    )
    p.add_argument("--compile", action="store_true", help="torch.compile both models")
    p.add_argument(
        "--compile-mode",
        choices=COMPILE_MODES,
        help="compile with this torch.compile mode (with --compile: the recipe's, else default); "
        "reduce-overhead: CUDA graphs",
    )
    p.add_argument(
        "--compile-scope",
        choices=COMPILE_SCOPES,
        help="what to compile (with --compile: the recipe's, else model); blocks: each transformer block alone",
    )
    p.add_argument(
        "--grad-checkpointing",
        action="store_true",
        help="--mode train: recompute each transformer block's activations in backward (both models)",
    )
    p.add_argument("--fast", action="store_true", help="vitkit's fast inference path")
    p.add_argument(
        "--fast-method",
        choices=["auto", "compile", "onnx", "onnx-int8"],
        help="the fast path's method (implies --fast; default auto: onnx-int8 on CPU, onnx for a CNN, compile on "
        "CUDA)",
    )
    p.add_argument("--compare", choices=["timm"], help="time timm's model with the same weights alternately")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=positive_int)
    p.add_argument("--warmup", type=nonneg_int, default=2)
    p.add_argument("--repeats", type=positive_int, default=5)
    p.add_argument("--min-seconds", type=positive_float, default=1.0, help="shortest timed measurement")
    p.add_argument("--profile", metavar="FILE", help="write torch.profiler's table of vitkit's step to FILE")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --profile FILE")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_bench)
