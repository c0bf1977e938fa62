"""Command-line interface: thin argparse subcommands over the library."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import traceback
from typing import NoReturn

from vitkit import __version__
from vitkit.cli import bench, compare, convert, fewshot, finetune, inspect, models, train
from vitkit.cli.common import UserError

__all__ = ["UserError", "build_parser", "console", "main"]

# a missing module -> what to install: vitkit's extras where one holds it
PIP_NAMES = {
    "PIL": "pillow",
    "matplotlib": "matplotlib (vitkit's [plots] extra)",
    "onnx": "onnx onnxscript onnxruntime (vitkit's [export] extra)",
    "onnxscript": "onnx onnxscript onnxruntime (vitkit's [export] extra)",
    "onnxruntime": "onnx onnxscript onnxruntime (vitkit's [export] extra)",
    "huggingface_hub": "huggingface_hub (vitkit's [hub] extra)",
    "tensorboard": "tensorboard (vitkit's [tensorboard] extra)",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vitkit", description="Vision Transformers for image classification."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"vitkit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (models, train, compare, fewshot, inspect, finetune, convert, bench):
        module.add_parser(sub)
    for p in sub.choices.values():  # -v after the command too (not set there unless given)
        p.add_argument(
            "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="debug logging"
        )
        p.set_defaults(command_parser=p)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `vitkit` command."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # named by the command's own usage, not the top level's
        args.command_parser.error(f"unrecognized arguments: {' '.join(extra)}")
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s", stream=sys.stderr
    )
    if not args.verbose:  # torch.compile on a CPU-only machine: "No CUDA runtime is found" is not ours to fix
        logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
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
        rank = f" (rank {os.environ.get('RANK', '?')})" if _world_size() > 1 else ""  # torchrun
        print(f"vitkit {args.command}: error{rank}: {msg}", file=sys.stderr, flush=True)
        return 2


def _world_size() -> int:
    """The job's process count as torchrun gives it (1 when unset or unreadable)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def console() -> NoReturn:
    """The `vitkit` program: `main()`, then exit with its status; a torchrun worker skips the interpreter's teardown."""
    if _world_size() <= 1:
        raise SystemExit(main())
    try:
        code = main()
    except SystemExit as e:  # argparse's usage errors, --help, --version
        if e.code is not None and not isinstance(e.code, int):
            print(e.code, file=sys.stderr)
        code = e.code if isinstance(e.code, int) else int(e.code is not None)
    except BaseException:  # a failure main() does not turn into a message: its traceback, as Python prints it
        traceback.print_exc()
        code = 1
    # A finished run's gloo worker thread may still be dropping a collective's tensors, which takes the GIL; asked
    # for during the interpreter's shutdown, that ends the thread inside a destructor: std::terminate, SIGABRT, and
    # torchrun fails a run that succeeded. The group cannot be joined first: under FSDP, DTensor's caches keep it
    # alive after destroy_process_group. Everything is written by now; what is buffered is flushed here.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
