"""`vitkit inspect RUN_DIR|SOURCE` and `vitkit report RUN_DIR`: the paper's four analyses and the HTML report."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os

import torch

from vitkit.cli.common import UserError, fraction_below_one, path_arg, positive_int
from vitkit.cli.outputs import guard_output_file, guard_output_folder
from vitkit.cli.subjects import (
    Inputs,
    Subject,
    default_output,
    file_inputs,
    is_run_path,
    load_subject,
    sample_inputs,
    weights_label,
)
from vitkit.eval.metrics import top5_text
from vitkit.train.runfiles import is_model_config

log = logging.getLogger("vitkit")


def require_matplotlib() -> None:
    """The figures need matplotlib (an optional dependency): say how to get it."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UserError(
            "the figures need matplotlib: pip install matplotlib (vitkit's [plots] extra)"
        ) from None


def run_analysis(subject: Subject, inputs: Inputs, args: argparse.Namespace):
    """Normalise the uint8 images as the model expects and run the four analyses."""
    from vitkit.data.transforms import normalize
    from vitkit.inspect import analyse

    x = normalize(inputs.images.float(), subject.mean, subject.std)
    analysis = analyse(
        subject.model,
        x,
        k=args.k or 28,  # filter_pca caps it at the components there are
        head_fusion=args.head_fusion,
        discard_ratio=args.discard_ratio,
        batch_size=args.batch_size,
    )
    have = len(analysis.pca)
    if args.k is not None and args.k > have:  # the default (28, the paper's figure) is capped quietly
        log.warning(
            "--k %d: the patch-embedding filters have %d principal components (their rank)", args.k, have
        )
    return analysis


def build_report(subject: Subject, analysis, inputs: Inputs, pngs: dict):
    """The Report of a run (curves, confusion, predictions, the four figures) or of a bare model."""
    from vitkit.inspect.report import Report, inspection_sections, run_sections

    cfg = subject.model.cfg
    if cfg.arch != "vit":
        kind = {
            "bit": f"BiT ResNet-v2, width x{cfg.width_factor}",
            "resnet": "ResNet (batch norm)",
            "sasa": f"ResNet with stand-alone local self-attention ({cfg.num_heads} heads, "
            f"{cfg.sasa_window}x{cfg.sasa_window} windows, {cfg.sasa_stem} stem)",
            "aa": f"ResNet with attention-augmented convs ({cfg.num_heads} heads, dk {cfg.aa_key_ratio:g}, "
            f"dv {cfg.aa_value_ratio:g} x channels)",
        }[cfg.arch]
        facts = [
            ("model", subject.name),
            ("size", f"{cfg.img_size[0]}x{cfg.img_size[1]}, {kind}, stage depths {','.join(map(str, cfg.backbone))}"),
        ]  # fmt: skip
    else:
        facts = [
            ("model", subject.name),
            ("size", f"{cfg.img_size[0]}x{cfg.img_size[1]}, {cfg.token_stride} px per token, grid "
                     f"{cfg.grid_size[0]}x{cfg.grid_size[1]}, width {cfg.embed_dim}, depth {cfg.depth}, "
                     f"heads {cfg.num_heads}"),
            ("pool / position embedding", f"{cfg.pool} / {cfg.posemb}"),
            ("images analysed", inputs.description),
        ]  # fmt: skip
    sections = []
    if subject.run_dir:
        from vitkit.train.runfiles import read_metrics, read_summary

        summary = read_summary(subject.run_dir)
        cm = (summary or {}).get("confusion")
        if cm is not None and len(cm) != len(subject.classes):
            raise ValueError(
                f"{os.path.join(subject.run_dir, 'summary.json')}: a {len(cm)}x{len(cm)} confusion matrix for "
                f"{len(subject.classes)} classes"
            )
        if summary:
            final = "" if not subject.label else " (of the run's final weights)"
            facts[1:1] = [
                (f"test top-1 / top-5{final}", f"{summary['test_top1']:.2%} / {top5_text(summary['test_top5'], len(subject.classes))}"
                 + (f" ({summary['tta']} TTA; top-1 {summary['test_top1_no_tta']:.2%} without)"
                    if "tta" in summary else "")),
                *([("val top-1 (validation split; best chosen on it)", f"{summary['val_top1']:.2%}")]
                  if "val_top1" in summary else []),
                ("training", f"{summary['steps']} steps, {summary['epochs']:.1f} epochs, "
                             f"{summary['train_seconds']:.0f} s on {summary.get('device', '?')}"),
            ]  # fmt: skip
        facts.insert(0, ("run", subject.run_dir))
        if subject.weights:
            facts.insert(1, ("weights analysed", subject.weights))
        shown = None if inputs.noise else inputs.images
        sections += run_sections(
            read_metrics(subject.run_dir), summary, subject.classes, analysis, shown, inputs.labels
        )
    sections += inspection_sections(pngs)
    return Report(f"vitkit: {subject.name}", facts, sections)


def _figure_pngs(analysis, inputs: Inputs, show: int) -> dict[str, bytes]:
    """The four figures as PNG bytes, keyed by file name; the rollout on the first `show` images."""
    from vitkit.inspect.plots import figure_png
    from vitkit.inspect.report import inspection_figures

    show = min(show, len(inputs.images))
    titles = inputs.titles[:show] if inputs.titles else None
    return {
        name: figure_png(fig)
        for name, fig in inspection_figures(analysis, inputs.images[:show], titles).items()
    }


def inspect_to(subject: Subject, out_dir: str, inputs: Inputs, args: argparse.Namespace) -> str:
    """Write the four PNGs, inspect.json and report.html into out_dir; return the report's path."""
    from vitkit.inspect.report import write_inspection

    analysis = run_analysis(subject, inputs, args)
    info = {
        "model": subject.name,
        "config": dataclasses.asdict(subject.model.cfg),
        "images": inputs.description,
        "num_images": len(inputs.images),
        "head_fusion": args.head_fusion,
        "discard_ratio": args.discard_ratio,
    }
    if subject.run_dir:
        info["run"] = subject.run_dir
    if subject.weights:
        info["weights"] = subject.weights
    pngs = _figure_pngs(analysis, inputs, args.show)
    write_inspection(out_dir, analysis, pngs, build_report(subject, analysis, inputs, pngs), info)
    return os.path.join(out_dir, "report.html")


def report_for_run(run_dir: str, out: str | None = None, device: str = "cpu", num_images: int = 32) -> str:
    """Write RUN_DIR/report.html (or `out`): what `vitkit report` and the end of `vitkit train` do."""
    require_matplotlib()
    from vitkit.inspect.report import write_report

    args = argparse.Namespace(k=None, head_fusion="mean", discard_ratio=0.0, batch_size=16, show=8)
    subject = load_subject(run_dir, device)
    path = out or default_output(subject.run_dir or run_dir, subject.label, "report", ".html")
    if subject.model.cfg.arch != "vit":  # a CNN baseline: curves and confusion, no attention to analyse
        empty = Inputs(torch.zeros(0, dtype=torch.uint8), "none (a CNN: no attention to analyse)", noise=True)
        write_report(path, build_report(subject, None, empty, {}))
        return path
    inputs = sample_inputs(subject, num_images)
    analysis = run_analysis(subject, inputs, args)
    pngs = _figure_pngs(analysis, inputs, args.show)
    write_report(path, build_report(subject, analysis, inputs, pngs))
    return path


def _device(name: str) -> torch.device:
    from vitkit.train.loop import resolve_device

    return resolve_device(name)


def cmd_inspect(args: argparse.Namespace) -> int:
    require_matplotlib()
    subject = load_subject(args.source, _device(args.device))
    if subject.model.cfg.arch != "vit":
        raise UserError(
            f"{args.source}: {subject.name} is a ResNet (arch={subject.model.cfg.arch!r}); the four analyses need a "
            "ViT's patch embedding, position embedding and attention. For a run folder, `vitkit report RUN_DIR` "
            "gives its curves and confusion matrix"
        )
    own = default_output(subject.run_dir, subject.label, "inspect") if subject.run_dir else "vitkit-inspect"
    out = args.out or own
    if os.path.exists(out) and not os.path.isdir(out):  # before any work
        raise UserError(f"{'--out ' if args.out else ''}{out} is a file; vitkit inspect writes a folder")
    # its own default folder is rewritten; another is checked
    if os.path.abspath(out) != os.path.abspath(own):
        from vitkit.inspect.report import FIGURES

        guard_output_folder(out, (*FIGURES, "inspect.json", "report.html"), args.overwrite)
    inputs = file_inputs(subject, args.images) if args.images else sample_inputs(subject, args.num_images)
    path = inspect_to(subject, out, inputs, args)
    print(f"wrote {os.path.join(out, '')}: embedding_pca.png posemb_similarity.png attention_distance.png attention_rollout.png "
          f"inspect.json report.html ({path})")  # fmt: skip
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    if not is_run_path(args.run):
        config = os.path.join(args.run, "config.json")
        if os.path.isfile(config):  # say what is wrong with it
            from vitkit.train.runfiles import read_config

            if is_model_config(config):
                raise UserError(
                    f"{args.run} holds a model (timm or transformers weights), not a vitkit run: `vitkit inspect "
                    f"{args.run}` analyses it, `vitkit convert {args.run} --out RUN` makes a run of it"
                )
            read_config(args.run)
        raise UserError(f"{args.run} is not a run folder (config.json + model.safetensors)")
    run_dir, label = weights_label(args.run)
    own = default_output(run_dir or args.run, label, "report", ".html")
    if args.out:  # the run's own report is rewritten; any other file is checked before any work
        guard_output_file(args.out, args.overwrite, own=own)
    if os.path.isdir(args.out or own):  # the default, or --out naming it: before any work too
        raise UserError(
            f"{'--out ' if args.out else ''}{args.out or own} is a folder; vitkit report writes a file"
        )
    path = report_for_run(args.run, args.out, _device(args.device), args.num_images)
    print(f"wrote {path}")
    return 0


def _analysis_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--num-images", type=positive_int, default=32, help="test images averaged over (default 32)"
    )
    p.add_argument("--device", default="cpu", help="cpu (default), auto, cuda or cuda:N")


def add_parser(sub) -> None:
    p = sub.add_parser(
        "inspect",
        help="the paper's four analyses (embedding PCA, posemb similarity, attention distance, rollout)",
    )
    p.add_argument(
        "source", metavar="RUN_DIR|SOURCE", help="a run folder or checkpoint, or pretrained weights"
    )
    p.add_argument("--images", nargs="+", metavar="FILE", help="image files (default: the run's test images)")
    p.add_argument(
        "--out",
        type=path_arg,
        help="output folder (default: RUN_DIR/inspect, or ./vitkit-inspect); never a run folder or checkpoint",
    )
    p.add_argument(
        "--overwrite", action="store_true", help="replace the files of an earlier inspection in --out"
    )
    p.add_argument(
        "--k",
        type=positive_int,
        help="principal components of the embedding filters (default 28; at most their rank, min(D-1, C*P*P))",
    )
    p.add_argument(
        "--head-fusion", choices=["mean", "max", "min"], default="mean", help="rollout head fusion"
    )
    p.add_argument(
        "--discard-ratio",
        type=fraction_below_one,
        default=0.0,
        help="rollout: drop this fraction [0, 1) of each layer's weakest attention weights (never the diagonal)",
    )
    p.add_argument("--show", type=positive_int, default=8, help="images in the rollout figure")
    p.add_argument("--batch-size", type=positive_int, default=16)
    _analysis_flags(p)
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("report", help="write RUN_DIR/report.html: curves, confusion, predictions, inspection")
    p.add_argument("run", metavar="RUN_DIR")
    p.add_argument(
        "--out",
        metavar="FILE",
        help="default: RUN_DIR/report.html; never another of a run's or checkpoint's files",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    _analysis_flags(p)
    p.set_defaults(func=cmd_report)
