"""Training: schedules, parameter groups, accumulation == large batch, checkpoints, exact resume."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import glob
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import types

import pytest
import torch

from helpers import TINY_FLAGS, run_vitkit, tiny_run, vitkit_cmd
from vitkit.cli import main
from vitkit.config import ModelConfig, OptimConfig, RunConfig, apply_overrides
from vitkit.data.datasets import load_dataset
from vitkit.models import create_model
from vitkit.train import distributed as D
from vitkit.train.checkpoint import (
    CheckpointError,
    latest_valid,
    list_checkpoints,
    load_checkpoint,
    load_weights,
    restore_set_aside,
    save_checkpoint,
    verify_checkpoint,
)
from vitkit.train.loop import resolve_for_data, train
from vitkit.train.optim import decay_names
from vitkit.train.runfiles import clear_run, read_config
from vitkit.train.schedules import lr_at, schedule_fn
from vitkit.train.trainer import Trainer


def test_schedules():
    assert lr_at(0, 100, 1.0, warmup=10) == pytest.approx(0.1)
    assert lr_at(9, 100, 1.0, warmup=10) == pytest.approx(1.0)
    assert lr_at(10, 100, 1.0, warmup=10, kind="cosine") == pytest.approx(1.0)
    assert lr_at(55, 100, 1.0, warmup=10, kind="cosine") == pytest.approx(0.5)
    assert lr_at(100, 100, 1.0, warmup=10, kind="cosine") == pytest.approx(0.0, abs=1e-12)
    assert lr_at(55, 100, 1.0, warmup=10, kind="linear") == pytest.approx(0.5)
    assert lr_at(100, 100, 2.0, warmup=0, kind="linear", min_ratio=0.1) == pytest.approx(0.2)
    assert lr_at(70, 100, 3.0, kind="constant") == 3.0
    f = schedule_fn(OptimConfig(lr=1.0, warmup_fraction=0.1, schedule="cosine"), 200)
    assert f(19) == pytest.approx(1.0) and f(0) == pytest.approx(0.05)
    vals = [f(s) for s in range(20, 200)]
    assert all(a >= b for a, b in itertools.pairwise(vals))
    # a warmup longer than the run keeps its slope (was: squeezed into the run, which ended at the peak)
    long = schedule_fn(OptimConfig(lr=0.03, warmup_steps=500, schedule="cosine"), 300)
    assert long(299) == pytest.approx(0.03 * 300 / 500) and long(0) == pytest.approx(0.03 / 500)


def test_a_warmup_as_long_as_the_run_is_warned_about(caplog):
    cfg = tiny_run(steps=4)
    cfg = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, warmup_steps=10))
    with caplog.at_level("WARNING", logger="vitkit.train.trainer"):
        _trainer(cfg)
    assert "optim.warmup_steps=10 is not shorter than the run's 4 steps" in caplog.text
    assert "to 0.0012 at the last step (of 0.003)" in caplog.text


def test_step_schedule_is_bits_fine_tuning_rule():
    """schedule=step: BiT-HyperRule's 10k-step schedule (500 warmup steps, lr / 10 at 3k, 6k and 9k)."""
    f = schedule_fn(OptimConfig(name="sgd", lr=0.003, warmup_steps=500, schedule="step"), 10_000)
    assert f(0) == pytest.approx(0.003 / 500) and f(499) == pytest.approx(0.003)
    for step, lr in ((500, 3e-3), (2999, 3e-3), (3000, 3e-4), (5999, 3e-4), (6000, 3e-5), (9000, 3e-6)):
        assert f(step) == pytest.approx(lr), step
    small = OptimConfig(lr=1.0, warmup_steps=100, schedule="step", decay_at=(0.4, 0.6, 0.8), decay_factor=0.5)
    assert [schedule_fn(small, 500)(s) for s in (199, 200, 300, 400)] == pytest.approx([1, 0.5, 0.25, 0.125])
    cfg = apply_overrides(RunConfig(), ["optim.schedule=step", "optim.decay_at=(0.5,0.75)"])
    assert cfg.optim.decay_at == (0.5, 0.75)
    for bad in (dict(decay_at=(0.6, 0.3)), dict(decay_at=(0.3, 1.0)), dict(decay_factor=0.0)):
        with pytest.raises(ValueError, match=r"optim\.decay_"):
            OptimConfig(schedule="step", **bad)


def test_param_groups_skip_biases_norms_pos_cls():
    model = create_model(
        "ViT-Ti/4", img_size=8, depth=1, embed_dim=12, num_heads=3, mlp_dim=12, num_classes=3
    )
    decay, no_decay = decay_names(model)
    assert "pos_embed" in no_decay and "cls_token" in no_decay
    assert (
        "blocks.0.norm1.weight" in no_decay
        and "blocks.0.attn.qkv.bias" in no_decay
        and "head.bias" in no_decay
    )
    assert (
        "blocks.0.attn.qkv.weight" in decay and "head.weight" in decay and "patch_embed.proj.weight" in decay
    )
    assert len(decay) + len(no_decay) == len(list(model.parameters()))


@pytest.mark.parametrize("kw", [{}, {"backbone": (1,), "patch_size": 1, "img_size": 16}])
def test_layer_decay_matches_timm(kw):
    """Each parameter's learning-rate scale and weight decay equal timm's param_groups_layer_decay on its own
    ViT (or hybrid) with the same names, but the final norm's: it trains at the head's rate as in BEiT and MAE,
    where timm's group matcher puts it with the last block."""
    from timm.optim import param_groups_layer_decay

    from vitkit.models import build_model, model_config
    from vitkit.perf.benchmark import timm_twin
    from vitkit.train.optim import param_groups

    cfg = model_config("ViT-Ti/4", **{"img_size": 16, "num_classes": 5, "depth": 3, **kw})
    ours, theirs = build_model(cfg), timm_twin(cfg)

    def table(model, groups):
        ids = {id(p): n for n, p in model.named_parameters()}
        return {ids[id(p)]: (g["lr_scale"], g["weight_decay"]) for g in groups for p in g["params"]}

    want = table(theirs, param_groups_layer_decay(theirs, 0.05, theirs.no_weight_decay(), layer_decay=0.65))
    got = table(ours, param_groups(ours, 0.05, layer_decay=0.65))
    assert got.keys() == want.keys()
    for name in want:
        if name.startswith("norm."):
            assert got[name] == (1.0, 0.0) and want[name] == pytest.approx((0.65, 0.0)), name
            continue
        assert got[name] == pytest.approx(want[name], rel=1e-12), name
    assert got["head.weight"] == (1.0, 0.05) and got["cls_token"][0] == pytest.approx(0.65**4)


def test_layer_decay_scales_each_groups_learning_rate():
    c = tiny_run(steps=3)
    trainer = _trainer(dataclasses.replace(c, optim=dataclasses.replace(c.optim, layer_decay=0.5)))
    trainer.train_step()
    trainer.train_step()
    lr = trainer.lr(1)
    depth = len(trainer.model.blocks)
    assert {round(g["lr"] / lr, 12) for g in trainer.opt.param_groups} == {0.5**k for k in range(depth + 2)}
    with pytest.raises(ValueError, match=r"optim\.layer_decay=1\.5 must lie in \(0, 1\]"):
        OptimConfig(layer_decay=1.5)
    resnet = ModelConfig(name="ResNet-26", arch="resnet", backbone=(1, 2, 4, 1), img_size=16, in_chans=1)
    bad = dataclasses.replace(c, model=resnet, optim=dataclasses.replace(c.optim, layer_decay=0.5))
    with pytest.raises(ValueError, match=r"optim\.layer_decay=0\.5: layer-wise decay follows a ViT's blocks"):
        _trainer(bad)


@pytest.mark.parametrize("clip", [0.0, 0.05])
def test_a_step_is_smoothed_cross_entropy_clipped_then_sgd_by_hand(clip):
    """One step against a hand-written one: the loss (1-e) CE + e mean_k(-log p_k) of label smoothing e, the
    gradient rescaled to norm `clip` when longer (clip_grad_norm_), then p -= lr g (plain SGD, constant lr)."""
    eps, lr = 0.2, 0.5
    c = tiny_run(steps=1, batch_size=16)
    c = dataclasses.replace(
        c,
        data=dataclasses.replace(c.data, label_smoothing=eps),
        optim=OptimConfig(
            name="sgd",
            lr=lr,
            momentum=0.0,
            weight_decay=0.0,
            warmup_steps=0,
            schedule="constant",
            grad_clip=clip,
        ),
    )
    tr = _trainer(c)
    ref = copy.deepcopy(tr.model)
    idx = tr._epoch_order(0)[:16]
    images, labels = tr.train_ds.get_batch(idx)
    x = tr.transform.train(images, idx, 0)
    logp = torch.log_softmax(ref(x).double(), dim=-1)  # (B, K)
    loss = ((1 - eps) * -logp.gather(1, labels[:, None]).squeeze(1) + eps * -logp.mean(dim=1)).mean()
    params = [p for p in ref.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    grads = [torch.zeros_like(p) if g is None else g.double() for p, g in zip(params, grads)]
    norm = torch.sqrt(sum((g * g).sum() for g in grads))
    scale = min(1.0, clip / (float(norm) + 1e-6)) if clip else 1.0
    assert (scale < 0.5) == bool(clip)  # the clip bites
    tr.train_step()
    after = dict(tr.model.named_parameters())
    for (name, p), g in zip(((n, p) for n, p in ref.named_parameters() if p.requires_grad), grads):
        want = p.detach().double() - lr * scale * g
        torch.testing.assert_close(after[name].detach().double(), want, rtol=0, atol=2e-6, msg=name)


def _trainer(cfg):
    splits = load_dataset(cfg.data, seed=cfg.train.seed)
    cfg = resolve_for_data(cfg, splits)
    return Trainer(cfg, None, splits, D.DistInfo(), torch.device("cpu"))


def test_grad_accumulation_equals_large_batch():
    # SGD: Adam would turn the float noise of exactly-zero gradients (the key bias) into full-size updates
    def cfg(**kw):
        c = tiny_run(batch_size=32, **kw)
        return dataclasses.replace(
            c, optim=OptimConfig(name="sgd", lr=0.05, warmup_steps=0, weight_decay=1e-4)
        )

    big, small = _trainer(cfg()), _trainer(cfg(micro_batch_size=8))
    assert small.micro == 8
    for _ in range(3):
        big.train_step()
        small.train_step()
    for (name, a), b in zip(big.model.named_parameters(), small.model.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5, msg=name)


def test_train_learns_and_writes_run(tmp_path):
    cfg = tiny_run(epochs=8, ema_decay=0.9)
    summary = train(cfg, str(tmp_path))
    assert summary["test_top1"] > 0.5  # 10 classes: chance is 0.1
    for name in (
        "config.json",
        "data.json",
        "metrics.jsonl",
        "summary.json",
        "model.safetensors",
        "model_raw.safetensors",
    ):
        assert (tmp_path / name).exists(), name
    lines = [json.loads(s) for s in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in lines if r.get("split") == "test"]
    assert len(evals) == 8 and "ema_top1" in evals[-1]
    assert load_weights(str(tmp_path / "model.safetensors"))["head.weight"].shape == (10, 32)
    assert (tmp_path / "checkpoints" / "best" / "manifest.json").exists()


def test_every_weights_file_of_a_run_reads_as_the_run_s_model(tmp_path):
    """Was: model_raw.safetensors and a checkpoint's model/ema files had no metadata and read as bare timm
    files: a sincos2d run became a 224-px model without its position embedding, or 'heads not stated'."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    import vitkit
    from vitkit.convert.sources import read_checkpoint

    cfg = tiny_run(steps=2, ema_decay=0.9, checkpoint_every=1)
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, posemb="sincos2d"))
    train(cfg, str(tmp_path))
    step = tmp_path / "checkpoints" / "step-00000002"
    files = [tmp_path / "model_raw.safetensors", step / "model.safetensors", step / "ema.safetensors"]
    for path in files:
        with safe_open(str(path), "pt") as f:
            assert f.metadata() == {"format": "vitkit"}
        ckpt = read_checkpoint(str(path))
        assert ckpt.format == "vitkit" and ckpt.config == cfg.model and ckpt.heads_stated
    # a checkpoint folder stands for its EMA, the run's weights of record (eval, finetune... took the raw ones)
    from vitkit.cli.common import find_run

    assert find_run(str(step)) == (str(tmp_path), str(step / "ema.safetensors"))
    assert read_checkpoint(str(step)).path == str(step / "ema.safetensors")
    # a run of earlier sessions: the same files without metadata are read by their place in the run
    plain = load_weights(str(files[0]))
    save_file(plain, str(files[0]))
    model = vitkit.create_model(pretrained=str(files[0]))
    assert model.cfg == cfg.model and torch.equal(model.state_dict()["head.weight"], plain["head.weight"])
    # another file put into the run is read as what it is (a timm file is no run's model)
    other = create_model("ViT-Ti/16", img_size=32, depth=1, num_classes=3)
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(step / "theirs.safetensors"))
    assert read_checkpoint(str(step / "theirs.safetensors")).config.img_size == (32, 32)
    # ... by every command: eval refuses it as the run's model, inspect reads it as a model of its own
    from vitkit.cli.common import UserError, find_run
    from vitkit.cli.subjects import is_run_path

    with pytest.raises(
        UserError, match=r"theirs\.safetensors is in the run .* but is not one of its weights"
    ):
        find_run(str(step / "theirs.safetensors"))
    assert not is_run_path(str(step / "theirs.safetensors")) and is_run_path(str(step / "ema.safetensors"))
    # the report and inspection of another weights file are named after it, not after its folder
    from vitkit.cli.subjects import weights_label

    assert weights_label(str(step)) == (str(tmp_path), "step-00000002")
    assert weights_label(str(step / "model.safetensors"))[1] == "step-00000002-model"
    assert weights_label(str(files[0]))[1] == "model_raw" and weights_label(str(tmp_path))[1] is None


def test_a_held_out_val_split_chooses_the_best_checkpoint(tmp_path, capsys):
    cfg = tiny_run(epochs=4, ema_decay=0.5)
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, holdout=0.25))
    summary = train(cfg, str(tmp_path))
    lines = [json.loads(s) for s in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in lines if r.get("split") == "val"]
    test = {r["step"]: r for r in lines if r.get("split") == "test"}
    assert len(val) == 4 and set(test) == {r["step"] for r in val}
    best = max(val, key=lambda r: r["ema_top1"])  # the headline weights (the EMA) are chosen
    assert summary["best_on"] == "val" and summary["best_val_top1"] == best["ema_top1"]
    assert summary["best_test_top1"] == test[best["step"]]["ema_top1"]
    sizes = json.loads((tmp_path / "data.json").read_text())["sizes"]
    assert sizes["train"] + sizes["val"] == 256 and 60 <= sizes["val"] <= 68  # 25% of each class, rounded
    assert summary["val_top1"] == val[-1]["ema_top1"] and summary["val_num_samples"] == sizes["val"]
    _, state = load_checkpoint(str(tmp_path / "checkpoints" / "best"), "cpu")
    assert state["step"] == best["step"] and state["split"] == "val"
    capsys.readouterr()
    assert main(["eval", str(tmp_path), "--split", "val", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    # eval --split val scores the final weights (the EMA) on the very images the run held out
    assert got["num_samples"] == sizes["val"] and abs(got["top1"] - summary["val_top1"]) < 1e-9


def test_without_a_held_out_split_best_is_chosen_on_test_and_eval_has_no_val(tmp_path, capsys):
    summary = train(tiny_run(epochs=2), str(tmp_path))
    assert summary["best_on"] == "test" and "val_top1" not in summary
    assert summary["best_test_top1"] >= summary["test_top1"]
    assert main(["eval", str(tmp_path), "--split", "val"]) == 2
    assert (
        "no val split in 'synthetic': none held out of its training split (--set data.holdout=0.1 does)"
        in capsys.readouterr().err
    )


def test_few_shot_evaluation_during_training_on_the_runs_and_another_dataset(tmp_path, monkeypatch):
    import numpy as np

    from vitkit.data.idx import write_idx
    from vitkit.eval.fewshot import fewshot_evaluate, model_input

    mnist = tmp_path / "data" / "mnist"  # another dataset: 28x28 grey images resized to the model's 16x16
    rng = np.random.default_rng(0)
    mnist.mkdir(parents=True)
    for prefix, n in (("train", 60), ("t10k", 30)):
        write_idx(
            str(mnist / f"{prefix}-images-idx3-ubyte"), rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        )
        write_idx(str(mnist / f"{prefix}-labels-idx1-ubyte"), (np.arange(n) % 10).astype(np.uint8))
    monkeypatch.setenv("VITKIT_DATA", str(tmp_path / "data"))
    cfg = tiny_run(epochs=2, fewshot_every=1, fewshot_datasets=("synthetic", "mnist"), fewshot_shots=(1, 3))
    summary = train(cfg, str(tmp_path / "run"))
    lines = [json.loads(s) for s in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    recs = [r for r in lines if r.get("split") == "fewshot"]
    assert [r["step"] for r in recs] == [8, 16] and set(recs[-1]["fewshot"]) == {"synthetic", "mnist"}
    assert recs[-1]["fewshot"] == summary["fewshot"]
    from vitkit.inspect.plots import plot_training_curves

    labels = [ln.get_label() for ln in plot_training_curves(lines).axes[1].lines]
    assert "mnist 3-shot" in labels and "synthetic 3-shot" in labels
    assert all(0 <= a <= 1 for accs in summary["fewshot"].values() for a in accs.values())
    # the final record is the evaluation of the final weights, one draw (seed 0) per shot count
    from vitkit.models import build_model

    model = build_model(cfg.model)
    model.load_state_dict(load_weights(str(tmp_path / "run" / "model.safetensors")))
    own = load_dataset(cfg.data, seed=cfg.train.seed)
    other = load_dataset(dataclasses.replace(cfg.data, dataset="mnist"))
    for name, splits, tf in (
        ("synthetic", own, model_input((16, 16), 1, own.mean, own.std)),
        ("mnist", other, model_input((16, 16), 1, own.mean, own.std)),  # normalised as the run's inputs
    ):
        res = fewshot_evaluate(model, splits.train, splits.test, tf, num_classes=10, shots=(1, 3), seeds=1)
        assert {str(k): r["mean"] for k, r in res["shots"].items()} == summary["fewshot"][name], name


def test_a_resumed_run_remembers_the_best_evaluation_of_checkpoints_best(tmp_path):
    # the step checkpoint is written before the evaluation that ends a run: a run resumed to train longer takes
    # the best so far from checkpoints/best, or a worse model would replace it
    cfg = tiny_run(epochs=1)
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, holdout=0.25))
    train(cfg, str(tmp_path))
    root = str(tmp_path / "checkpoints")
    weights, _ = load_checkpoint(os.path.join(root, "best"))
    save_checkpoint(
        root, 8, weights, {"step": 8, "top1": 0.99, "test_top1": 0.42, "split": "val"}, name="best"
    )
    splits = load_dataset(cfg.data, seed=cfg.train.seed)
    tr = Trainer(resolve_for_data(cfg, splits), str(tmp_path), splits, D.DistInfo(), torch.device("cpu"))
    tr.load_state(latest_valid(root))
    assert (tr.best, tr.best_test) == (0.99, 0.42)


def test_few_shot_counts_beyond_a_class_are_refused_before_training(tmp_path):
    cfg = tiny_run(epochs=1, fewshot_every=1, fewshot_shots=(1, 500))
    with pytest.raises(
        ValueError,
        match=r"train\.fewshot_shots=\[1, 500\]: synthetic's training split has \d+ image\(s\) of class \d \('class\d'\)",
    ):
        train(cfg, str(tmp_path))
    assert not (tmp_path / "checkpoints").exists()


def test_fresh_run_replaces_an_earlier_run_in_its_folder(tmp_path):
    """A new run (--overwrite) keeps none of the old run's checkpoints, metrics or weights."""
    out = str(tmp_path)
    train(tiny_run(epochs=2, ema_decay=0.9), out)
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "report-best.html").write_text("of the old run's checkpoints/best")
    (tmp_path / "inspect-step-00000002").mkdir()
    (tmp_path / "inspect-step-00000002" / "inspect.json").write_text("{}")
    (tmp_path / "report-draft.html").write_text("mine")  # a user's files of like names are not run outputs
    (tmp_path / "inspect-my-notes").mkdir()
    train(tiny_run(steps=3), out)
    assert not (tmp_path / "report-best.html").exists() and not (tmp_path / "inspect-step-00000002").exists()
    assert (tmp_path / "report-draft.html").exists() and (tmp_path / "inspect-my-notes").is_dir()
    steps = [json.loads(s)["step"] for s in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert max(steps) == 3 and steps == sorted(steps)
    assert [os.path.basename(p) for p in list_checkpoints(str(tmp_path / "checkpoints"))] == ["step-00000003"]
    assert not (tmp_path / "model_raw.safetensors").exists()  # the first run's EMA left no raw weights behind
    assert (tmp_path / "notes.txt").read_text() == "mine"  # only run outputs are removed
    other = tmp_path / "not-a-run"  # no config.json: nothing is removed
    (other / "checkpoints").mkdir(parents=True)
    (other / "report.html").write_text("theirs")
    clear_run(str(other))
    assert (other / "report.html").exists() and (other / "checkpoints").is_dir()


def test_atomic_writes_leave_no_temp_file_and_follow_the_umask(tmp_path):
    """An atomic write replaces the file whole, leaves no temporary behind, and has a plain file's mode."""
    from vitkit.atomic import atomic_write_bytes, write_json

    path = tmp_path / "f.json"
    write_json(str(path), {"a": 1})
    atomic_write_bytes(str(path), b'{"a": 2}')
    assert path.read_bytes() == b'{"a": 2}' and [p.name for p in tmp_path.iterdir()] == ["f.json"]
    old = os.umask(0o027)
    try:
        atomic_write_bytes(str(path), b"x")
        assert path.stat().st_mode & 0o777 == 0o640  # mkstemp alone gives 0600
        from vitkit.train.checkpoint import save_weights

        save_weights(str(tmp_path / "w.safetensors"), {"a": torch.zeros(2)})  # safetensors recreates it 0600
        assert (tmp_path / "w.safetensors").stat().st_mode & 0o777 == 0o640
        (tmp_path / "w.safetensors").unlink()
        # a checkpoint's folder and files too (they were 0700 and 0600: unreadable to a group sharing the run)
        from vitkit.train.checkpoint import save_checkpoint

        ckpt = save_checkpoint(str(tmp_path / "ckpts"), 3, {"model": {"a": torch.zeros(2)}}, {"step": 3})
        assert os.stat(ckpt).st_mode & 0o777 == 0o750
        assert {n: os.stat(os.path.join(ckpt, n)).st_mode & 0o777 for n in os.listdir(ckpt)} == dict.fromkeys(
            ("model.safetensors", "state.pt", "manifest.json"), 0o640
        )
    finally:
        os.umask(old)
    shutil.rmtree(tmp_path / "ckpts")
    with pytest.raises(ZeroDivisionError):  # a failed write keeps the old file and removes its temporary
        from vitkit.atomic import atomic_write

        atomic_write(str(path), lambda tmp: 1 / 0)
    assert path.read_bytes() == b"x" and len(list(tmp_path.iterdir())) == 1


def test_a_write_that_fails_is_an_os_error_naming_the_file(tmp_path, monkeypatch):
    """Was: a full disk while checkpointing gave torch.save's RuntimeError or safetensors' SafetensorError, a
    traceback (the CLI reports an OSError in one line); the run's earlier checkpoints are untouched."""
    import vitkit.train.checkpoint as checkpoint

    def full(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 13504 vs 13396")

    root = tmp_path / "ckpts"
    first = checkpoint.save_checkpoint(str(root), 1, {"model": {"a": torch.zeros(2)}}, {"step": 1})
    monkeypatch.setattr(checkpoint.torch, "save", full)
    with pytest.raises(OSError, match=r"cannot write .*step-00000002/state\.pt \([\d.]+ MiB free there\): "):
        checkpoint.save_checkpoint(str(root), 2, {"model": {"a": torch.zeros(2)}}, {"step": 2})
    assert [p.name for p in root.iterdir()] == [os.path.basename(first)]  # no temp folder left behind
    monkeypatch.setattr(checkpoint, "save_file", lambda *a, **k: (_ for _ in ()).throw(ValueError("other")))
    with pytest.raises(ValueError, match="other"):  # not a writer's failure: as it was
        checkpoint.save_weights(str(tmp_path / "w.safetensors"), {"a": torch.zeros(2)})


@pytest.mark.parametrize(
    "manifest",
    [
        b"[]",
        b"{}",
        b'{"files": {}}',
        b'{"files": {"model.safetensors": {"size": "x"}, "state.pt": {"bytes": 1, "sha256": "0"}}}',
        b'{"files": {"state.pt": {"bytes": 1, "sha256": "0"}}}',
        b'{"files": {"../model.safetensors": {"bytes": 1, "sha256": "0"}, "state.pt": {"bytes": 1, "sha256": "0"}}}',
        b'{"files": "\xff"}',
    ],
    ids=["list", "empty", "no-files", "bad-entry", "no-weights", "outside", "not-utf8"],
)
def test_a_malformed_manifest_is_a_corrupt_checkpoint(tmp_path, manifest):
    """Was: a manifest `[]` an AttributeError traceback (eval's fall-back to the checkpoints crashed instead of
    trying the previous one), an entry without 'bytes' "error: bytes", and `{}` vouched for anything."""
    root = str(tmp_path)
    save_checkpoint(root, 1, {"model": {"w": torch.ones(2)}}, {"step": 1})
    newest = save_checkpoint(root, 2, {"model": {"w": torch.zeros(2)}}, {"step": 2})
    with open(os.path.join(newest, "manifest.json"), "wb") as f:
        f.write(manifest)
    with pytest.raises(CheckpointError, match=r"manifest\.json"):
        verify_checkpoint(newest)
    assert latest_valid(root).endswith("step-00000001")


def test_checkpoint_atomic_and_truncated_fallback(tmp_path, caplog):
    """... the skipped checkpoint said by one rank of a job only (was: every rank, the same warning N times)."""
    root = str(tmp_path)
    sd = {"w": torch.randn(64, 64)}
    save_checkpoint(root, 1, {"model": sd}, {"step": 1})
    save_checkpoint(root, 2, {"model": {"w": sd["w"] + 1}}, {"step": 2})
    save_checkpoint(root, 3, {"model": {"w": sd["w"] + 2}}, {"step": 3}, keep=2)
    assert [os.path.basename(p) for p in list_checkpoints(root)] == ["step-00000002", "step-00000003"]
    latest = os.path.join(root, "step-00000003", "model.safetensors")
    with open(latest, "r+b") as f:
        f.truncate(os.path.getsize(latest) // 2)
    with caplog.at_level("WARNING"):
        assert latest_valid(root, say=False).endswith("step-00000002")
        assert "skipping checkpoint" not in caplog.text
        assert latest_valid(root).endswith("step-00000002")
        assert "skipping checkpoint" in caplog.text and "truncated" in caplog.text
    weights, state = load_checkpoint(latest_valid(root))
    assert state["step"] == 2 and torch.equal(weights["model"]["w"], sd["w"] + 1)
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(os.path.join(root, "step-00000003"))
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    with pytest.raises(CheckpointError, match="not a valid safetensors"):
        load_weights(str(bad))


def test_a_best_checkpoint_set_aside_by_a_save_that_died_is_put_back(tmp_path, monkeypatch):
    """Was: replacing checkpoints/best moves the old one aside, then the new one in; a process that died between
    the two left no best/, and the resume's clean-up deleted the one set aside."""
    root = str(tmp_path)
    save_checkpoint(root, 4, {"model": {"w": torch.zeros(3)}}, {"step": 4}, name="best")
    real_replace = os.replace

    def die_before_the_new_one_moves_in(src, dst):
        if os.path.basename(src).startswith(".tmp-"):
            raise KeyboardInterrupt  # the process stops here
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", die_before_the_new_one_moves_in)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(root, 8, {"model": {"w": torch.ones(3)}}, {"step": 8}, name="best")
    monkeypatch.setattr(os, "replace", real_replace)
    assert not os.path.exists(os.path.join(root, "best")) and glob.glob(os.path.join(root, ".old-*"))
    restore_set_aside(root)
    weights, state = load_checkpoint(os.path.join(root, "best"))
    assert state["step"] == 4 and torch.equal(weights["model"]["w"], torch.zeros(3))
    assert sorted(os.listdir(root)) == ["best"]


def _wait_for(pred, proc, timeout=120):
    t0 = time.time()
    while not pred():
        if proc.poll() is not None:
            raise AssertionError(f"run ended early: {proc.stderr.read() if proc.stderr else ''}")
        if time.time() - t0 > timeout:
            raise AssertionError("timed out waiting")
        time.sleep(0.02)


@pytest.mark.slow
def test_kill9_then_resume_is_bitwise_identical(tmp_path):
    flags = [
        *TINY_FLAGS,
        "--epochs",
        "3",
        "--checkpoint-every",
        "4",
        "--no-progress",
        "--set",
        "model.drop_path_rate=0.1",
        "--set",
        "model.drop_rate=0.1",
        "--set",
        "data.crop_padding=2",
        "--set",
        "data.hflip=true",
        "--set",
        "train.ema_decay=0.9",
    ]
    ref = tmp_path / "ref"
    r = run_vitkit("train", *flags, "--out", str(ref))
    assert r.returncode == 0, r.stderr
    run = tmp_path / "killed"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    ckpts = run / "checkpoints"

    def newest_step() -> int:
        steps = [int(p[5:]) for p in (os.listdir(ckpts) if ckpts.exists() else []) if p.startswith("step-")]
        return max(steps, default=0)

    for min_step in (4, 20):  # kill after the first checkpoint, resume, kill again later
        args = (
            ["train", *flags, "--out", str(run)] if min_step == 4 else ["train", *flags, "--resume", str(run)]
        )
        proc = subprocess.Popen(
            vitkit_cmd(*args), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        _wait_for(lambda m=min_step: newest_step() >= m, proc)
        time.sleep(0.01)  # mid-step: the 20 ms polling already lands the kill anywhere after the checkpoint
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        # a run of 48 steps could end between the checkpoint and the kill only on a far faster machine: say so
        assert proc.returncode == -signal.SIGKILL, f"the run ended (rc {proc.returncode}) before the kill"
    assert not (run / "model.safetensors").exists()
    r = run_vitkit("train", *flags, "--resume", str(run))
    assert r.returncode == 0, r.stderr
    a, b = load_weights(str(ref / "model.safetensors")), load_weights(str(run / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs after resume"
    steps = [json.loads(s)["step"] for s in (run / "metrics.jsonl").read_text().splitlines()]
    ref_steps = [json.loads(s)["step"] for s in (ref / "metrics.jsonl").read_text().splitlines()]
    assert steps == ref_steps  # no duplicated or missing lines after resume


def test_resume_with_different_command_is_refused(tmp_path):
    cfg = tiny_run(epochs=1)
    train(cfg, str(tmp_path / "run"))
    r = run_vitkit("train", *TINY_FLAGS, "--lr", "0.5", "--resume", str(tmp_path / "run"))
    assert r.returncode == 2 and "differs from the run's config" in r.stderr


def test_resume_applies_flags_to_the_runs_own_config(tmp_path, capsys):
    """`--resume RUN --epochs N`: the flags apply on top of the run's config, not the default recipe's."""
    run = tmp_path / "run"
    train(tiny_run(epochs=1), str(run))
    assert main(["train", "--resume", str(run), "--recipe", "fashion-mnist"]) == 2
    assert "the run's recipe is test, not fashion-mnist" in capsys.readouterr().err
    flags = ["--epochs", "2", "--device", "cpu", "--checkpoint-every", "3", "--no-progress", "--no-report"]

    def evals() -> list[tuple]:
        recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        return [(r["step"], r["top1"]) for r in recs if "split" in r]

    assert main(["train", "--resume", str(run), *flags]) == 0
    assert read_config(str(run)).train.epochs == 2 and read_config(str(run)).recipe == "test"
    before = evals()
    assert main(["train", "--resume", str(run), *flags]) == 0  # finished: evaluated again, not logged twice
    assert evals() == before
    assert main(["train", "--resume", str(run), "--steps", "3", *flags[2:]]) == 2  # shorter than it ran
    assert "checkpoint is at step 16, past the 3 steps asked for" in capsys.readouterr().err
    assert read_config(str(run)).train.steps == 0  # the run's config untouched
    steps = sorted((run / "checkpoints").glob("step-*"))
    for step in steps:  # every checkpoint damaged: was a silent restart that then deleted them
        (step / "manifest.json").unlink()
    assert main(["train", "--resume", str(run), "--device", "cpu", "--no-progress"]) == 2
    assert "none of its checkpoints verifies (step-" in capsys.readouterr().err
    assert sorted((run / "checkpoints").glob("step-*")) == steps
    shutil.rmtree(run / "checkpoints")  # finished, checkpoints gone: a restart would replace its weights
    assert main(["train", "--resume", str(run), "--device", "cpu", "--no-progress"]) == 2
    assert "no valid checkpoint, and starting from scratch would lose what model.safetensors" in (
        capsys.readouterr().err
    )


def test_a_setting_refused_at_start_up_leaves_no_run_behind(tmp_path, capsys):
    """Was: config.json and data.json stayed, so the corrected command was told the folder held a run."""
    out = tmp_path / "run"
    cnn = ["--model", "ResNet-26", "--set", "model.img_size=16", "--set", "model.in_chans=1"]
    args = [
        "train",
        "--dataset",
        "synthetic",
        "--device",
        "cpu",
        "--steps",
        "1",
        "--out",
        str(out),
        "--no-progress",
    ]
    assert main([*args, *cnn, "--set", "optim.layer_decay=0.75"]) == 2
    assert "layer-wise decay follows a ViT's blocks" in capsys.readouterr().err
    assert not (out / "config.json").exists() and not (out / "data.json").exists()
    assert main([*args, *cnn, "--set", "data.synthetic_size=64", "--batch-size", "8", "--no-report"]) == 0


def test_resume_keeps_the_runs_normalisation(tmp_path):
    """A fine-tuning run normalises as its checkpoint did; a resume must not switch to the dataset's stats."""
    from vitkit.train.loop import _recorded_normalisation
    from vitkit.train.runfiles import write_json

    splits = load_dataset(tiny_run().data, img_size=16, seed=0)
    assert _recorded_normalisation(str(tmp_path), splits) is splits  # no data.json yet
    write_json(str(tmp_path / "data.json"), splits.info() | {"mean": [0.5], "std": [0.5]})
    kept = _recorded_normalisation(str(tmp_path), splits)
    assert kept.mean == (0.5,) and kept.std == (0.5,) and splits.mean != (0.5,)


def test_steps_override_epochs():
    cfg = tiny_run(steps=3)
    tr = _trainer(cfg)
    assert tr.total == 3
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=0, epochs=2))
    assert _trainer(cfg).total == 2 * (256 // 32)


def test_accumulation_equals_large_batch_with_keyed_dropout():
    def cfg(**kw):
        c = tiny_run(batch_size=32, **kw)
        m = dataclasses.replace(c.model, drop_rate=0.1, attn_drop_rate=0.1, drop_path_rate=0.2)
        return dataclasses.replace(c, model=m, optim=OptimConfig(name="sgd", lr=0.05, warmup_steps=0))

    big, small = _trainer(cfg()), _trainer(cfg(micro_batch_size=8))
    for _ in range(2):
        big.train_step()
        small.train_step()
    for (name, a), b in zip(big.model.named_parameters(), small.model.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5, msg=name)


def _dropout_vit(depth: int) -> torch.nn.Module:
    """A tiny ViT with every kind of dropout on, in training mode."""
    kw = dict(img_size=8, in_chans=1, num_classes=3, embed_dim=12, num_heads=3, mlp_dim=24)
    return create_model(
        "ViT-Ti/4", depth=depth, drop_rate=0.3, attn_drop_rate=0.3, drop_path_rate=0.3, **kw
    ).train()


def test_keyed_dropout_depends_on_sample_not_batch():
    from vitkit import keyed_random

    model = _dropout_vit(depth=2)
    x = torch.randn(4, 1, 8, 8)
    idx = torch.tensor([10, 11, 12, 13])
    with keyed_random.keyed(7, idx):
        full = model(x)
    with keyed_random.keyed(7, idx[2:]):
        part = model(x[2:])
    torch.testing.assert_close(part, full[2:], rtol=0, atol=1e-6)
    with keyed_random.keyed(8, idx):
        assert not torch.allclose(model(x), full)


@pytest.mark.parametrize("keyed", [False, True])
def test_dropout_rates_of_one_drop_everything_without_nan(keyed):
    """Rates of 1 (the config's upper bound): every element and every residual branch dropped, no 0/0 as timm."""
    from vitkit import keyed_random
    from vitkit.models.layers import Dropout, drop_path

    x = torch.randn(4, 3, 5)
    with keyed_random.keyed(7, torch.arange(4)) if keyed else contextlib.nullcontext():
        assert torch.equal(Dropout(1.0).train()(x), torch.zeros_like(x))
        assert torch.equal(drop_path(x, 1.0, training=True, rng_id=3), torch.zeros_like(x))
        model = create_model("ViT-Ti/4", img_size=8, in_chans=1, num_classes=3, depth=2, drop_path_rate=1.0)
        assert torch.isfinite(model.train()(torch.randn(4, 1, 8, 8))).all()


def test_keyed_dropout_compiles_once_for_every_key():
    """torch.compile reads the key as a tensor: new keys reuse the graph and draw the eager masks."""
    from torch._dynamo.testing import CompileCounter

    from vitkit import keyed_random

    model = _dropout_vit(depth=3)  # drop path rates 0, 0.15, 0.3: one graph all the same
    counter = CompileCounter()
    compiled = torch.compile(model, backend=counter, dynamic=False, fullgraph=True)  # no graph break
    x, idx = torch.randn(4, 1, 8, 8), torch.tensor([10, 11, 12, 13])
    for key in (7, 8, 2**31 + 5):
        with keyed_random.keyed(key, idx):
            torch.testing.assert_close(compiled(x), model(x), rtol=0, atol=1e-6)
    assert counter.frame_count == 1


@pytest.mark.parametrize(
    "data",
    [
        dict(crop_padding=2, hflip=True),
        dict(crop_padding=2, hflip=True, random_erasing=0.25),
        dict(random_resized_crop=True, low_res=0.5),
    ],
    ids=["crop-flip", "crop-flip-erase", "rrc-lowres"],
)
def test_training_runs_the_graph_compiled_at_start_up(data, monkeypatch):
    """The trial compilation at start-up is the graph training runs: no recompilation at the first step (once,
    cropped one-channel batches had strides, and keyed drop path a context, that made it compile twice)."""
    import torch._dynamo
    from torch._dynamo.eval_frame import OptimizedModule
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()  # no cache or recompile count left by other tests
    counter, real = CompileCounter(), torch.compile
    monkeypatch.setattr(torch, "compile", lambda m, **kw: real(m, backend=counter, **kw))
    cfg = tiny_run(compile=True, steps=3, micro_batch_size=16)
    model = dataclasses.replace(cfg.model, drop_rate=0.1, attn_drop_rate=0.1, drop_path_rate=0.1)  # keyed
    cfg = dataclasses.replace(cfg, model=model, data=dataclasses.replace(cfg.data, **data))
    tr = _trainer(cfg)
    assert (
        isinstance(tr.fwd, OptimizedModule) and counter.frame_count == 1
    )  # compiled, not the eager fallback
    with torch._dynamo.config.patch(error_on_recompile=True):
        for _ in range(3):
            tr.train_step()
    assert counter.frame_count == 1


def test_compile_mode_reaches_torch_compile(monkeypatch):
    """train.compile_mode is handed to torch.compile ("default" as its None); a bad mode names the key."""
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    modes, counter, real = [], CompileCounter(), torch.compile

    def fake(m, mode=None, **kw):
        modes.append(mode)
        return real(m, backend=counter, **kw)

    monkeypatch.setattr(torch, "compile", fake)
    for mode, expected in (("reduce-overhead", "reduce-overhead"), ("default", None)):
        tr = _trainer(tiny_run(compile=True, compile_mode=mode, steps=2))
        assert not tr.graphs  # CUDA graph steps are marked on CUDA only
        tr.train_step()
        assert modes[-1] == expected and all(torch.isfinite(p).all() for p in tr.model.parameters())
    with pytest.raises(ValueError, match=r"train\.compile_mode='fast'"):
        tiny_run(compile=True, compile_mode="fast")


@pytest.mark.parametrize("depth", [4, 6])
def test_compile_scope_blocks_shares_one_graph_between_identical_blocks(depth, monkeypatch):
    """compile_scope=blocks: one graph for all the blocks alike and one for the class-token-only last block,
    whatever the depth; training matches eager; evaluation runs eagerly (no graph for its batch)."""
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    counter, real = CompileCounter(), torch.compile
    monkeypatch.setattr(torch, "compile", lambda m, mode=None, **kw: real(m, backend=counter, **kw))
    cfg = tiny_run(compile=True, compile_scope="blocks", steps=3)
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, depth=depth))
    tr = _trainer(cfg)
    assert len(tr.regions) == depth and counter.frame_count == 2
    ref = _trainer(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, compile=False)))
    with torch._dynamo.config.patch(error_on_recompile=True):
        for _ in range(2):
            tr.train_step()
            ref.train_step()
        tr.evaluate()
        tr.train_step()  # compiled again after evaluation: the same graphs, no new one
        ref.train_step()
    assert counter.frame_count == 2 and all(b._compiled_call_impl is not None for b in tr.regions)
    for p, q in zip(tr.model.parameters(), ref.model.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-6)


def test_compile_scope_blocks_falls_back_to_eager_when_compiling_fails(monkeypatch):
    def broken(gm, example_inputs):
        raise RuntimeError("no compiler here")

    torch._dynamo.reset()
    real = torch.compile
    monkeypatch.setattr(torch, "compile", lambda m, mode=None, **kw: real(m, backend=broken, **kw))
    tr = _trainer(tiny_run(compile=True, compile_scope="blocks", steps=2))
    assert tr.regions == [] and all(b._compiled_call_impl is None for b in tr.model.blocks)
    tr.train_step()
    assert all(torch.isfinite(p).all() for p in tr.model.parameters())


@pytest.mark.parametrize("precision", ["fp32", "bf16-pure"])
def test_cuda_graph_steps_are_marked_once_per_micro_batch(precision, monkeypatch):
    """With CUDA graphs, each forward starts a new graph-tree step (the CPU runs the same code path)."""
    marks = []
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: marks.append(1))
    micro = 8 if precision == "bf16-pure" else 0  # fp32 with micro-batches is refused with CUDA graphs
    tr = _trainer(tiny_run(precision=precision, micro_batch_size=micro, steps=2))
    tr.graphs = True
    tr.train_step()
    assert len(marks) == (4 if micro else 1)


def test_cuda_graphs_refuse_what_they_cannot_train():
    from vitkit.train.compiling import check_graphs

    check_graphs("bf16-pure", micro_batches=True, world=1)
    check_graphs("bf16", micro_batches=False, world=1)
    with pytest.raises(ValueError, match=r"reduce-overhead with train\.micro_batch_size"):
        check_graphs("bf16", micro_batches=True, world=1)
    with pytest.raises(ValueError, match="runs in one process"):
        check_graphs("bf16-pure", micro_batches=False, world=2)
    with pytest.raises(ValueError, match=r"reduce-overhead with train\.grad_checkpointing"):
        check_graphs("bf16-pure", micro_batches=False, world=1, checkpointing=True)


def test_compile_scope_blocks_needs_blocks():
    cfg = tiny_run(compile=True, compile_scope="blocks", steps=1)
    resnet = ModelConfig(name="ResNet-26", arch="resnet", backbone=(1, 2, 4, 1), img_size=16, in_chans=1)
    with pytest.raises(ValueError, match=r"train\.compile_scope='blocks': ResNet-26"):
        _trainer(dataclasses.replace(cfg, model=resnet))
    with pytest.raises(ValueError, match=r"train\.compile_scope='layers'"):
        tiny_run(compile_scope="layers")


def test_bf16_pure_keeps_batchnorm_fp32_and_its_statistics_in_the_master():
    """bf16-pure on a batch-norm ResNet: BatchNorm runs in fp32 on the master's running statistics (they once
    stayed at their initial values in the master, which evaluation and checkpoints read)."""
    cfg = tiny_run(precision="bf16-pure", steps=3)
    # 32 px: at 16 px the last stage's strided 3x3 conv sees a 1x1 map, where torch 2.14's CPU bf16 conv
    # sometimes returns NaN weight gradients (uninitialised memory; reproduced with a lone nn.Conv2d)
    resnet = ModelConfig(name="ResNet-26", arch="resnet", backbone=(1, 2, 4, 1), img_size=32, in_chans=1)
    tr = _trainer(dataclasses.replace(cfg, model=resnet))
    pairs = [
        (w, m)
        for w, m in zip(tr.bf16_copy.work.modules(), tr.model.modules())
        if isinstance(m, torch.nn.BatchNorm2d)
    ]
    start = [m.running_var.clone() for _, m in pairs]
    for _ in range(3):
        tr.train_step()
    for (w, m), v0 in zip(pairs, start):
        assert w.running_mean is m.running_mean and w.running_var is m.running_var
        assert int(m.num_batches_tracked) == 3 and not torch.equal(m.running_var, v0)
        assert w.weight.dtype == torch.float32, w.weight.dtype
        assert torch.equal(w.weight, m.weight), (w.weight - m.weight).abs().max()  # pulled after the step
    convs = [w for w in tr.bf16_copy.work.modules() if isinstance(w, torch.nn.Conv2d)]
    assert all(c.weight.dtype == torch.bfloat16 for c in convs)
    assert 0 <= tr.evaluate()["top1"] <= 1


def test_start_up_compilation_leaves_batchnorm_statistics_alone(monkeypatch):
    """The trial compilation's dummy batch runs in training mode: BatchNorm must not count it."""
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    counter, real = CompileCounter(), torch.compile
    monkeypatch.setattr(torch, "compile", lambda m, mode=None, **kw: real(m, backend=counter, **kw))
    resnet = ModelConfig(name="ResNet-26", arch="resnet", backbone=(1, 2, 4, 1), img_size=16, in_chans=1)
    tr = _trainer(dataclasses.replace(tiny_run(compile=True, steps=1), model=resnet))
    assert counter.frame_count == 1
    bns = [m for m in tr.model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(int(m.num_batches_tracked) == 0 for m in bns)
    assert all(torch.equal(m.running_mean, torch.zeros_like(m.running_mean)) for m in bns)
    assert all(torch.equal(m.running_var, torch.ones_like(m.running_var)) for m in bns)


def test_ema_follows_batchnorm_statistics_and_loads_older_checkpoints():
    """EMA of a batch-norm model averages the running statistics too (evaluated and saved with the EMA weights);
    a checkpoint whose ema holds parameters only (before this) starts the statistics' average at their values."""
    resnet = ModelConfig(name="ResNet-26", arch="resnet", backbone=(1, 2, 4, 1), img_size=16, in_chans=1)
    tr = _trainer(dataclasses.replace(tiny_run(ema_decay=0.5, steps=4), model=resnet))
    names = tr._ema_names()
    assert any(n.endswith("running_mean") for n in names) and any(n.endswith("running_var") for n in names)
    assert not any(n.endswith("num_batches_tracked") for n in names)
    i = next(k for k, n in enumerate(names) if n.endswith("running_var"))
    expected = tr._ema_live()[i].clone()
    for _ in range(3):
        tr.train_step()
        expected = 0.5 * expected + 0.5 * tr._ema_live()[i]
    torch.testing.assert_close(tr.ema[i], expected, rtol=0, atol=1e-6)
    live = tr._ema_live()[i].clone()
    assert not torch.equal(live, tr.ema[i])
    raw = tr._swap_ema()  # what evaluate(use_ema=True) runs the model with
    assert torch.equal(tr._ema_live()[i], tr.ema[i])
    tr._restore(raw)
    assert torch.equal(tr._ema_live()[i], live)
    assert torch.equal(tr.final_weights()[names[i]], tr.ema[i].cpu())
    weights, state = tr.state()
    assert set(weights["ema"]) == set(names)
    old = {n: t for n, t in weights["ema"].items() if n in dict(tr.model.named_parameters())}
    again = _trainer(dataclasses.replace(tiny_run(ema_decay=0.5, steps=4), model=resnet))
    with tempfile.TemporaryDirectory() as d:
        save_checkpoint(d, 3, {"model": weights["model"], "ema": old}, state)
        again.load_state(latest_valid(d))
    assert torch.equal(again.ema[i], again._ema_live()[i]) and torch.equal(again._ema_live()[i], live)
    p = next(k for k, n in enumerate(names) if n in old)
    assert torch.equal(again.ema[p], tr.ema[p])


def test_bf16_pure_steps_fp32_master_and_resumes_exactly(tmp_path):
    """bf16-pure: a bf16 working copy, fp32 master weights that track an autocast run; exact resume."""
    cfg = tiny_run(precision="bf16-pure", micro_batch_size=16, steps=4)
    pure, amp = _trainer(cfg), _trainer(tiny_run(precision="bf16", micro_batch_size=16, steps=4))
    start = [p.detach().clone() for p in pure.model.parameters()]
    for _ in range(3):
        pure.train_step()
        amp.train_step()
    work = dict(pure.bf16_copy.work.named_parameters())
    for name, p in pure.model.named_parameters():
        assert p.dtype == torch.float32 and work[name].dtype == torch.bfloat16
        assert torch.equal(work[name], p.detach().to(torch.bfloat16)), name  # pulled after the step
        assert work[name].grad is None and p.grad is None
    flat = lambda ps: torch.cat([p.detach().flatten() for p in ps])  # noqa: E731
    p, q, p0 = flat(pure.model.parameters()), flat(amp.model.parameters()), flat(start)
    # bf16 rounding moves the master off the autocast run by a fraction of what the steps moved it (Adam
    # turns the noise of the key bias's exactly-zero gradient into full steps, so compare the whole model)
    assert (p - q).norm() <= 0.25 * (q - p0).norm()
    out = str(tmp_path)
    pure.out = out
    pure.save()
    resumed = Trainer(pure.cfg, out, pure.splits, D.DistInfo(), torch.device("cpu"))
    from vitkit.train.checkpoint import latest_valid

    resumed.load_state(latest_valid(os.path.join(out, "checkpoints")))
    pure.train_step()
    resumed.train_step()
    for a, b in zip(pure.model.parameters(), resumed.model.parameters()):
        assert torch.equal(a, b)
    assert pure.evaluate()["top1"] == resumed.evaluate()["top1"]


def test_bf16_copy_sums_micro_batch_gradients_in_fp32_exactly():
    """accumulate_grads: the master's fp32 gradient is the exact fp32 sum of each backward's bf16 gradients."""
    from vitkit.train.master import Bf16Copy

    torch.manual_seed(0)
    master = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 3))
    master[2].bias.requires_grad_(False)  # a parameter without a gradient stays without one
    copy = Bf16Copy(master)
    want = [torch.zeros_like(p) for p in master.parameters()]
    for _ in range(3):
        copy.work(copy.input(torch.randn(4, 8))).float().square().sum().backward()
        for w, p in zip(want, copy.work.parameters()):
            if p.grad is not None:
                w += p.grad.float()
        copy.accumulate_grads()
        assert all(p.grad is None for p in copy.work.parameters())
    for w, p in zip(want, master.parameters()):
        if p.requires_grad:
            assert p.grad.dtype == torch.float32 and torch.equal(p.grad, w)
        else:
            assert p.grad is None
    # a gradient that first appears in a later micro-batch, beside ones being summed, in the same call
    master.zero_grad(set_to_none=True)
    x = copy.input(torch.randn(4, 8))
    copy.work[0](x).float().sum().backward()  # the first layer only
    copy.accumulate_grads()
    first = [p.grad.clone() for p in master[0].parameters()]
    assert master[2].weight.grad is None
    copy.work(x).float().sum().backward()  # now the last layer's weight too
    w2 = copy.work[2].weight.grad.float()
    sums = [f + p.grad.float() for f, p in zip(first, copy.work[0].parameters())]
    copy.accumulate_grads()
    assert torch.equal(master[2].weight.grad, w2)
    assert all(torch.equal(p.grad, s) for p, s in zip(master[0].parameters(), sums))


def test_keyed_randomness_refuses_a_second_thread():
    import threading

    from vitkit import keyed_random

    errors = []

    def other() -> None:
        try:
            with keyed_random.keyed(2, torch.arange(3)):
                pass
        except RuntimeError as e:
            errors.append(str(e))

    with keyed_random.keyed(1, torch.arange(3)):
        with keyed_random.keyed(5, torch.arange(2)):  # nesting in one thread is fine
            assert keyed_random.current()[0] == 5
        t = threading.Thread(target=other)
        t.start()
        t.join()
        assert keyed_random.current()[0] == 1
    assert keyed_random.current() is None and errors and "another thread" in errors[0]


def _saved_bytes_and_grads(model, x, key=7):
    """Bytes the forward saves for backward, and the gradients, of one keyed forward + backward."""
    from vitkit import keyed_random

    model.zero_grad()
    saved = [0]

    def pack(t):
        saved[0] += t.numel() * t.element_size()
        return t

    with (
        torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t),
        keyed_random.keyed(key, torch.arange(len(x))),
    ):
        out = model(x)
    out.square().sum().backward()
    return saved[0], [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("pool", ["token", "gap"])
def test_grad_checkpointing_same_gradients_far_less_activation_memory(pool, monkeypatch):
    """Checkpointed blocks recompute in backward with the forward's keyed dropout masks (also outside a keyed
    context, where torch's RNG state is replayed): the gradients are the same, the saved activations a fraction."""
    model = create_model(
        "ViT-Ti/4", img_size=16, in_chans=3, num_classes=5, depth=3, pool=pool, drop_rate=0.1, attn_drop_rate=0.1,
        drop_path_rate=0.2,
    ).train()  # fmt: skip
    x = torch.randn(4, 3, 16, 16)
    plain_bytes, plain = _saved_bytes_and_grads(model, x)
    model.set_grad_checkpointing(True)
    ckpt_bytes, ckpt = _saved_bytes_and_grads(model, x)
    assert ckpt_bytes < plain_bytes / 5
    for a, b in zip(plain, ckpt):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.manual_seed(3)  # no keyed context: torch's own dropout, replayed by the checkpoint
    model.zero_grad()
    model(x).square().sum().backward()
    unkeyed = [p.grad.clone() for p in model.parameters()]
    model.set_grad_checkpointing(False)
    torch.manual_seed(3)
    model.zero_grad()
    model(x).square().sum().backward()
    for a, p in zip(unkeyed, model.parameters()):
        torch.testing.assert_close(a, p.grad, rtol=0, atol=0)
    model.set_grad_checkpointing(True)
    calls = []
    import vitkit.models.checkpointing as checkpointing_module

    real = checkpointing_module.checkpoint
    monkeypatch.setattr(
        checkpointing_module, "checkpoint", lambda *a, **kw: calls.append(1) or real(*a, **kw)
    )
    with torch.no_grad():  # nothing to recompute without a backward: the plain forward
        model(x)
    model.eval()(x).sum().backward()  # evaluation mode: neither
    assert not calls
    model.train()(x).sum().backward()
    assert len(calls) == 3


@pytest.mark.parametrize(
    "name", ["ResNet-26", "BiT-R26x1", "SASA-ResNet-26", "AA-ResNet-26", "R26+ViT-S/32", "R+ViT-Ti/16"]
)
def test_grad_checkpointing_of_cnns_and_hybrids_changes_nothing_but_memory(name):
    """Each bottleneck (and a hybrid's ResNet units) recomputed in backward: the same gradients with drop path,
    the same BatchNorm running statistics (torch's checkpoint would update them twice), fewer saved bytes;
    compiled (AOTAutograd recomputes in its graph), the same again."""
    kw = dict(depth=1) if "ViT" in name else {}
    model = create_model(name, img_size=32, in_chans=1, num_classes=3, drop_path_rate=0.3, **kw).train()
    x = torch.randn(4, 1, 32, 32)
    states, grads, saved = [], [], []
    for on in (False, True):
        m = copy.deepcopy(model)
        m.set_grad_checkpointing(on)
        n, g = _saved_bytes_and_grads(m, x)
        states.append(m.state_dict())
        grads.append(g)
        saved.append(n)
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    for k, v in states[0].items():
        torch.testing.assert_close(v, states[1][k], rtol=0, atol=0, msg=k)
    assert saved[1] < saved[0] / (1.5 if name == "R+ViT-Ti/16" else 2)  # its root alone is not checkpointed
    if name != "ResNet-26":  # BatchNorm's statistics, compiled
        return
    compiled = []
    for on in (False, True):
        m = copy.deepcopy(model)
        m.set_grad_checkpointing(on)
        _, g = _saved_bytes_and_grads(torch.compile(m, backend="aot_eager"), x)
        compiled.append((m.state_dict(), g))
    for a, b in zip(compiled[0][1], compiled[1][1]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    for k, v in compiled[0][0].items():
        torch.testing.assert_close(v, compiled[1][0][k], rtol=0, atol=0, msg=k)


def test_checkpointed_batch_norm_updates_once_compiled_across_a_graph_break():
    """Was: a checkpointed block that broke the compiled graph was recomputed eagerly without the restore, and
    its BatchNorm statistics moved twice."""
    from vitkit.models.checkpointing import run_blocks

    class Unit(torch.nn.Module):
        def __init__(self, breaks: bool):
            super().__init__()
            self.conv, self.norm, self.breaks = (
                torch.nn.Conv2d(2, 2, 3, padding=1),
                torch.nn.BatchNorm2d(2),
                breaks,
            )

        def forward(self, x):
            if self.breaks:
                torch._dynamo.graph_break()
            return torch.relu(self.norm(self.conv(x))) + x

    class Net(torch.nn.Module):
        def __init__(self, on: bool):
            super().__init__()
            self.units, self.on = torch.nn.ModuleList([Unit(False), Unit(True)]), on

        def forward(self, x):
            return run_blocks(self.units, x, self.on)

    torch.manual_seed(0)
    states = []
    for on, compiled in ((False, False), (True, False), (True, True)):
        torch.manual_seed(0)
        net = Net(on).train()
        run = torch.compile(net, backend="aot_eager") if compiled else net
        run(torch.randn(4, 2, 8, 8)).square().sum().backward()
        states.append(net.state_dict())
    for state in states[1:]:
        for k, v in states[0].items():
            torch.testing.assert_close(v, state[k], rtol=0, atol=1e-6, msg=k)
    assert int(states[2]["units.1.norm.num_batches_tracked"]) == 1


def test_grad_checkpointing_compiles_and_trains_as_without(monkeypatch):
    """Compiled (AOTAutograd traces the recomputation) and through the trainer with dropout, bf16-pure and
    micro-batches: the same weights after two steps as without checkpointing."""
    model = _dropout_vit(depth=2)
    x = torch.randn(4, 1, 8, 8)
    _, plain = _saved_bytes_and_grads(model, x)
    _, plain8 = _saved_bytes_and_grads(model, x, key=8)
    model.set_grad_checkpointing(True)
    from torch._dynamo.testing import CompileCounterWithBackend

    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(model, backend=counter)
    for key, want in ((7, plain), (8, plain8)):  # the second key reuses the graph, with its own masks
        _, ckpt = _saved_bytes_and_grads(compiled, x, key=key)
        for a, b in zip(want, ckpt):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert counter.frame_count == 1

    def cfg(**kw):
        c = tiny_run(batch_size=16, micro_batch_size=8, precision="bf16-pure", **kw)
        m = dataclasses.replace(c.model, drop_rate=0.1, attn_drop_rate=0.1, drop_path_rate=0.2)
        return dataclasses.replace(c, model=m)

    plain_run, ckpt_run = _trainer(cfg()), _trainer(cfg(grad_checkpointing=True))
    assert ckpt_run.model.grad_checkpointing and ckpt_run.bf16_copy.work.grad_checkpointing
    for _ in range(2):
        plain_run.train_step()
        ckpt_run.train_step()
    for (name, a), b in zip(plain_run.model.named_parameters(), ckpt_run.model.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


def test_training_time_counts_the_steps_between_checkpoints(tmp_path, monkeypatch):
    """Was: a checkpoint inside a logging window dropped the window's time so far (checkpoints every step:
    0 s of training, an absurd img/s)."""
    import vitkit.train.trainer as trainer_module

    real_step = trainer_module.Trainer.train_step

    def slow_step(self):
        time.sleep(0.02)
        return real_step(self)

    monkeypatch.setattr(trainer_module.Trainer, "train_step", slow_step)
    cfg = tiny_run(steps=10, log_every=100, checkpoint_every=1)
    summary = train(cfg, str(tmp_path / "run"))
    assert summary["train_seconds"] >= 10 * 0.02


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_sigint_or_sigterm_checkpoints_the_step_and_resumes_exactly(
    tmp_path, monkeypatch, capsys, caplog, signum
):
    """Was: Ctrl-C (and a scheduler's SIGTERM) lost every step since the last checkpoint (up to an epoch)."""
    from safetensors.torch import load_file

    import vitkit.train.trainer as trainer_module

    sigint_before = signal.getsignal(signal.SIGINT)  # SIG_IGN in a job a shell started in the background
    ref = tmp_path / "ref"
    flags = [*TINY_FLAGS, "--epochs", "2", "--no-progress", "--no-report"]
    assert main(["train", *flags, "--out", str(ref)]) == 0
    real_step = trainer_module.Trainer.train_step

    def step_then_signal(self):
        out = real_step(self)
        if self.step == 5:
            os.kill(os.getpid(), signum)  # as a terminal's Ctrl-C or a scheduler would, mid-epoch
        return out

    monkeypatch.setattr(trainer_module.Trainer, "train_step", step_then_signal)
    run = tmp_path / "run"
    with caplog.at_level("WARNING"):
        assert main(["train", *flags, "--out", str(run)]) == 128 + signum
    assert f"interrupted ({signal.Signals(signum).name})" in capsys.readouterr().err
    assert (
        f"stopped at step 5 of 32, checkpointed: continue with `vitkit train --resume {run}`" in caplog.text
    )
    assert (run / "checkpoints" / "step-00000005").is_dir() and not (run / "model.safetensors").exists()
    assert signal.getsignal(signal.SIGINT) is sigint_before  # handlers put back
    monkeypatch.setattr(trainer_module.Trainer, "train_step", real_step)
    assert main(["train", "--resume", str(run), "--no-progress", "--no-report"]) == 0
    ours, want = load_file(str(run / "model.safetensors")), load_file(str(ref / "model.safetensors"))
    for k, v in want.items():
        torch.testing.assert_close(ours[k], v, rtol=0, atol=0, msg=k)


def test_a_signal_during_evaluation_checkpoints_and_a_second_one_stops_at_once(tmp_path, monkeypatch, caplog):
    """Was: a signal that came during an epoch's evaluation stopped without a checkpoint (it said it had made
    one); a second SIGTERM was reported as SIGINT (exit 130, not 143)."""
    import vitkit.train.trainer as trainer_module

    real_eval, real_step = trainer_module.Trainer.eval_and_log, trainer_module.Trainer.train_step

    def eval_then_signal(self, *a, **kw):
        out = real_eval(self, *a, **kw)
        if self.step == 16:  # the end of the first epoch, not a checkpoint step
            os.kill(os.getpid(), signal.SIGINT)
        return out

    monkeypatch.setattr(trainer_module.Trainer, "eval_and_log", eval_then_signal)
    run = tmp_path / "run"
    flags = [*TINY_FLAGS, "--epochs", "3", "--checkpoint-every", "100", "--no-progress", "--no-report"]
    with caplog.at_level("WARNING"):
        assert (
            main(["train", *flags, "--set", "train.eval_every=1", "--out", str(run)]) == 128 + signal.SIGINT
        )
    assert (run / "checkpoints" / "step-00000016").is_dir() and "stopped at step 16 of 48" in caplog.text

    def step_then_two_signals(self):
        out = real_step(self)
        if self.step == 3:
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGTERM)  # the second: at once, no checkpoint
        return out

    monkeypatch.setattr(trainer_module.Trainer, "eval_and_log", real_eval)
    monkeypatch.setattr(trainer_module.Trainer, "train_step", step_then_two_signals)
    assert main(["train", *flags, "--out", str(tmp_path / "twice")]) == 128 + signal.SIGTERM
    assert not list((tmp_path / "twice" / "checkpoints").glob("step-*"))
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL

    def signal_at_epoch_end(self):
        out = real_step(self)
        if self.step == 16:
            os.kill(os.getpid(), signal.SIGTERM)
        return out

    monkeypatch.setattr(
        trainer_module.Trainer, "train_step", signal_at_epoch_end
    )  # stop with an evaluation due
    ends = tmp_path / "ends"
    args = [*flags, "--set", "train.eval_every=1", "--out", str(ends)]
    assert main(["train", *args]) == 128 + signal.SIGTERM
    monkeypatch.setattr(trainer_module.Trainer, "train_step", real_step)
    assert main(["train", "--resume", str(ends), "--no-progress", "--no-report"]) == 0
    assert main(["train", *args[:-1], str(tmp_path / "plain")]) == 0
    evals = [
        [
            json.loads(line)["step"]
            for line in (run / "metrics.jsonl").read_text().splitlines()
            if "split" in line
        ]
        for run in (ends, tmp_path / "plain")
    ]
    assert evals[0] == evals[1] and 16 in evals[0]  # the due evaluation made once, as without the stop


def test_a_process_killed_during_a_stops_evaluation_does_it_when_resumed(tmp_path, monkeypatch):
    """Was: a stop checkpoints before the evaluation due at its step; a process killed during that evaluation (a
    scheduler's SIGKILL after SIGTERM's grace) resumed after it, and the evaluation was never made."""
    import vitkit.train.trainer as trainer_module

    real_eval, real_step = trainer_module.Trainer.eval_and_log, trainer_module.Trainer.train_step

    class Killed(BaseException):
        pass

    def signal_at_epoch_end(self):
        out = real_step(self)
        if self.step == 16:
            os.kill(os.getpid(), signal.SIGTERM)
        return out

    def die_in_eval(self, *a, **kw):
        self.metrics.write({"step": self.step, "split": "test", "top1": -1.0})  # half-logged, then killed
        raise Killed

    monkeypatch.setattr(trainer_module.Trainer, "train_step", signal_at_epoch_end)
    monkeypatch.setattr(trainer_module.Trainer, "eval_and_log", die_in_eval)
    flags = [*TINY_FLAGS, "--epochs", "3", "--checkpoint-every", "100", "--no-progress", "--no-report"]
    run, plain = tmp_path / "run", tmp_path / "plain"
    with pytest.raises(Killed):
        main(["train", *flags, "--set", "train.eval_every=1", "--out", str(run)])
    assert (run / "checkpoints" / "step-00000016").is_dir()
    monkeypatch.setattr(trainer_module.Trainer, "train_step", real_step)
    monkeypatch.setattr(trainer_module.Trainer, "eval_and_log", real_eval)
    assert main(["train", "--resume", str(run), "--no-progress", "--no-report"]) == 0
    assert main(["train", *flags, "--set", "train.eval_every=1", "--out", str(plain)]) == 0

    def evals(folder):
        recs = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
        return [(r["step"], r["split"], r["top1"]) for r in recs if "split" in r]

    assert evals(run) == evals(plain) and (16, "test", -1.0) not in evals(run)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["best_test_top1"] == json.loads((plain / "summary.json").read_text())["best_test_top1"]


def test_tensorboard_purges_what_a_resumed_run_logged_after_its_checkpoint(tmp_path, monkeypatch):
    """Was: metrics.jsonl was cut back to the checkpoint on resume but TensorBoard's events were not, so the steps
    after it were logged twice."""
    import sys
    import types

    opened = []

    class Writer:
        def __init__(self, logdir, purge_step=None):
            opened.append(purge_step)

        def add_scalar(self, *a):
            pass

        def close(self):
            pass

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=Writer))
    run = tmp_path / "run"
    flags = [*TINY_FLAGS, "--epochs", "1", "--checkpoint-every", "4", "--no-progress", "--no-report"]
    assert main(["train", *flags, "--tensorboard", "--out", str(run)]) == 0
    shutil.rmtree(run / "checkpoints" / "step-00000016")  # as if killed after step 15: back to step 12
    assert main(["train", "--resume", str(run), "--tensorboard", "--no-progress", "--no-report"]) == 0
    assert opened == [None, 13]


def test_data_scaling_bench_trains_each_fraction_with_a_held_out_split(monkeypatch, tmp_path, capsys):
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "bench" / "data_scaling.py"
    spec = importlib.util.spec_from_file_location("data_scaling", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    monkeypatch.setattr(
        bench, "get_recipe", lambda name: tiny_run(epochs=1)
    )  # the synthetic dataset, tiny ViT
    out = tmp_path / "r.json"
    argv = [
        "data_scaling.py",
        "--recipes",
        "tiny",
        "--fractions",
        "0.25",
        "1.0",
        "--steps",
        "6",
        "--json",
        str(out),
    ]
    monkeypatch.setattr(sys, "argv", argv)
    assert bench.main() == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["fraction"] for r in rows] == [0.25, 1.0] and rows[0]["train_images"] < rows[1]["train_images"]
    assert all(0 <= r["test_top1_at_best_val"] <= 1 and r["best_val_top1"] >= 0 for r in rows)
    assert "final / at best val" in capsys.readouterr().out


class _Boom:
    """Unpickling this would run os.system (a weights-only load refuses it)."""

    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


@pytest.mark.parametrize(
    ("state", "says"),
    [
        (
            {"step": _Boom()},
            r"state\.pt cannot be loaded safely \(.*\); vitkit loads tensors and plain data only$",
        ),
        ([1, 2], r"state\.pt: expected a dict, got list$"),
        ({"step": 3, "optimizer": 7}, r"state\.pt: 'optimizer' must be a dict, got 7$"),
    ],
    ids=["pickled-code", "not-a-dict", "wrong-structure"],
)
def test_a_bad_state_pt_is_one_line_naming_it_when_resuming(tmp_path, capsys, state, says):
    """Was: an unsafe pickle's error ran over many lines and advised weights_only=False; a state of the wrong
    structure (its manifest matching) was a TypeError traceback."""
    import hashlib
    import re

    run = tmp_path / "run"
    flags = [*TINY_FLAGS, "--steps", "4", "--checkpoint-every", "2", "--no-progress", "--no-report"]
    assert main(["train", *flags, "--out", str(run)]) == 0
    ckpt = run / "checkpoints" / "step-00000004"
    torch.save(state, ckpt / "state.pt")
    manifest = json.loads((ckpt / "manifest.json").read_text())
    data = (ckpt / "state.pt").read_bytes()
    manifest["files"]["state.pt"] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (ckpt / "manifest.json").write_text(json.dumps(manifest))
    assert main(["train", "--resume", str(run), "--no-progress", "--no-report", "--steps", "6"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.search(says, err[0]), err


def test_a_class_count_the_dataset_replaces_is_warned_of(caplog):
    """Was: --set model.num_classes=3 (or in_chans) on a 10-class grey dataset was replaced without a word."""
    cfg = apply_overrides(tiny_run(steps=1), ["model.num_classes=3", "model.in_chans=3"])
    splits = load_dataset(cfg.data, img_size=cfg.model.img_size)
    with caplog.at_level("WARNING"):
        resolved = resolve_for_data(cfg, splits)
    assert (resolved.model.num_classes, resolved.model.in_chans) == (splits.num_classes, splits.in_chans)
    assert f"model.num_classes=3 replaced by {splits.num_classes}" in caplog.text
    assert f"model.in_chans=3 replaced by {splits.in_chans}" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        resolve_for_data(resolved, splits)
    assert "replaced" not in caplog.text
    # a named recipe's own 10 grey classes on a 3-class RGB folder: the user chose neither, so no warning
    from vitkit.recipes import get_recipe

    recipe = get_recipe("fashion-mnist")
    other = types.SimpleNamespace(num_classes=3, in_chans=3)
    caplog.clear()
    with caplog.at_level("INFO"):
        resolve_for_data(recipe, other)
    assert "model.num_classes=10 replaced by 3" in caplog.text
    assert all(r.levelname == "INFO" for r in caplog.records if "replaced" in r.message)


def test_a_resume_that_fails_leaves_the_run_as_it_was(tmp_path, capsys):
    """Was: `--resume RUN --data-dir OTHER` (another class count) rewrote config.json and data.json before the
    checkpoint was found not to fit, so neither a plain --resume nor eval worked on the run afterwards."""
    from test_data import write_folder

    for root, classes in (("if1", ("ant", "bee", "cow")), ("if2", ("ant", "bee", "cow", "doe"))):
        write_folder(str(tmp_path / root), "train", classes, n=4, modes=("RGB",))
        write_folder(str(tmp_path / root), "val", classes, n=2, modes=("RGB",))
    run = tmp_path / "run"
    flags = [
        "--dataset",
        "imagefolder",
        "--device",
        "cpu",
        "--batch-size",
        "4",
        "--no-progress",
        "--no-report",
    ]
    flags += ["--set", "model.img_size=16", "--set", "model.embed_dim=32", "--set", "model.depth=1"]
    flags += ["--set", "model.num_heads=2", "--set", "model.mlp_dim=64", "--set", "model.patch_size=4"]
    flags += ["--set", "train.compile=false", "--checkpoint-every", "2"]
    assert (
        main(["train", *flags, "--data-dir", str(tmp_path / "if1"), "--steps", "4", "--out", str(run)]) == 0
    )
    files = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    capsys.readouterr()
    resume = [
        "train",
        "--resume",
        str(run),
        "--device",
        "cpu",
        "--no-progress",
        "--no-report",
        "--steps",
        "6",
    ]
    assert main([*resume, "--data-dir", str(tmp_path / "if2")]) == 2
    assert "the run was trained on ['ant', 'bee', 'cow']" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == files
    assert main(resume) == 0


def test_train_never_writes_into_a_checkpoint_or_another_run(tmp_path, capsys):
    """Was: `--out RUN/checkpoints/step-N` replaced that checkpoint's weights (the resume then found none that
    verified), `--out RUN/sub` mixed a run into another, and `--out FILE` said "[Errno 17] File exists"."""
    train(tiny_run(epochs=1, checkpoint_every=4), str(tmp_path / "run"))
    step = sorted((tmp_path / "run" / "checkpoints").glob("step-*"))[0]
    (tmp_path / "file").write_text("x")
    for out, says in (
        (step, "is a training checkpoint"),
        (tmp_path / "run" / "checkpoints", "lies inside the run"),
        (tmp_path / "run" / "sub" / "deeper", "lies inside the run"),
        (tmp_path / "file", "is a file; a run is written into a folder"),
    ):
        assert main(["train", *TINY_FLAGS, "--steps", "2", "--out", str(out), "--overwrite"]) == 2
        assert says in capsys.readouterr().err, out
    assert latest_valid(str(tmp_path / "run" / "checkpoints")) is not None


@pytest.mark.parametrize(
    ("key", "value", "says"),
    [
        ("data.randaugment_m", "31", r"data\.randaugment_m=31 must lie in \[0, 10\]"),
        ("data.randaugment_m", "-3", r"data\.randaugment_m=-3 must lie in \[0, 10\]"),
        ("train.ema_decay", "1", r"train\.ema_decay=1\.0 must lie in \[0, 1\)"),
        ("train.seed", str(2**64), r"train\.seed=18446744073709551616 must lie in \[0, 2\*\*63\)"),
        ("data.val_fraction", "0.2", r"data\.val_fraction=0\.2 splits an image folder without val/"),
    ],
)
def test_settings_that_would_break_or_mislead_a_run_are_refused(key, value, says):
    """Was: randaugment_m=31 an IndexError after config.json was written (-3 silently bin 28); ema_decay=1 kept
    the random initial weights as "the EMA weights"; a seed over 2**64 "Overflow when unpacking long long"; a
    val_fraction on a dataset with its own test split silently nothing."""
    with pytest.raises(ValueError, match=says):
        apply_overrides(tiny_run(), [f"{key}={value}"])


def test_a_resume_says_what_it_changes(tmp_path, capsys, caplog):
    """Was: a run lengthened on resume had its learning-rate schedule recomputed without a word (a 13x jump back
    up mid-cosine), a micro-batch size (the usual way on after running out of memory) or an evaluation setting was
    refused, and other allowed changes (compile, device) said nothing though the result is then not bitwise."""
    run = tmp_path / "run"
    train(tiny_run(steps=8, checkpoint_every=4), str(run))
    flags = ["--device", "cpu", "--no-progress", "--no-report", "--resume", str(run)]
    with caplog.at_level("INFO"):
        assert (
            main(
                ["train", "--steps", "16", "--micro-batch-size", "8", "--set", "train.eval_tta=hflip", *flags]
            )
            == 0
        )
    assert (
        "--resume: the run now lasts 16 steps (it began as 8): the learning-rate schedule is recomputed"
        in (caplog.text)
    )
    assert re.search(
        r"over them, 0\.00183 at step 9 where the first schedule gave 0\.000201 at step 8 \(warmup 2",
        caplog.text,
    )
    assert (
        "with other evaluations (training unchanged): train.eval_tta: 'none' in the run, 'hflip' now"
        in caplog.text
    )
    assert "with train.micro_batch_size: 0 in the run, 8 now: the continuation is not bitwise" in (
        caplog.text
    )
    assert "not bitwise an uninterrupted run's" in caplog.text
    assert read_config(str(run)).train.micro_batch_size == 8
    # checkpoints from before the length was kept in them: the run's config.json says it
    old, state = tmp_path / "old", Trainer.state

    def without_total(self):
        weights, st = state(self)
        return weights, {k: v for k, v in st.items() if k not in ("total", "precision")}

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Trainer, "state", without_total)
        train(tiny_run(steps=8, checkpoint_every=4), str(old))
    caplog.clear()
    with caplog.at_level("INFO"):
        assert main(["train", "--steps", "12", *flags[:-1], str(old)]) == 0
    assert "--resume: the run now lasts 12 steps (it began as 8)" in caplog.text


def test_a_checkpoint_between_log_lines_keeps_the_training_time_of_its_steps(tmp_path):
    """Was: a checkpoint written between log lines kept the time of the last log line with the images since, so
    a resumed run's train_seconds lost those steps' time (train_img_s twice the real one after a restart)."""
    from vitkit.train.checkpoint import list_checkpoints
    from vitkit.train.loop import train

    started = time.perf_counter()
    summary = train(tiny_run(steps=12, checkpoint_every=6, log_every=50), str(tmp_path / "run"))
    wall = time.perf_counter() - started
    first = list_checkpoints(str(tmp_path / "run" / "checkpoints"))[0]
    state = torch.load(os.path.join(first, "state.pt"), weights_only=True)
    assert state["step"] == 6 and state["images_seen"] == 6 * 32
    assert 0 < state["elapsed"] < summary["train_seconds"] < wall  # counted once in the unbroken run


def test_on_start_is_called_once_a_fresh_runs_files_are_written(tmp_path):
    """What a torchrun restart goes by (the CLI records the run in torchrun's store there): called after
    config.json and data.json are written (a crash before leaves an --overwrite'd folder's old run, which a
    restart then replaces again), and not by a resume."""
    from vitkit.train.loop import train

    seen = []
    out = tmp_path / "run"
    cfg = tiny_run(steps=2)
    train(cfg, str(out), on_start=lambda: seen.append(sorted(p.name for p in out.iterdir())))
    assert (
        len(seen) == 1 and {"config.json", "data.json"} <= set(seen[0]) and "model.safetensors" not in seen[0]
    )
    train(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=3)), str(out), resume=True,
          on_start=lambda: seen.append("resumed"))  # fmt: skip
    assert len(seen) == 1
