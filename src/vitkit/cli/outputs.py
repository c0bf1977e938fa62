"""Where commands may write: never over a run's own files or a training checkpoint, nor a run into another run."""

from __future__ import annotations

import os

from vitkit.cli.common import UserError


def out_holds_source(out: str, source: str) -> bool:
    """Whether writing a run into `out` would replace `source` (the folder itself, or one of a run's outputs in
    it, which a fresh run there clears before the source is read)."""
    from vitkit.train.runfiles import RUN_OUTPUTS

    if not os.path.exists(os.path.expanduser(source)):
        return False
    out, src = os.path.realpath(out), os.path.realpath(os.path.expanduser(source))
    inside = os.path.relpath(src, out).split(os.sep)[0] if os.path.commonpath([out, src]) == out else None
    return inside in (".", *RUN_OUTPUTS)


def owned_by_a_run(path: str) -> str | None:
    """Why a command other than training must not write `path` (a run folder's own file, or any file of a training
    checkpoint's folder), or None."""
    from vitkit.train.checkpoint import MANIFEST
    from vitkit.train.runfiles import CONFIG, DATA, RUN_OUTPUTS

    folder, name = os.path.split(os.path.abspath(os.path.expanduser(path)))
    if os.path.isfile(os.path.join(folder, MANIFEST)):
        return f"{folder} is a training checkpoint"
    if name in (CONFIG, DATA, *RUN_OUTPUTS) and os.path.isfile(os.path.join(folder, CONFIG)):
        return f"{name} is one of a run folder's own files ({folder})"
    return None


def refuse_training_into(out: str) -> None:
    """A new run's --out: never a file, a training checkpoint or a folder inside another run (whose own files and
    checkpoints it would mix with, or overwrite)."""
    from vitkit.train.checkpoint import MANIFEST
    from vitkit.train.runfiles import holds_run

    if os.path.isfile(out):
        raise UserError(f"--out {out} is a file; a run is written into a folder")
    if os.path.isfile(os.path.join(out, MANIFEST)):
        raise UserError(f"--out {out} is a training checkpoint; train into a folder of its own")
    parent = os.path.dirname(os.path.abspath(out))
    while parent != os.path.dirname(parent):
        if holds_run(parent):
            raise UserError(f"--out {out} lies inside the run {parent}; train into a folder of its own")
        parent = os.path.dirname(parent)


def guard_output_folder(folder: str, writes: tuple[str, ...], overwrite: bool, flag: str = "--out") -> None:
    """Refuse writing the files `writes` into `folder` when it is a run folder or a training checkpoint (never),
    or when one of them is there already and not `overwrite`."""
    from vitkit.train.checkpoint import MANIFEST
    from vitkit.train.runfiles import holds_run

    if os.path.isfile(os.path.join(folder, MANIFEST)):
        raise UserError(f"{flag} {folder} is a training checkpoint; write into another folder")
    if holds_run(folder):
        raise UserError(f"{flag} {folder} is a vitkit run folder; write into another folder")
    there = [w for w in writes if os.path.lexists(os.path.join(folder, w))]
    if there and not overwrite:
        raise UserError(f"{flag} {folder} already holds {', '.join(there)}; pass --overwrite to replace them")


def guard_output_file(path: str, overwrite: bool, own: str | None = None, flag: str = "--out") -> None:
    """Refuse writing the file `path` when a run or a checkpoint owns it (unless it is `own`, the command's own
    default output), when it is a folder, or when it exists and not `overwrite`."""
    if own is not None and os.path.abspath(path) == os.path.abspath(own):
        return
    why = owned_by_a_run(path)
    if why:
        raise UserError(f"{flag} {path}: {why}; write to another name")
    if os.path.isdir(path):
        raise UserError(f"{flag} {path} is a folder; give a file name")
    if os.path.lexists(path) and not overwrite:
        raise UserError(f"{flag} {path} already exists; pass --overwrite to replace it")
