"""Data-parallel (DDP) and sharded (FSDP2 `fully_shard`) training, with world-size-portable state dicts.

Checkpoints always hold full (unsharded) tensors keyed by parameter name, for the model, its EMA and the
optimizer, so a run saved by N processes with either strategy resumes with M processes and either strategy.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from vitkit.train.distributed import DistInfo

STRATEGIES = ("auto", "ddp", "fsdp")
_FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def resolve_strategy(name: str, info: DistInfo) -> str:
    """ "none" for one process; "auto" means DDP under torchrun."""
    if name not in STRATEGIES:
        raise ValueError(f"train.strategy={name!r} is not one of {', '.join(STRATEGIES)}")
    if not info.enabled:
        return "none"
    return "ddp" if name == "auto" else name


def wrap_model(model: nn.Module, strategy: str, device: torch.device) -> nn.Module:
    """The module to call in training: DDP around the model, or the model itself sharded in place (FSDP2)."""
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)
    if strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for block in model.blocks:
            fully_shard(block)
        fully_shard(model)
        return model
    return model


@contextlib.contextmanager
def gradient_sync(fwd: nn.Module, strategy: str, sync: bool) -> Iterator[None]:
    """Skip the gradient all-reduce on micro-batches before the last (the sums are the same either way)."""
    if sync or strategy == "none":
        yield
    elif strategy == "ddp":
        with fwd.no_sync():
            yield
    else:  # fsdp
        fwd.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            fwd.set_requires_gradient_sync(True)


def model_state(model: nn.Module, strategy: str) -> dict[str, torch.Tensor]:
    """Full CPU state_dict (a collective under FSDP: every rank must call it)."""
    if strategy == "fsdp":
        return get_model_state_dict(model, options=_FULL)
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def load_model_state(model: nn.Module, state: dict[str, torch.Tensor], strategy: str) -> None:
    """Load a full state_dict into a plain, DDP-wrapped or sharded model (strict)."""
    if strategy == "fsdp":
        set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True, strict=True))
    else:
        model.load_state_dict(state, strict=True)


def optimizer_state(model: nn.Module, opt: torch.optim.Optimizer) -> dict:
    """Full optimizer state keyed by parameter name (portable across strategies and world sizes)."""
    return get_optimizer_state_dict(model, opt, options=_FULL)


def load_optimizer_state(model: nn.Module, opt: torch.optim.Optimizer, state: dict) -> None:
    set_optimizer_state_dict(model, opt, state, options=StateDictOptions(full_state_dict=True))


def full_tensors(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Unsharded CPU copies (DTensor shards are gathered: a collective)."""
    out = []
    for t in tensors:
        if hasattr(t, "full_tensor"):
            t = t.full_tensor()
        out.append(t.detach().cpu().clone())
    return out


def shard_like(full: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """`full` laid out as `like` (a DTensor shard, or a plain tensor on its device)."""
    if hasattr(like, "device_mesh"):
        from torch.distributed.tensor import distribute_tensor

        return distribute_tensor(full.to(like.device, like.dtype), like.device_mesh, like.placements)
    return full.to(like.device, like.dtype)
