"""Counter-based randomness: draws that are pure functions of (keys, sample index), on any device.

Augmentation and dropout draw from here, keyed by (seed, epoch or step, sample index), so a sample is
treated the same whatever batch, micro-batch or process it lands in, and a resumed run replays exactly.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence

import torch

_M32 = 0xFFFFFFFF


def _mix(x: int | torch.Tensor) -> int | torch.Tensor:
    """A 32-bit integer hash (xorshift-multiply) of a Python int or an int64 tensor (products stay < 2**63)."""
    x = x & _M32
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _M32
    x = x ^ (x >> 15)
    x = (x * 0x6C8E9CF5) & _M32
    return x ^ (x >> 16)


def stream_key(*keys: int | torch.Tensor) -> int | torch.Tensor:
    """Fold integers (seed, epoch, ...) into one 32-bit key; a tensor among them gives a 0-dim int64 tensor."""
    h = 0x3C6EF372
    for k in keys:
        k = k if isinstance(k, torch.Tensor) else int(k)
        h = _mix(h ^ _mix(k & _M32) ^ (k >> 32))
    return h


def _uniform(idx: torch.Tensor, key: int | torch.Tensor) -> torch.Tensor:
    """Uniform [0, 1) float32 from int64 indices and a (broadcastable) draw key."""
    x = _mix((idx & _M32) + key)
    x = _mix(x ^ _mix((idx >> 32) + 0x632BE5AB))  # indices beyond 2**32 (elements of big batches)
    return (x >> 8).float() * (1.0 / (1 << 24))


def hash_uniform(key: int | torch.Tensor, idx: torch.Tensor, draw: int) -> torch.Tensor:
    """Uniform [0, 1) float32 per element of `idx`: a pure function of (key, idx, draw)."""
    return _uniform(idx.long(), stream_key(key, draw))


def hash_uniforms(key: int, idx: torch.Tensor, draws: Sequence[int]) -> torch.Tensor:
    """`hash_uniform(key, idx, d)` for every d in `draws` in one pass of kernels: (len(draws), B), bitwise equal."""
    idx = idx.long()
    # the draws' keys are filled on the device: a host-to-device copy would stall a CUDA stream
    keys = torch.stack(
        [torch.full((), stream_key(key, d), dtype=torch.int64, device=idx.device) for d in draws]
    )
    return _uniform(idx[None, :], keys[:, None])  # (len(draws), B)


# ----------------------------------------------------------------------------- keyed context for dropout

# The active (key, the key as a 0-dim tensor, sample index), per process: one thread at a time (checked). A
# plain global rather than a ContextVar: torch.compile traces a global on every torch version (a ContextVar
# read breaks the graph on some). Compiled code reads only the tensors: a Python int would be a constant of
# the graph, compiled anew for every step.
_ACTIVE: tuple[int, torch.Tensor, torch.Tensor] | None = None
_OWNER: int | None = None  # the thread inside keyed()


@contextlib.contextmanager
def keyed(key: int, sample_index: torch.Tensor) -> Iterator[None]:
    """Within this block, vitkit's dropout layers draw masks keyed by (key, sample index, layer)."""
    global _ACTIVE, _OWNER
    me = threading.get_ident()
    if _ACTIVE is not None and me != _OWNER:
        raise RuntimeError(
            "keyed randomness is active in another thread; keyed() serves one thread at a time"
        )
    key_t = torch.full((), key, dtype=torch.int64, device=sample_index.device)  # a fill: no host copy
    outer, _ACTIVE, _OWNER = _ACTIVE, (key, key_t, sample_index), me
    try:
        yield
    finally:
        _ACTIVE = outer
        _OWNER = me if outer is not None else None


def current() -> tuple[int, torch.Tensor, torch.Tensor] | None:
    """The active (key, key as a tensor, sample index) or None."""
    return _ACTIVE


def keyed_uniform(shape: tuple[int, ...], layer: int, device: torch.device) -> torch.Tensor | None:
    """Uniform [0, 1) of `shape` (B, ...) keyed by the active context and `layer`; None outside a context."""
    ctx = _ACTIVE
    if ctx is None:
        return None
    # eager: the key as a Python int (fewer kernels); compiled: as a tensor (one graph for every key)
    key = ctx[1].to(device) if torch.compiler.is_compiling() else ctx[0]
    idx = ctx[2].to(device)
    if idx.shape[0] != shape[0]:
        raise ValueError(f"keyed randomness: {idx.shape[0]} sample indices for a batch of {shape[0]}")
    per = 1
    for s in shape[1:]:
        per *= s
    elem = idx.long()[:, None] * per + torch.arange(per, device=device)  # (B, per)
    return hash_uniform(stream_key(key, layer), elem.reshape(-1), 0).reshape(shape)
