"""`vitkit convert | export`: any supported checkpoint to a vitkit run folder, ONNX or safetensors."""

from __future__ import annotations

import argparse
import json
import os

from vitkit.cli.common import UserError, image_size, path_arg, positive_int, size_label
from vitkit.cli.outputs import guard_output_file, guard_output_folder, out_holds_source


def _load(source: str, img_size: int | tuple[int, int] | None, num_heads: int | None):
    """(model at the asked resolution, checkpoint) for a run folder, file, folder or hub id."""
    from vitkit.convert import model_from_source, read_checkpoint

    ckpt = read_checkpoint(source, num_heads=num_heads, img_size=img_size)
    overrides = {"img_size": img_size} if img_size else {}
    return model_from_source(ckpt, **overrides), ckpt


def cmd_convert(args: argparse.Namespace) -> int:
    from vitkit.convert import save_run_dir
    from vitkit.train.runfiles import clear_run

    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise UserError(
            f"--out {args.out} is a file; convert writes a run folder (config.json, model.safetensors)"
        )
    if out_holds_source(args.out, args.source):
        raise UserError(
            f"--out {args.out} holds the checkpoint converted (SOURCE {args.source}): choose another --out"
        )
    if os.path.exists(os.path.join(args.out, "config.json")) and not args.overwrite:
        raise UserError(f"--out {args.out} already holds a config.json; pass --overwrite to replace it")
    model, ckpt = _load(args.source, args.img_size, args.num_heads)
    clear_run(args.out)  # an earlier run's checkpoints, metrics and report would describe another model
    config = os.path.join(args.out, "config.json")
    if os.path.exists(config):  # written last: absent until the folder is whole
        os.remove(config)
    save_run_dir(args.out, model, ckpt.meta, args.source)
    c = model.cfg
    if args.json:
        print(json.dumps({"source": args.source, "format": ckpt.format, "out": args.out, "model": c.name}))
    else:
        shape = (
            f"stage depths {','.join(map(str, c.backbone))}"
            + (f", width x{c.width_factor}" if c.arch == "bit" else "")
            if c.arch != "vit"
            else f"width {c.embed_dim}, depth {c.depth}, heads {c.num_heads}, pool {c.pool}, eps {c.norm_eps:g}"
        )
        print(
            f"{args.source} ({ckpt.format}) -> {args.out}: {c.name}, {c.img_size[0]}x{c.img_size[1]}, {shape}, "
            f"{c.num_classes} classes"
        )
    return 0


def _default_out(source: str, fmt: str, img_size: int | tuple[int, int] | None) -> str:
    suffix = f"-{size_label(img_size)}" if img_size else ""
    ext = {"onnx": ".onnx", "safetensors": ".safetensors"}.get(fmt, f"-{fmt}")  # timm, hf: a folder
    if os.path.isdir(source) and os.path.exists(os.path.join(source, "config.json")):
        return os.path.join(source, f"model-export{suffix}{ext}")  # beside the run's own model.safetensors
    base = os.path.basename(source.rstrip("/")).split(".")[0] or "model"
    out = f"{base}{suffix}{ext}"
    return f"{base}-vitkit{suffix}{ext}" if _same(out, source) else out  # vit.safetensors -> safetensors


def _same(out: str, source: str) -> bool:
    """Whether `out` is the file or folder `source` (which an export must never replace)."""
    return os.path.exists(out) and os.path.exists(source) and os.path.samefile(out, source)


def _refuse_overwriting(out: str, args: argparse.Namespace) -> None:
    """Export never writes over its source, a run's own files or a training checkpoint's, nor over another file
    unless --overwrite (the default name, the export's own, is replaced)."""
    if _same(out, args.source):
        raise UserError(f"--out {out} is the source being exported; export to another name")
    guard_output_file(out, overwrite=args.overwrite or args.out is None)


# what a timm / hf export writes
PEER_FILES = ("config.json", "model.safetensors", "preprocessor_config.json")


def _export_peer(args: argparse.Namespace, model, ckpt, out: str) -> int:
    """`--format timm|hf`: a folder the peer library loads, checked by loading it with the peer's own code."""
    from vitkit.convert.files import ConversionError
    from vitkit.convert.peers import PeerMissingError, check_peer, save_peer_folder

    if _same(out, args.source):
        raise UserError(f"--out {out} is the source being exported: export into another folder")
    guard_output_folder(out, PEER_FILES, args.overwrite)
    try:
        save_peer_folder(out, args.format, model, ckpt.meta)
    except ConversionError as e:
        raise UserError(str(e)) from None
    peer = {"timm": "timm", "hf": "transformers"}[args.format]
    c = model.cfg
    line = f"{out}: {peer} {c.name} at {c.img_size[0]}x{c.img_size[1]}, {c.num_classes} classes"
    if not args.no_check:
        try:
            worst = check_peer(out, args.format, model)
        except PeerMissingError as e:
            worst, line = None, f"{line}; not checked: {e}"
        if worst is not None:
            line += f"; {peer} vs vitkit max |diff| {worst:.1e} (batch 1 and 3)"
            if worst > 1e-4:
                raise UserError(f"{line}: exceeds 1e-4")
    load = (
        f'timm.create_model("local-dir:{os.path.abspath(out)}", pretrained=True)'
        if args.format == "timm"
        else f'ViTForImageClassification.from_pretrained("{out}")'
    )
    print(f"{line}\nload it with {load}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from vitkit.convert import check_onnx, export_onnx, save_model_file
    from vitkit.convert.export import OnnxLoadError

    folder = args.format in ("timm", "hf")
    ext = "" if folder else os.path.splitext(args.out or "")[1]
    by_name = {".onnx": "onnx", ".safetensors": "safetensors"}.get(ext.lower())
    if ext and by_name is None and not args.format:  # model.pt, model.pth: not what export writes
        raise UserError(
            f"--out {args.out}: export writes ONNX (.onnx) or safetensors (.safetensors), not {ext}; name the file "
            "so, or give --format"
        )
    if args.format and by_name and args.format != by_name:
        raise UserError(
            f"--format {args.format} with --out {args.out}: the name says {by_name}; make them agree"
        )
    args.format = args.format or by_name or "onnx"
    model, ckpt = _load(args.source, args.img_size, args.num_heads)
    out = args.out or _default_out(args.source, args.format, args.img_size)
    if folder:
        if os.path.isfile(out):
            raise UserError(f"--out {out} is a file; --format {args.format} writes a folder")
        return _export_peer(args, model, ckpt, out)
    if os.path.isdir(out):
        raise UserError(
            f"--out {out} is a folder; export writes one file (e.g. {os.path.join(out, 'model.onnx')})"
        )
    _refuse_overwriting(out, args)
    if args.format == "safetensors":
        save_model_file(out, model, ckpt.meta)
        print(
            f"{out}: {model.cfg.name} at {model.cfg.img_size[0]}x{model.cfg.img_size[1]} (config in the metadata)"
        )
        return 0
    export_onnx(model, out, opset=args.opset)
    line = f"{out}: ONNX opset {args.opset}, input images (batch, {model.cfg.in_chans}, {model.cfg.img_size[0]}, {model.cfg.img_size[1]})"
    if not args.no_check:
        try:
            diffs = check_onnx(out, model, (1, 7))
        except OnnxLoadError as e:  # a file onnxruntime cannot run is not left behind
            for f in (out, out + ".data"):  # the weights of a model over 1.5 GB lie beside it
                if os.path.exists(f):
                    os.unlink(f)
            raise UserError(f"{e} (removed it; another --opset may load)") from None
        worst = max(diffs.values())
        line += f"; onnxruntime vs PyTorch max |diff| {worst:.1e} (batch 1 and 7)"
        if worst > 1e-4:
            raise UserError(
                f"{line}: exceeds 1e-4 (the file is kept for inspection; --no-check skips the check)"
            )
    print(line)
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("convert", help="convert any supported checkpoint into a vitkit run folder")
    p.add_argument("source", metavar="SOURCE", help=".npz, .safetensors, .pth/.bin, a folder, or a hub id")
    p.add_argument(
        "--out",
        type=path_arg,
        required=True,
        metavar="DIR",
        help="folder for config.json, data.json, model.safetensors",
    )
    p.add_argument(
        "--img-size", type=image_size, help="resample the position embedding to this resolution (N or HxW)"
    )
    p.add_argument(
        "--num-heads", type=positive_int, help="heads, for fused-qkv files whose shape is not the paper's"
    )
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser(
        "export", help="export a run or checkpoint to ONNX, safetensors, or a timm or transformers folder"
    )
    p.add_argument("source", metavar="RUN_DIR|SOURCE")
    p.add_argument(
        "--format",
        choices=["onnx", "safetensors", "timm", "hf"],
        help="default: by --out's extension, else onnx; timm / hf: a folder that timm.create_model"
        "('local-dir:FOLDER') / transformers' from_pretrained(FOLDER) loads",
    )
    p.add_argument(
        "--img-size",
        type=image_size,
        help="export at this resolution, N or HxW (position embedding resampled)",
    )
    p.add_argument(
        "--out",
        type=path_arg,
        metavar="PATH",
        help="default: RUN_DIR/model-export[-SIZE].onnx (.safetensors, or the folder -timm / -hf) or "
        "./<name>[-SIZE].onnx (...)",
    )
    p.add_argument(
        "--overwrite", action="store_true", help="replace an existing --out file (a timm / hf folder's files)"
    )
    p.add_argument("--opset", type=int, default=18)
    p.add_argument(
        "--num-heads", type=positive_int, help="heads, for fused-qkv files whose shape is not the paper's"
    )
    p.add_argument(
        "--no-check",
        action="store_true",
        help="skip the comparison of the logits with onnxruntime's (timm's, transformers')",
    )
    p.set_defaults(func=cmd_export)
