"""Counter-based randomness: draws that are pure functions of (keys, sample index), on any device.

Augmentation and dropout draw from here, keyed by (seed, epoch or step, sample index), so a sample is
treated the same whatever batch, micro-batch or process it lands in, and a resumed run replays exactly.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

import torch

_M32 = 0xFFFFFFFF


def _mix_int(x: int) -> int:
    """A 32-bit integer hash (xorshift-multiply), on Python ints."""
    x &= _M32
    x ^= x >> 16
    x = (x * 0x7FEB352D) & _M32
    x ^= x >> 15
    x = (x * 0x6C8E9CF5) & _M32
    return x ^ (x >> 16)


def _mix(x: torch.Tensor) -> torch.Tensor:
    """The same hash on an int64 tensor of 32-bit values (products stay below 2**63)."""
    x = x & _M32
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _M32
    x = x ^ (x >> 15)
    x = (x * 0x6C8E9CF5) & _M32
    return x ^ (x >> 16)


def stream_key(*keys: int) -> int:
    """Fold integers (seed, epoch, ...) into one 32-bit key."""
    h = 0x3C6EF372
    for k in keys:
        h = _mix_int(h ^ _mix_int(int(k) & _M32) ^ (int(k) >> 32))
    return h


def hash_uniform(key: int, idx: torch.Tensor, draw: int) -> torch.Tensor:
    """Uniform [0, 1) float32 per element of `idx`: a pure function of (key, idx, draw)."""
    idx = idx.long()
    x = _mix((idx & _M32) + stream_key(key, draw))
    x = _mix(x ^ _mix((idx >> 32) + 0x632BE5AB))  # indices beyond 2**32 (elements of big batches)
    return (x >> 8).float() * (1.0 / (1 << 24))


# ----------------------------------------------------------------------------- keyed context for dropout

_CONTEXT: contextvars.ContextVar[tuple[int, torch.Tensor] | None] = contextvars.ContextVar(
    "vitkit_keyed_rng", default=None
)


@contextlib.contextmanager
def keyed(key: int, sample_index: torch.Tensor) -> Iterator[None]:
    """Within this block, vitkit's dropout layers draw masks keyed by (key, sample index, layer)."""
    token = _CONTEXT.set((key, sample_index))
    try:
        yield
    finally:
        _CONTEXT.reset(token)


def current() -> tuple[int, torch.Tensor] | None:
    """The active (key, sample index) or None."""
    return _CONTEXT.get()


def keyed_uniform(shape: tuple[int, ...], layer: int, device: torch.device) -> torch.Tensor | None:
    """Uniform [0, 1) of `shape` (B, ...) keyed by the active context and `layer`; None outside a context."""
    ctx = _CONTEXT.get()
    if ctx is None:
        return None
    key, idx = ctx
    idx = idx.to(device)
    if idx.shape[0] != shape[0]:
        raise ValueError(f"keyed randomness: {idx.shape[0]} sample indices for a batch of {shape[0]}")
    per = 1
    for s in shape[1:]:
        per *= s
    elem = idx.long()[:, None] * per + torch.arange(per, device=device)  # (B, per)
    return hash_uniform(stream_key(key, layer), elem.reshape(-1), 0).reshape(shape)
