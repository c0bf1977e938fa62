"""Safe readers for weight files: safetensors, weights-only torch pickles and pickle-free .npz archives."""

from __future__ import annotations

import json
import os
import pickle
import warnings
import zipfile
import zlib
from typing import Any

import numpy as np
import torch


class ConversionError(ValueError):
    """A checkpoint cannot be read or does not fit the model; the message names the file, key or shape."""


class UnsafeCheckpointError(ConversionError):
    """A file holds Python objects beyond tensors (a pickle that could run code): refused, nothing ran."""


TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")


def read_safetensors(path: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and the string metadata of a .safetensors file; a malformed file raises ConversionError."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            meta = dict(f.metadata() or {})
            return {k: f.get_tensor(k) for k in f.keys()}, meta  # noqa: SIM118 (safe_open has no __iter__)
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise ConversionError(f"{path} is not a valid safetensors file: {e}") from None


def read_torch(path: str) -> Any:
    """A .pth/.bin file read with torch.load(weights_only=True): tensors and plain containers, no code."""
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected pickle protocol")  # refused below if unsafe
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        with open(path, "rb") as f:
            head = f.read(2)
        pickled = len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5  # a pickle's PROTO opcode
        # a global means it may import and call: it could run code
        if pickled or any("global" in line.lower() for line in lines):
            reason = next((line for line in lines if "global" in line.lower()), lines[0])
            raise UnsafeCheckpointError(
                f"{path}: refused to load: the file holds Python objects beyond tensors and plain containers "
                f"(a pickle that could run code); nothing in it was executed. Only weights-only files load; "
                f"convert it to safetensors with code you trust. ({reason})"
            ) from None
        reason = next((line for line in lines if line.startswith("Unsupported")), "not a pickle of tensors")
        raise ConversionError(f"{path} is not a readable PyTorch weights file: {reason}") from None
    except (RuntimeError, OSError, EOFError, zipfile.BadZipFile, ValueError, KeyError, IndexError) as e:
        if isinstance(e, EOFError):
            reason = "it ends early"
        elif isinstance(e, (KeyError, IndexError)):  # torch read garbage as a legacy (non-zip) save
            reason = "neither torch.save's zip format nor a pickle of tensors"
        else:
            reason = f"{type(e).__name__}: {e}"
        raise ConversionError(f"{path} is not a readable PyTorch weights file: {reason}") from None


def read_npz(path: str) -> dict[str, np.ndarray]:
    """All arrays of a .npz archive, read with allow_pickle=False (object arrays are refused)."""
    try:
        with open(path, "rb") as f:
            magic = f.read(6)
    except OSError as e:
        raise ConversionError(f"{path} is not a readable .npz archive: {e.strerror}") from None
    if not magic.startswith((b"PK\x03\x04", b"PK\x05\x06", b"\x93NUMPY")) and magic[:1] != b"\x80":
        # np.load would take anything else for a pickle and name it so (0x80 opens a pickle: refused below)
        raise ConversionError(
            f"{path} is not a readable .npz archive: neither a zip of arrays nor a .npy file"
        )
    if magic.startswith(b"\x93NUMPY"):  # np.load gives a bare array, which has no names to convert
        raise ConversionError(f"{path} is a single .npy array, not an .npz archive of named arrays")
    key = None
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {}
            for key in archive.files:
                arrays[key] = archive[key]
            return arrays
    except ValueError as e:
        if "allow_pickle" in str(e):
            raise UnsafeCheckpointError(
                f"{path}: refused to load: it holds pickled object arrays (which could run code); "
                "official checkpoints hold plain numeric arrays only"
            ) from None
        raise ConversionError(f"{path} is not a readable .npz archive{_member(key)}: {e}") from None
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as e:  # zlib: a damaged compressed member
        raise ConversionError(f"{path} is not a readable .npz archive{_member(key)}: {e}") from None


def _member(key: str | None) -> str:
    return f" (array {key!r})" if key else ""


def read_json_file(path: str) -> dict[str, Any]:
    """A JSON object from a file; errors name the file."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except OSError as e:
        raise ConversionError(f"cannot read {path}: {e.strerror}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConversionError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ConversionError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def find_state_dict(obj: Any, where: str) -> dict[str, torch.Tensor]:
    """The state dict inside a loaded torch file: the top level, or under "state_dict"/"model"/"module"."""
    for _ in range(3):
        if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return dict(obj)
        if not isinstance(obj, dict):
            break
        inner = next(
            (obj[k] for k in ("state_dict", "model", "module") if isinstance(obj.get(k), dict)), None
        )
        if inner is None:
            break
        obj = inner
    kind = type(obj).__name__
    keys = sorted(obj)[:8] if isinstance(obj, dict) else []
    raise ConversionError(
        f"{where}: no state dict of tensors found (a {kind}"
        + (f" with keys {keys}" if keys else "")
        + '); expected {name: tensor} at the top level or under "state_dict" or "model"'
    )


def read_weights_file(path: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors of a .safetensors or torch file (and safetensors metadata), by the file's suffix."""
    if path.endswith(".safetensors"):
        return read_safetensors(path)
    if path.endswith(TORCH_SUFFIXES):
        return find_state_dict(read_torch(path), path), {}
    raise ConversionError(
        f"{path}: unknown weights file type {os.path.splitext(path)[1]!r}; expected .safetensors, .npz, "
        f"or one of {', '.join(TORCH_SUFFIXES)}"
    )
