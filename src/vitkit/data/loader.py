"""Deterministic batch order: a function of (seed, epoch, step), sharded over ranks without overlap."""

from __future__ import annotations

from collections.abc import Iterator
from functools import lru_cache

import torch

from vitkit.data.transforms import stream_key


@lru_cache(maxsize=4)
def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The shuffled order of `n` samples in `epoch` (CPU int64)."""
    g = torch.Generator().manual_seed(stream_key(seed, epoch, 0xDA7A))
    return torch.randperm(n, generator=g)


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Full global batches per epoch (the last partial batch is dropped so every step is alike)."""
    if n < batch_size:
        raise ValueError(f"the training set has {n} samples, fewer than one batch of {batch_size}")
    return n // batch_size


def global_batch(n: int, batch_size: int, seed: int, epoch: int, b: int) -> torch.Tensor:
    """Sample indices of global batch `b` of `epoch`."""
    return epoch_permutation(n, seed, epoch)[b * batch_size : (b + 1) * batch_size]


def rank_share(indices: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    """This rank's contiguous share of a global batch (the batch must divide evenly)."""
    if len(indices) % world:
        raise ValueError(f"batch of {len(indices)} does not split evenly over {world} processes")
    per = len(indices) // world
    return indices[rank * per : (rank + 1) * per]


def micro_batches(indices: torch.Tensor, micro: int) -> list[torch.Tensor]:
    """Split a rank's share into micro-batches of `micro` (0: one micro-batch)."""
    if micro <= 0 or micro >= len(indices):
        return [indices]
    return list(indices.split(micro))


def eval_batches(n: int, batch_size: int, rank: int = 0, world: int = 1) -> Iterator[torch.Tensor]:
    """In-order evaluation batches; ranks take interleaved batches, every sample exactly once."""
    for i, start in enumerate(range(0, n, batch_size)):
        if i % world == rank:
            yield torch.arange(start, min(start + batch_size, n))
