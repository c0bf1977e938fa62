"""Activation checkpointing of a model's blocks: keep a block's input, recompute its activations in backward.

The recomputation draws the dropout masks the forward drew (keyed or torch's RNG) and leaves BatchNorm's
running statistics as the forward left them (torch's checkpoint would update them a second time).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from vitkit import keyed_random


def _keyed_block(block: nn.Module, x: torch.Tensor, ctx: tuple | None, **kw) -> torch.Tensor:
    """`block(x)` inside the keyed-randomness context `ctx` that was active when the forward ran: a checkpointed
    block recomputed during backward (outside that context) draws the same dropout masks as its forward did.
    Recomputed eagerly (inside autograd's backward), its BatchNorm running statistics are restored afterwards;
    compiled, the recomputation is part of the traced graph and updates nothing."""
    recompute = not torch.compiler.is_compiling() and torch._C._current_graph_task_id() != -1
    with _kept(_running_stats(block)) if recompute else contextlib.nullcontext():
        if ctx is None or keyed_random.current() is ctx:
            return block(x, **kw)
        with keyed_random.keyed(ctx[0], ctx[2]):
            return block(x, **kw)


def _running_stats(block: nn.Module) -> list[torch.Tensor]:
    """The buffers a training-mode forward of `block` updates: its batch norms' running statistics."""
    stats = []
    for m in block.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
            stats += [b for b in (m.running_mean, m.running_var, m.num_batches_tracked) if b is not None]
    return stats


@contextlib.contextmanager
def _kept(buffers: list[torch.Tensor]) -> Iterator[None]:
    """Restore `buffers` on exit to their values on entry (around a recomputation)."""
    saved = [b.clone() for b in buffers]
    try:
        yield
    finally:
        with torch.no_grad():
            for b, s in zip(buffers, saved):
                b.copy_(s)


def checkpointed(block: nn.Module, x: torch.Tensor, **kw) -> torch.Tensor:
    """`block(x, **kw)` with its activations recomputed in backward (same outputs, masks and statistics)."""
    return checkpoint(_keyed_block, block, x, keyed_random.current(), use_reentrant=False, **kw)


def run_blocks(blocks: Iterable[nn.Module], x: torch.Tensor, enabled: bool) -> torch.Tensor:
    """Apply `blocks` in order, each checkpointed when `enabled`, training and a backward will follow."""
    recompute = enabled and torch.is_grad_enabled()
    for block in blocks:
        x = checkpointed(block, x) if recompute and block.training else block(x)
    return x
