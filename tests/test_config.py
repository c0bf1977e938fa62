"""Config dataclasses and type-checked overrides."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from vitkit.config import (
    DataConfig,
    ModelConfig,
    OptimConfig,
    RunConfig,
    TrainConfig,
    apply_overrides,
    from_dict,
    load_run_config,
    save_json,
    to_dict,
)


def test_overrides_parse_types():
    cfg = apply_overrides(
        RunConfig(),
        [
            "model.embed_dim=64",
            "model.num_heads=4",
            "optim.lr=3e-4",
            "train.compile=true",
            "model.img_size=32,48",
            "optim.betas=0.9,0.95",
            "model.representation_size=none",
            "data.hflip=yes",
            "model.patch_size=8",
        ],
    )
    assert cfg.model.embed_dim == 64 and cfg.optim.lr == 3e-4 and cfg.train.compile is True
    assert cfg.model.img_size == (32, 48) and cfg.optim.betas == (0.9, 0.95)
    assert cfg.model.representation_size is None and cfg.data.hflip is True
    assert apply_overrides(RunConfig(), ["model.img_size=64"]).model.img_size == (64, 64)
    bracketed = apply_overrides(RunConfig(), ["model.img_size=(32, 48)", "optim.betas=[0.9, 0.95]"])
    assert bracketed.model.img_size == (32, 48) and bracketed.optim.betas == (0.9, 0.95)


@pytest.mark.parametrize(
    "item,match",
    [
        ("model.widht=3", "unknown config key 'model.widht'"),
        ("nope.x=1", "unknown config key 'nope.x'"),
        ("model.depth=two", "model.depth='two': expected an integer"),
        ("train.compile=maybe", "expected a boolean"),
        ("optim.lr=fast", "expected a number"),
        ("model=3", "is a section"),
        ("model.depth", "not of the form key=value"),
        ("optim.name=lion", "optim.name='lion' is not one of"),
        ("train.steps=-1", "train.steps=-1: one must be positive, neither negative"),
        ("train.device=cuda:x", "train.device='cuda:x' is not auto, cpu, cuda or cuda:N"),
        ("optim.grad_clip=inf", "expected a finite number"),
        ("optim.betas=0.9", r"optim\.betas='0\.9': expected 2 comma-separated values"),  # was (0.9, 0.9)
        ("data.rrc_ratio=2", r"data\.rrc_ratio='2': expected 2 comma-separated values"),
    ],
)
def test_override_errors_name_the_key(item, match):
    with pytest.raises((KeyError, ValueError), match=match):
        apply_overrides(RunConfig(), [item])


def test_roundtrip_json(tmp_path):
    cfg = apply_overrides(RunConfig(recipe="x"), ["model.img_size=28", "model.patch_size=4"])
    path = tmp_path / "config.json"
    save_json(cfg, str(path))
    assert load_run_config(str(path)) == cfg
    assert from_dict(RunConfig, json.loads(path.read_text())) == cfg
    assert to_dict(cfg)["model"]["img_size"] == (28, 28)


def test_bad_config_file(tmp_path):
    path = tmp_path / "config.json"
    path.write_text('{"model": {"depht": 3}}')
    with pytest.raises(ValueError, match=r"config.json.model: unknown keys \['depht'\]"):
        load_run_config(str(path))
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_run_config(str(path))
    path.write_text("{}")  # was: read as the default config (ViT-B/16, 1000 classes): data.json was blamed
    with pytest.raises(ValueError, match=r"missing the section\(s\) model, data, optim, train"):
        load_run_config(str(path))
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"expected a JSON object \(a run's config\), got list"):
        load_run_config(str(path))
    with pytest.raises(FileNotFoundError, match="cannot read run config"):
        load_run_config(str(tmp_path / "missing.json"))
    for section, key, value, kind in [
        ("train", "epochs", "12", "int"),
        ("train", "compile", 1, "bool"),
        ("model", "img_size", [28], "tuple[int, int]"),
        ("optim", "lr", None, "float"),
    ]:
        data = to_dict(RunConfig())
        data[section][key] = value
        path.write_text(json.dumps(data))
        with pytest.raises(
            ValueError, match=rf"config.json.{section}: {key}=.* is not of type {re.escape(kind)}$"
        ):
            load_run_config(str(path))


def test_model_config_validates():
    assert ModelConfig(img_size=28, patch_size=4, embed_dim=192, num_heads=3).grid_size == (7, 7)
    with pytest.raises(ValueError, match=r"model\.drop_rate"):
        ModelConfig(drop_rate=1.5)


def test_a_changed_patch_size_renames_the_vit():
    """`--set model.patch_size=7` on the default recipe: the run is called ViT-fmnist/7, not /4; a name given
    wins; a change that keeps the stride keeps the name."""
    import argparse

    from vitkit.cli.train import resolve_config

    def resolved(*sets, model=None, **flags):
        args = argparse.Namespace(
            recipe=None, model=model, epochs=None, steps=None, compile=False, set=list(sets)
        )
        for flag in ("img_size", "batch_size", "micro_batch_size", "lr", "seed", "device", "precision"):
            setattr(args, flag, flags.get(flag))
        for flag in ("dataset", "data_dir", "strategy", "checkpoint_every"):
            setattr(args, flag, None)
        return resolve_config(args).model

    assert resolved().name == "ViT-fmnist/4"
    assert resolved("model.patch_size=7").name == "ViT-fmnist/7"
    assert resolved("model.patch_size=7", "model.name=mine/7x").name == "mine/7x"
    assert resolved("model.depth=2").name == "ViT-fmnist/4"
    hybrid = resolved("model.backbone=()", "model.patch_size=1")  # the BiT root: 4 px per token
    assert hybrid.name == "ViT-fmnist/4" and hybrid.token_stride == 4
    assert resolved("model.backbone=()", "model.img_size=32").name == "ViT-fmnist/16"
    assert resolved(model="ViT-S/4").name == "ViT-S/4"  # --model names the architecture, --set changes it
    assert resolved("model.patch_size=7", model="ViT-S/4").name == "ViT-S/7"
    assert resolved(model="ViT-S/16", img_size=224).name == "ViT-S/16"  # --model then --img-size: one check


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"img_size": "48"}, r"model\.img_size='48': expected an int or an \(H, W\) pair of ints"),  # was 4x8
        ({"img_size": 48.0}, r"model\.img_size=48\.0: expected an int"),
        ({"img_size": True}, r"model\.img_size=True: expected an int"),
        ({"img_size": (-16, 32)}, r"model\.img_size=\(-16, 32\): both sides must be positive"),
        ({"img_size": 0}, r"model\.img_size=0: both sides must be positive"),
        ({"depth": 1.5}, r"model\.depth=1\.5 must be an integer"),
        ({"depth": 0}, r"model\.depth=0 must be a positive integer"),
        ({"drop_path_rate": "0.1"}, r"model\.drop_path_rate='0\.1' must be a number"),
        # were: a raw torch TypeError, a comparison TypeError, a model silently dynamic or with a bias
        ({"representation_size": 1.5}, r"model\.representation_size=1\.5 must be an integer"),
        ({"representation_size": "64"}, r"model\.representation_size='64' must be an integer"),
        ({"num_classes": True}, r"model\.num_classes=True must be an integer"),
        ({"dynamic_img_size": "false"}, r"model\.dynamic_img_size='false' must be True or False"),
        ({"qkv_bias": "false"}, r"model\.qkv_bias='false' must be True or False"),
    ],
)
def test_python_api_sizes_and_numbers_are_checked_by_name(kw, match):
    """Was: '48' read as 4x8, floats and strings failing with raw TypeErrors, 0 called indivisible."""
    import vitkit

    with pytest.raises(ValueError, match=match):
        vitkit.create_model("ViT-Ti/16", **kw)
    if "img_size" in kw:
        model = vitkit.create_model("ViT-Ti/16", img_size=32)
        with pytest.raises(ValueError, match=match):
            model.set_img_size(kw["img_size"])


def test_numpy_integers_are_taken_as_timm_takes_them():
    """Was: num_classes=np.int64(4) refused as "must be >= 0" (timm builds it); depth and img_size likewise."""
    import torch

    import vitkit

    m = vitkit.create_model(
        "ViT-Ti/16", num_classes=np.array([0, 3]).max() + 1, depth=np.int64(1), img_size=np.int64(32)
    )
    assert (m.cfg.num_classes, m.cfg.depth, m.cfg.img_size) == (4, 1, (32, 32))
    assert type(m.cfg.num_classes) is int and type(m.cfg.img_size[0]) is int  # JSON-writable
    assert m(torch.randn(1, 3, 32, 32)).shape == (1, 4)


def test_few_shot_settings_are_checked_and_quoted_names_read():
    from vitkit.config import RunConfig, TrainConfig, apply_overrides

    cfg = apply_overrides(
        RunConfig(), ['train.fewshot_datasets=["mnist", "cifar10"]', "train.fewshot_shots=1,5"]
    )
    assert cfg.train.fewshot_datasets == ("mnist", "cifar10") and cfg.train.fewshot_shots == (1, 5)
    with pytest.raises(ValueError, match=r"train\.fewshot_shots=.* must be positive integers"):
        TrainConfig(fewshot_every=1, fewshot_shots=(0, 5))
    with pytest.raises(ValueError, match=r"train\.fewshot_every=-1 must be >= 0"):
        TrainConfig(fewshot_every=-1)


@pytest.mark.parametrize(
    "make",
    [
        lambda c: c.TrainConfig(dist_timeout_s=float("inf")),
        lambda c: c.OptimConfig(lr=float("nan")),
        lambda c: c.OptimConfig(grad_clip=float("inf")),
        lambda c: c.DataConfig(mixup_alpha=float("inf")),
        lambda c: c.ModelConfig(norm_eps=float("inf")),
    ],
    ids=["dist_timeout_s", "lr", "grad_clip", "mixup_alpha", "norm_eps"],
)
def test_non_finite_numbers_are_refused_by_name(make):
    """Was: inf and NaN were taken, written to config.json as null, and the run could not be read back."""
    import vitkit.config as c

    with pytest.raises(ValueError, match=r"=(inf|nan) must be finite"):
        make(c)


def test_python_built_run_configs_check_their_types_and_ranges():
    """Was: a config built in Python skipped the type checks of --set and config.json: compile="false" and
    hflip="False" ran as true and wrote a config.json that could not be read back; epochs=1.5, a string for a tuple
    of dataset names (read as its letters) were accepted; lr="0.1" gave a bare TypeError. Degenerate values
    (momentum, dropout or label smoothing of 1, val_fraction 1, a distributed timeout past torch's) were taken,
    and several checks named three keys for one."""
    for make, match in (
        (lambda: TrainConfig(compile="false"), r"train\.compile='false' is not of type bool"),
        (lambda: DataConfig(hflip="False"), r"data\.hflip='False' is not of type bool"),
        (lambda: TrainConfig(epochs=1.5), r"train\.epochs=1\.5 is not of type int"),
        (
            lambda: TrainConfig(fewshot_datasets="cifar10"),
            r"train\.fewshot_datasets='cifar10' is not of type",
        ),
        (lambda: OptimConfig(lr="0.1"), r"optim\.lr='0\.1' is not of type float"),
        (lambda: OptimConfig(momentum=True), r"optim\.momentum=True is not of type float"),
        (lambda: ModelConfig(name=None), r"model\.name=None must be a string"),
        (lambda: OptimConfig(momentum=1.0), r"optim\.momentum=1\.0 must lie in \[0\.0, 1\.0\)"),
        (lambda: DataConfig(label_smoothing=1.0), r"data\.label_smoothing=1\.0 must lie in \[0\.0, 1\.0\)"),
        (lambda: DataConfig(dataset="imagefolder", val_fraction=1.0), r"data\.val_fraction=1\.0 must lie in"),
        (lambda: ModelConfig(drop_rate=1.0), r"model\.drop_rate=1\.0 must lie in \[0\.0, 1\.0\)"),
        (
            lambda: TrainConfig(dist_timeout_s=1e10),
            r"train\.dist_timeout_s=10000000000\.0 must lie in \(0, 1e7\]",
        ),
        (lambda: OptimConfig(grad_clip=-1), r"^optim\.grad_clip=-1 must be >= 0$"),
        (lambda: TrainConfig(checkpoint_every=-1), r"^train\.checkpoint_every=-1 must be >= 0$"),
    ):
        with pytest.raises(ValueError, match=match):
            make()
    t = TrainConfig(steps=2.0, seed=np.int64(3), fewshot_shots=[1, 5])  # whole numbers, numpy's, lists: taken
    assert (
        (t.steps, t.seed, t.fewshot_shots) == (2, 3, (1, 5)) and type(t.steps) is int and type(t.seed) is int
    )
    assert DataConfig(random_erasing=1.0).random_erasing == 1.0  # a probability of 1 is a setting here
    import pathlib  # a path and numpy's arrays as the text and tuples they stand for

    assert DataConfig(data_dir=pathlib.Path("/data")).data_dir == "/data"
    assert OptimConfig(betas=np.array([0.9, 0.99])).betas == (0.9, 0.99)
    assert TrainConfig(fewshot_datasets=np.array(["mnist"])).fewshot_datasets == ("mnist",)


def test_settings_the_config_does_not_read_are_named():
    """Was: --set optim.momentum with adamw, data.rrc_* without RandomResizedCrop, train.compile_mode without
    compile (and others) changed nothing without a word."""
    from vitkit.config import unread_settings

    cfg = RunConfig()  # adamw, cosine, no RandomResizedCrop, no compile
    keys = {"optim.momentum", "optim.betas", "data.rrc_scale_min", "train.compile_mode", "optim.decay_at"}
    assert unread_settings(cfg, keys) == [
        "optim.momentum (read with optim.name=sgd)",
        "optim.decay_at (read with optim.schedule=step)",
        "data.rrc_scale_min (read with data.random_resized_crop=true)",
        "train.compile_mode (read with train.compile=true)",
    ]
    sgd = apply_overrides(cfg, ["optim.name=sgd", "train.compile=true"])
    assert unread_settings(sgd, keys) == [
        "optim.betas (read with optim.name=adam or adamw)",
        "optim.decay_at (read with optim.schedule=step)",
        "data.rrc_scale_min (read with data.random_resized_crop=true)",
    ]


def test_the_cli_warns_of_settings_it_does_not_read(caplog):
    from vitkit.cli.common import warn_unread

    warn_unread(RunConfig(), ["optim.momentum=0.5", "optim.lr=0.1"])
    assert "--set of a setting this run does not read, which changes nothing: optim.momentum (read with " in (
        caplog.text
    )
