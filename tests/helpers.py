"""Shared helpers for tests: tiny configs and run commands."""

from __future__ import annotations

import os
import subprocess
import sys

import torch

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


def check_cnn_trains(
    model: torch.nn.Module, x: torch.Tensor, classes: int, nonzero_grads: bool = True
) -> None:
    """A CNN baseline in train mode: finite logits and gradients (all non-zero unless a zero-initialised norm
    holds some back); in eval mode forward_features + forward_head == forward, pre-logits of the pooled width."""
    out = model.train()(x)
    assert out.shape == (len(x), classes) and torch.isfinite(out).all()
    out.square().sum().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
        if nonzero_grads:
            assert p.grad.abs().sum() > 0, f"{pname} has an all-zero gradient"
    model.eval()
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.shape == (len(x), model.num_features, 1, 1)
        torch.testing.assert_close(model.forward_head(feats), model(x), rtol=0, atol=0)
        assert model.forward_head(feats, pre_logits=True).shape == (len(x), model.num_features)
