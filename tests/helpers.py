"""Shared helpers for tests: tiny configs and run commands."""

from __future__ import annotations

import os
import subprocess
import sys

from vitkit.config import DataConfig, ModelConfig, OptimConfig, RunConfig, TrainConfig

TINY_MODEL = ModelConfig(name="tiny", img_size=16, patch_size=4, in_chans=1, num_classes=10, embed_dim=32, depth=2,
                         num_heads=2, mlp_dim=64)  # fmt: skip


def tiny_run(**train_kw) -> RunConfig:
    """A tiny ViT on the synthetic dataset (CPU, seconds)."""
    train = dict(epochs=2, batch_size=32, log_every=5, eval_batch_size=256, device="cpu")
    train.update(train_kw)
    return RunConfig(
        recipe="test",
        model=TINY_MODEL,
        data=DataConfig(dataset="synthetic", synthetic_size=256),
        optim=OptimConfig(lr=3e-3, warmup_steps=2),
        train=TrainConfig(**train),
    )


TINY_FLAGS = [
    "--dataset", "synthetic", "--device", "cpu", "--batch-size", "32", "--lr", "3e-3",
    "--set", "data.synthetic_size=512", "--set", "model.img_size=16", "--set", "model.embed_dim=32",
    "--set", "model.depth=2", "--set", "model.num_heads=2", "--set", "model.mlp_dim=64",
    "--set", "model.patch_size=4", "--set", "train.compile=false",  # the default recipe compiles; tests need not
]  # fmt: skip


def vitkit_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "vitkit", *args]


def run_vitkit(*args: str, cwd: str | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return subprocess.run(
        vitkit_cmd(*args), capture_output=True, text=True, cwd=cwd, timeout=timeout, env=env
    )
