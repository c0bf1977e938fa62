"""Reader for the IDX format of MNIST and Fashion-MNIST (raw or gzip), with validation."""

from __future__ import annotations

import gzip
import os
import struct
import zlib

import numpy as np

# IDX type codes -> numpy big-endian dtypes
_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _read_bytes(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            head = f.read(2)
            f.seek(0)
            if head == b"\x1f\x8b":
                try:
                    return gzip.GzipFile(fileobj=f).read()
                except (OSError, EOFError, zlib.error) as e:
                    raise ValueError(f"{path}: corrupt gzip stream ({e})") from None
            return f.read()
    except OSError as e:
        raise FileNotFoundError(f"cannot read {path}: {e.strerror}") from None


def read_idx(path: str, expect_ndim: int | None = None) -> np.ndarray:
    """Read an IDX file (optionally gzip-compressed); check magic number, dims and payload size."""
    data = _read_bytes(path)
    name = os.path.basename(path)
    if len(data) < 4:
        raise ValueError(f"{path}: too short for an IDX header ({len(data)} bytes)")
    zero, code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or code not in _DTYPES:
        raise ValueError(f"{path}: bad IDX magic number {data[:4].hex()} (expected 0000 08 01/03 for {name})")
    if expect_ndim is not None and ndim != expect_ndim:
        raise ValueError(f"{path}: IDX file has {ndim} dimensions, expected {expect_ndim}")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path}: truncated IDX header")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    dtype = np.dtype(_DTYPES[code])
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    payload = len(data) - header
    if payload != expected:
        raise ValueError(
            f"{path}: IDX payload is {payload} bytes but its header {list(dims)} says {expected} (truncated or corrupt)"
        )
    arr = np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)
    return arr.astype(dtype.newbyteorder("="), copy=True)


def read_idx_pair(images_path: str, labels_path: str, num_classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, H, W) uint8 and labels (N,) int64 of one split, checked against each other."""
    images = read_idx(images_path, expect_ndim=3)
    labels = read_idx(labels_path, expect_ndim=1)
    if images.dtype != np.uint8:
        raise ValueError(f"{images_path}: expected unsigned byte pixels, got {images.dtype}")
    if len(images) != len(labels):
        raise ValueError(f"{images_path} has {len(images)} images but {labels_path} has {len(labels)} labels")
    if not np.issubdtype(labels.dtype, np.integer):  # floats would be truncated to other classes
        raise ValueError(f"{labels_path}: labels must be integers, the file holds {labels.dtype}")
    if 0 in images.shape[1:]:
        raise ValueError(f"{images_path}: images of {images.shape[1]}x{images.shape[2]} pixels")
    labels = labels.astype(np.int64)
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"{labels_path}: labels must lie in [0, {num_classes}), found {labels.min()}..{labels.max()}"
        )
    return images, labels


def write_idx(path: str, arr: np.ndarray) -> None:
    """Write `arr` as an IDX file (gzip when the path ends in .gz); used by tests and tools."""
    codes = {v: k for k, v in _DTYPES.items()}
    be = arr.dtype.newbyteorder(">").str.replace("|", ">")  # one-byte types: |u1 / |i1
    code = codes.get(be)
    if code is None:
        raise ValueError(f"cannot write dtype {arr.dtype} as IDX")
    header = struct.pack(">HBB", 0, code, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    payload = header + arr.astype(be).tobytes()
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(payload)
