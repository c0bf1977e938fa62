"""The MLP's fused bias-GELU kernels (models/fused_mlp.py): run by Triton's interpreter against float64, the plain
path elsewhere, and the training switch."""

from __future__ import annotations

import dataclasses
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from helpers import tiny_run
from vitkit import create_model
from vitkit.config import ModelConfig
from vitkit.data.datasets import load_dataset
from vitkit.models import fused_mlp
from vitkit.train import distributed as D
from vitkit.train.loop import resolve_for_data
from vitkit.train.trainer import Trainer

HERE = Path(__file__).parent


def test_kernels_under_the_triton_interpreter_match_float64_and_the_plain_model():
    """Forward, input and bias gradients of both GELUs (fp32, bf16; ragged tiles, many row groups, 3-D) against
    float64, and a ViT's logits and gradients with its MLPs fused against the plain model (the script's asserts)."""
    pytest.importorskip("triton")
    if not fused_mlp.triton_available():
        pytest.skip(f"torch {torch.__version__} has no torch.library.triton_op")
    env = dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), env.get("PYTHONPATH")]))
    r = subprocess.run(
        [sys.executable, str(HERE / "fused_mlp_interpreted.py")], capture_output=True, text=True, env=env,
        timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    assert "fused bias-GELU under the interpreter: ok" in r.stdout


def test_on_the_cpu_the_plain_ops_run_and_bad_input_is_named():
    """Outside CUDA (no interpreter) bias_gelu is torch's GELU of h + b, and a fused model the plain one exactly."""
    h, b = torch.randn(5, 7, 12), torch.randn(12)
    for approximate in ("none", "tanh"):
        assert torch.equal(fused_mlp.bias_gelu(h, b, approximate), F.gelu(h + b, approximate=approximate))
    assert not fused_mlp.runs_on(h)
    with pytest.raises(ValueError, match=r"approximate='exact': expected 'none' \(erf\) or 'tanh'"):
        fused_mlp.bias_gelu(h, b, "exact")
    with pytest.raises(ValueError, match=r"bias \(11,\) must be \(H,\) for h \(5, 7, 12\)"):
        fused_mlp.bias_gelu(h, torch.randn(11))
    torch.manual_seed(0)
    model = create_model("ViT-Ti/4", img_size=16, in_chans=3, num_classes=5, depth=2).eval()
    x = torch.randn(2, 3, 16, 16)
    want = model(x)
    if fused_mlp.triton_available():
        assert fused_mlp.set_fused_bias_gelu(model) == 2
        assert all(blk.mlp.fused_bias_gelu for blk in model.blocks)
        assert torch.equal(model(x), want)


def test_set_fused_bias_gelu_without_triton_names_what_is_missing(monkeypatch):
    monkeypatch.setattr(fused_mlp, "_OP", None)
    monkeypatch.setattr(fused_mlp, "triton_available", lambda: False)
    model = create_model("ViT-Ti/4", img_size=16, in_chans=3, num_classes=5, depth=1)
    with pytest.raises(RuntimeError, match=r"need Triton and torch >= 2\.6 .*without Triton"):
        fused_mlp.set_fused_bias_gelu(model)
    assert fused_mlp.set_fused_bias_gelu(model, False) == 1  # switching off needs nothing


def _trainer(cfg, device="cpu"):
    splits = load_dataset(cfg.data, seed=cfg.train.seed)
    return Trainer(resolve_for_data(cfg, splits), None, splits, D.DistInfo(), torch.device(device))


def test_train_fused_bias_gelu_warns_on_the_cpu_and_is_refused_without_an_mlp(caplog, monkeypatch):
    """train.fused_bias_gelu: on the CPU a warning and torch's ops (the same first step); a CNN has no MLP to fuse;
    on CUDA the trainer switches every MLP (checked by calling its switch with a CUDA device)."""
    cfg = tiny_run(steps=1)
    plain = _trainer(cfg)
    with caplog.at_level(logging.WARNING, logger="vitkit.train.trainer"):
        fused = _trainer(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, fused_bias_gelu=True)))
    assert "train.fused_bias_gelu: its kernels run on CUDA; on cpu the MLPs run torch's ops" in caplog.text
    assert not any(getattr(m, "fused_bias_gelu", False) for m in fused.model.modules())
    plain.train_step()
    fused.train_step()
    for (name, a), b in zip(plain.model.named_parameters(), fused.model.parameters()):
        assert torch.equal(a, b), name
    monkeypatch.setattr(fused_mlp, "_OP", None)  # a CUDA machine without Triton: the key is named
    monkeypatch.setattr(fused_mlp, "triton_available", lambda: False)
    with pytest.raises(
        ValueError, match=r"train\.fused_bias_gelu=true: the fused bias-GELU kernels need Triton"
    ):
        fused._fuse_bias_gelu("tiny", torch.device("cuda"), True)
    switched = []
    monkeypatch.setattr("vitkit.train.trainer.set_fused_bias_gelu", lambda m: switched.append(m) or 2)
    fused._fuse_bias_gelu("tiny", torch.device("cuda"), True)
    assert switched == [fused.model]
    resnet = ModelConfig(name="ResNet-26", arch="resnet", backbone=(1, 2, 4, 1), img_size=16, in_chans=1)
    bad = dataclasses.replace(cfg, model=resnet, train=dataclasses.replace(cfg.train, fused_bias_gelu=True))
    with pytest.raises(ValueError, match=r"train\.fused_bias_gelu=true: ResNet-26 has no transformer MLP"):
        _trainer(bad)
