"""Atomic checkpoints: safetensors weights + a weights-only torch state file + a manifest written last.

A checkpoint is a folder `checkpoints/step-00001234/` that appears only complete: its files are written into a
temporary folder, fsynced, a manifest with every file's size and SHA-256 is written last, and the folder is
renamed into place. Loading verifies the manifest and falls back to the previous checkpoint when the newest is
truncated or corrupt.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import shutil
import tempfile
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from vitkit.atomic import atomic_write, fsync_dir, plain_dir_mode, plain_file_mode, write_errors_as_oserror

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
PREFIX = "step-"


class CheckpointError(ValueError):
    """A checkpoint or weights file is missing, truncated or not what it claims to be."""


def file_sha256(path: str) -> str:
    """SHA-256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _plain(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous CPU copies that safetensors can write (no shared storage)."""
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}


def save_weights(path: str, state: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Atomically write a state_dict as safetensors."""
    plain = _plain(state)
    atomic_write(path, lambda tmp: save_file(plain, tmp, metadata=metadata))


def load_weights(path: str, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Read a safetensors file; a malformed file raises CheckpointError naming it."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights file {path} does not exist")
    try:
        return load_file(path, device=str(device))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path} is not a valid safetensors file: {e}") from None


def restore_set_aside(root: str) -> None:
    """Put back a checkpoint that save_checkpoint set aside to replace it (checkpoints/best, a step saved twice)
    when the process died before the new one took its place; then remove what interrupted saves left."""
    for trash in glob.glob(os.path.join(root, ".old-*")):
        for name in os.listdir(trash) if os.path.isdir(trash) else []:
            if name != "x" and not os.path.exists(os.path.join(root, name)):
                os.replace(os.path.join(trash, name), os.path.join(root, name))
                log.warning(
                    "%s: put back; the save that was replacing it did not finish", os.path.join(root, name)
                )
        shutil.rmtree(trash, ignore_errors=True)
    for tmp in glob.glob(os.path.join(root, ".tmp-*")):
        shutil.rmtree(tmp, ignore_errors=True)


def save_checkpoint(
    root: str,
    step: int,
    weights: dict[str, dict[str, torch.Tensor]],
    state: dict[str, Any],
    keep: int = 2,
    name: str | None = None,
) -> str:
    """Write `root/step-XXXXXXXX/` atomically: `<key>.safetensors` for each weights dict, `state.pt`, manifest."""
    os.makedirs(root, exist_ok=True)
    final = os.path.join(root, name or f"{PREFIX}{step:08d}")
    tmp = tempfile.mkdtemp(dir=root, prefix=".tmp-")
    try:
        files = {}
        for key, sd in weights.items():
            path = os.path.join(tmp, f"{key}.safetensors")
            plain = _plain(sd)
            with write_errors_as_oserror(os.path.join(final, f"{key}.safetensors")):
                save_file(plain, path, metadata={"format": "vitkit"})  # read as the run's model
            files[f"{key}.safetensors"] = path
        with write_errors_as_oserror(os.path.join(final, "state.pt")):
            torch.save(state, os.path.join(tmp, "state.pt"))
        files["state.pt"] = os.path.join(tmp, "state.pt")
        manifest = {"step": step, "files": {}}
        # readable as a plainly written folder and files are (mkdtemp makes 0700, safetensors 0600)
        os.chmod(tmp, plain_dir_mode())
        for fname, path in files.items():
            os.chmod(path, plain_file_mode())
            with open(path, "rb+") as f:
                os.fsync(f.fileno())
            manifest["files"][fname] = {"bytes": os.path.getsize(path), "sha256": file_sha256(path)}
        with open(os.path.join(tmp, MANIFEST), "w") as f:
            json.dump(manifest, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        fsync_dir(tmp)
        if os.path.exists(final):  # set aside under its name: restore_set_aside puts it back if we die here
            trash = tempfile.mkdtemp(dir=root, prefix=".old-")
            os.replace(final, os.path.join(trash, os.path.basename(final)))
            os.replace(tmp, final)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, final)
        fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if name is None:
        for old in list_checkpoints(root)[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(root: str) -> list[str]:
    """Step checkpoint folders under root, oldest first."""
    if not os.path.isdir(root):
        return []
    names = sorted(n for n in os.listdir(root) if n.startswith(PREFIX) and n[len(PREFIX) :].isdigit())
    return [os.path.join(root, n) for n in names]


def verify_checkpoint(path: str) -> dict:
    """The manifest of a complete, uncorrupted checkpoint; CheckpointError says what is wrong."""
    mpath = os.path.join(path, MANIFEST)
    try:
        with open(mpath, encoding="utf-8") as f:
            manifest = json.load(f)
    except (OSError, ValueError) as e:  # ValueError: JSONDecodeError, UnicodeDecodeError
        raise CheckpointError(f"{path}: missing or unreadable {MANIFEST} ({e})") from None
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if (
        not isinstance(files, dict)
        or "state.pt" not in files
        or not any(n.endswith(".safetensors") for n in files)
    ):
        raise CheckpointError(
            f"{mpath}: expected {{'files': {{name: {{'bytes': N, 'sha256': HEX}}}}}} listing state.pt and the "
            f"weights, got {json.dumps(manifest)[:120]}"
        )
    for fname, meta in files.items():
        if (
            not isinstance(meta, dict)
            or not isinstance(meta.get("bytes"), int)
            or isinstance(meta.get("bytes"), bool)
            or not isinstance(meta.get("sha256"), str)
            or os.path.basename(fname) != fname
        ):
            raise CheckpointError(f"{mpath}: the entry of {fname!r} needs a file name, 'bytes' and 'sha256'")
        fpath = os.path.join(path, fname)
        if not os.path.isfile(fpath):
            raise CheckpointError(f"{path}: {fname} is missing")
        size = os.path.getsize(fpath)
        if size != meta["bytes"]:
            raise CheckpointError(f"{fpath}: {size} bytes, the manifest says {meta['bytes']} (truncated)")
        if file_sha256(fpath) != meta["sha256"]:
            raise CheckpointError(f"{fpath}: SHA-256 differs from the manifest (corrupt)")
    return manifest


def load_checkpoint(path: str, device: str | torch.device = "cpu") -> tuple[dict[str, dict], dict[str, Any]]:
    """Verified weights dicts (by key) and the state of one checkpoint folder."""
    manifest = verify_checkpoint(path)
    weights = {}
    for fname in manifest["files"]:
        if fname.endswith(".safetensors"):
            weights[fname[: -len(".safetensors")]] = load_weights(os.path.join(path, fname), device)
    try:
        state = torch.load(os.path.join(path, "state.pt"), map_location=device, weights_only=True)
    except Exception as e:  # torch's text goes on to suggest weights_only=False: only its reason is kept
        text = str(e)
        reason = (
            text.split("WeightsUnpickler error:", 1)[-1].strip().splitlines()[0] if text else type(e).__name__
        )
        raise CheckpointError(
            f"{path}/state.pt cannot be loaded safely ({reason}); vitkit loads tensors and plain data only"
        ) from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}/state.pt: expected a dict, got {type(state).__name__}")
    return weights, state


# what a training checkpoint's state.pt holds (Trainer.state), with its type
STATE_KEYS = {
    "step": int,
    "optimizer": dict,
    "rng": dict,
    "elapsed": float,
    "best": float,
    "images_seen": int,
    "acc": dict,
}


def check_training_state(state: dict, where: str) -> None:
    """A training checkpoint's state (Trainer.state) has its keys, of their types: else the key at fault is named."""
    for key, kind in STATE_KEYS.items():
        value = state.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else kind):
            raise CheckpointError(f"{where}: {key!r} must be a {kind.__name__}, got {value!r:.60}")


def latest_valid(root: str, say: bool = True) -> str | None:
    """The newest checkpoint that verifies; corrupt newer ones are skipped, and reported where `say` (one rank of
    a job says it for all)."""
    for path in reversed(list_checkpoints(root)):
        try:
            verify_checkpoint(path)
            return path
        except CheckpointError as e:
            if say:
                log.warning("skipping checkpoint: %s", e)
    return None
