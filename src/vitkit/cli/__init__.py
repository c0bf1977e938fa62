"""Command-line interface: thin argparse subcommands over the library."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys

from vitkit.cli import bench, convert, fewshot, finetune, inspect, models, train
from vitkit.cli.common import UserError

__all__ = ["UserError", "build_parser", "main"]

# a missing module -> what to install: vitkit's extras where one holds it
PIP_NAMES = {
    "PIL": "pillow",
    "matplotlib": "'vitkit[plots]'",
    "onnx": "'vitkit[export]'",
    "onnxscript": "'vitkit[export]'",
    "onnxruntime": "'vitkit[export]'",
    "huggingface_hub": "'vitkit[hub]'",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vitkit", description="Vision Transformers for image classification."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (models, train, fewshot, inspect, finetune, convert, bench):
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `vitkit` command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s", stream=sys.stderr
    )
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt as e:  # Ctrl-C; or training stopped by SIGINT/SIGTERM after a checkpoint
        signum = getattr(e, "signum", signal.SIGINT)
        print(f"vitkit {args.command}: interrupted ({signal.Signals(signum).name})", file=sys.stderr)
        return 128 + signum
    except ModuleNotFoundError as e:  # an optional dependency (timm, onnxruntime, matplotlib, ...)
        top = (e.name or "").split(".")[0]
        if not top or top == "vitkit":
            raise  # a broken install, not a missing extra
        package = PIP_NAMES.get(top, top)
        print(f"vitkit {args.command}: error: this needs {top}: pip install {package}", file=sys.stderr)
        return 2
    except (UserError, ValueError, KeyError, OSError) as e:  # OSError: missing, unwritable, full disk ...
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        rank = (
            f" (rank {os.environ['RANK']})" if int(os.environ.get("WORLD_SIZE", "1")) > 1 else ""
        )  # torchrun
        print(f"vitkit {args.command}: error{rank}: {msg}", file=sys.stderr, flush=True)
        return 2
