"""Learning-rate schedules as pure functions of the optimizer step."""

from __future__ import annotations

import math

from vitkit.config import OptimConfig


def warmup_steps(cfg: OptimConfig, total_steps: int) -> int:
    """Warmup length in steps: explicit, or a fraction of the run. One as long as the run or longer keeps its slope
    (big_vision, optax, timm): the run then only ramps up (the trainer warns); it was squeezed into the run, which
    then ended at the peak learning rate."""
    if cfg.warmup_steps:
        return cfg.warmup_steps
    return int(cfg.warmup_fraction * total_steps)


def lr_at(
    step: int,
    total_steps: int,
    base_lr: float,
    warmup: int = 0,
    kind: str = "cosine",
    min_ratio: float = 0.0,
    decay_at: tuple[float, ...] = (),
    decay_factor: float = 0.1,
) -> float:
    """LR for optimizer step `step` (0-based): a linear warmup that starts at base / warmup and reaches base at
    step warmup - 1 (big_vision's and optax's start at 0 and reach base at step `warmup`: one step later, the
    same slope), then cosine/linear decay to min_ratio*base, constant, or "step": x decay_factor from each step
    at or past a fraction `decay_at` of the run, rounded half up (BiT)."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    if kind == "constant":
        return base_lr
    if kind == "step":
        return base_lr * decay_factor ** sum(step >= math.floor(f * total_steps + 0.5) for f in decay_at)
    span = max(total_steps - warmup, 1)
    progress = min(max((step - warmup) / span, 0.0), 1.0)
    if kind == "cosine":
        factor = 0.5 * (1.0 + math.cos(math.pi * progress))
    elif kind == "linear":
        factor = 1.0 - progress
    else:
        raise ValueError(f"unknown schedule {kind!r}: expected cosine, linear, constant or step")
    return base_lr * (min_ratio + (1.0 - min_ratio) * factor)


def schedule_fn(cfg: OptimConfig, total_steps: int):
    """step -> lr for a config."""
    warm = warmup_steps(cfg, total_steps)
    return lambda step: lr_at(
        step, total_steps, cfg.lr, warm, cfg.schedule, cfg.min_lr_ratio, cfg.decay_at, cfg.decay_factor
    )
