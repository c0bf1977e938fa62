"""torch.compile for training: what to compile (the model, or its transformer blocks in place), a trial step that
falls back to eager, CUDA graphs' limits, and the compiled blocks set aside for evaluation."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import torch
from torch import nn

from vitkit import keyed_random
from vitkit.config import ModelConfig

log = logging.getLogger(__name__)


def check_graphs(precision: str, micro_batches: bool, world: int, checkpointing: bool = False) -> None:
    """Refuse what CUDA graphs (train.compile_mode=reduce-overhead) cannot train: gradients accumulated over
    micro-batches or all-reduced by DDP would live in the graphs' memory, overwritten by the next replay (bf16-pure
    copies them out after each backward); activation checkpointing would replay graphed forwards inside the
    backward (untested on a GPU)."""
    if checkpointing:
        raise ValueError(
            "train.compile_mode=reduce-overhead with train.grad_checkpointing: recomputing inside CUDA graphs is "
            "untested; use train.compile_mode=default with checkpointing"
        )
    if world > 1:
        raise ValueError("train.compile_mode=reduce-overhead runs in one process; under torchrun use default")
    if micro_batches and precision != "bf16-pure":
        raise ValueError(
            "train.compile_mode=reduce-overhead with train.micro_batch_size: the accumulated gradients would be "
            "overwritten by the next graph replay; use train.precision=bf16-pure, or no micro-batches"
        )


def block_regions(work: nn.Module, cfg: ModelConfig, strategy: str) -> list[nn.Module]:
    """train.compile_scope=blocks: the modules compiled one by one (the transformer blocks of `work`)."""
    # fully_shard has already wrapped the blocks here (torchtitan compiles them before sharding): untested
    if strategy == "fsdp":
        raise ValueError(
            "train.compile_scope='blocks' with train.strategy=fsdp: use train.compile_scope=model"
        )
    if cfg.arch != "vit":
        raise ValueError(
            f"train.compile_scope='blocks': {cfg.name} (arch {cfg.arch!r}) has no transformer blocks (a ViT's); "
            "use train.compile_scope=model"
        )
    return list(work.blocks)


def compile_with_trial(
    module: nn.Module,
    regions: list[nn.Module],
    mode: str,
    example: torch.Tensor,
    autocast: bool,
    graphs: bool,
) -> tuple[nn.Module, list[nn.Module]]:
    """`module` torch.compile'd (or its `regions` compiled in place), tried once on `example` as a training step
    runs it (bf16 autocast if `autocast`, keyed randomness on, a new CUDA-graph step if `graphs`); eager with a
    warning if compiling fails. Gradients and buffers (BatchNorm's statistics) are left as they were.
    Returns the module to call and the regions compiled in place."""
    kw = dict(dynamic=False, mode=None if mode == "default" else mode)
    for r in regions:
        r.compile(**kw)
    compiled = module if regions else torch.compile(module, **kw)
    idx = torch.arange(example.shape[0], device=example.device)
    buffers = [(b, b.clone()) for b in module.buffers()]  # BatchNorm must not count the dummy batch
    try:  # keyed randomness on: its guards are part of the graph
        if graphs:
            torch.compiler.cudagraph_mark_step_begin()
        amp = torch.autocast(example.device.type, dtype=torch.bfloat16, enabled=autocast)
        with amp, keyed_random.keyed(0, idx):
            out = compiled(example)
        out.float().sum().backward()
    except Exception as e:  # no C++ compiler, unsupported op, ...: training still works, eagerly
        log.warning("torch.compile failed (%s: %s); training without it", type(e).__name__, str(e)[:200])
        for r in regions:  # undo nn.Module.compile
            r._compiled_call_impl = None
        regions, compiled = [], module
    finally:
        for p in module.parameters():
            p.grad = None
        with torch.no_grad():
            for b, saved in buffers:
                b.copy_(saved)
    return compiled, regions


@contextlib.contextmanager
def eager_regions(regions: list[nn.Module]) -> Iterator[None]:
    """Blocks compiled in place run eagerly inside (evaluation would compile them again for its mode and batch,
    and record CUDA graphs for them)."""
    saved = [r._compiled_call_impl for r in regions]
    for r in regions:
        r._compiled_call_impl = None
    try:
        yield
    finally:
        for r, impl in zip(regions, saved):
            r._compiled_call_impl = impl
