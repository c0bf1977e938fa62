"""Atomic file writes: a reader sees the old file or the new one, never half of one (temp file, fsync, rename)."""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from typing import Any


def fsync_dir(path: str) -> None:
    """Flush a folder's entries (a rename inside it) to disk, where the platform allows."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    """The process's file-creation mask (read by setting it and putting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def plain_file_mode() -> int:
    """The mode a plainly created file gets (0666 less the umask): temp files are made 0600, renamed files keep it."""
    return 0o666 & ~_umask()


def plain_dir_mode() -> int:
    """The mode a plainly created folder gets (0777 less the umask): mkdtemp makes them 0700."""
    return 0o777 & ~_umask()


@contextlib.contextmanager
def write_errors_as_oserror(path: str) -> Iterator[None]:
    """Turn a writer's own failure (torch.save's RuntimeError, safetensors' SafetensorError) into an OSError that
    names `path` and the space left there, which the CLI reports in one line (a full disk, a lost mount)."""
    try:
        yield
    except OSError:
        raise
    except Exception as e:
        if type(e).__name__ not in ("RuntimeError", "SafetensorError"):
            raise
        where = os.path.dirname(os.path.abspath(path))
        while not os.path.exists(where) and os.path.dirname(where) != where:  # a folder not yet in place
            where = os.path.dirname(where)
        try:
            free = shutil.disk_usage(where).free
            space = f" ({free / 2**20:.1f} MiB free there)"
        except OSError:
            space = ""
        raise OSError(f"cannot write {path}{space}: {e}") from e


def refuse_folder_in_way(path: str) -> None:
    """An IsADirectoryError naming `path` where a folder stands in the way of writing that file."""
    if os.path.isdir(path):
        raise IsADirectoryError(errno.EISDIR, "a folder is in the way of the file to write", path)


def atomic_write(path: str, write: Callable[[str], None]) -> None:
    """Have `write(tmp)` fill a temp file beside `path`, fsync it, rename it over `path`: old or new, never half."""
    folder = os.path.dirname(os.path.abspath(path))
    refuse_folder_in_way(path)  # else the rename's error would name the temp file
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.basename(path))
    os.close(fd)
    try:
        with write_errors_as_oserror(path):
            write(tmp)
        # mkstemp makes it 0600 and some writers (safetensors) recreate it so: a plainly written file would
        # follow the umask
        os.chmod(tmp, plain_file_mode())
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(folder)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Write bytes atomically (see atomic_write)."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)

    atomic_write(path, write)


def json_safe(obj: Any) -> Any:
    """NaN/inf become null, tuples lists."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def json_bytes(obj: Any) -> bytes:
    """Indented JSON as written to a file (NaN/inf as null)."""
    return (json.dumps(json_safe(obj), indent=2) + "\n").encode()


def write_json(path: str, obj: Any) -> None:
    """Atomically write indented JSON."""
    atomic_write_bytes(path, json_bytes(obj))
