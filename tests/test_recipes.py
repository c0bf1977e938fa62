"""Every named recipe is a valid config that states its expected result; the CLI resolves flags onto it."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from vitkit.cli.train import resolve_config
from vitkit.config import ModelConfig, apply_overrides
from vitkit.models import model_config
from vitkit.recipes import RECIPES, get_recipe


@pytest.mark.parametrize("name", list(RECIPES))
def test_recipe_is_valid_and_states_expectation(name):
    cfg = get_recipe(name)
    assert cfg.recipe == name
    assert cfg.expected, f"{name} does not say what it is expected to reach"
    if cfg.model.arch == "vit":  # a CNN (the BiT baseline) takes any size
        assert cfg.model.img_size[0] % cfg.model.token_stride == 0


def test_paper_recipes_follow_the_paper():
    pre, fine = get_recipe("paper-pretrain"), get_recipe("paper-finetune")
    assert pre.optim.betas == (0.9, 0.999) and pre.optim.weight_decay == 0.1 and pre.optim.grad_clip == 1.0
    assert pre.train.batch_size == 4096 and pre.optim.warmup_steps > 0
    assert fine.optim.name == "sgd" and fine.optim.momentum == 0.9 and fine.train.batch_size == 512
    assert fine.optim.weight_decay == 0.0 and fine.optim.grad_clip == 1.0 and fine.model.head_init == "zero"


def test_bit_hyperrule_follows_the_bit_paper():
    from vitkit.recipes import hyperrule

    cfg = get_recipe("bit-hyperrule")
    o = cfg.optim
    assert (o.name, o.lr, o.momentum, o.weight_decay, o.grad_clip) == ("sgd", 0.003, 0.9, 0.0, 0.0)
    assert (o.schedule, o.decay_at, o.decay_factor, cfg.train.batch_size) == (
        "step",
        (0.3, 0.6, 0.9),
        0.1,
        512,
    )
    assert cfg.data.rrc_ratio == (1.0, 1.0) and cfg.data.mixup_alpha == 0.1  # square crops; 20k-500k images
    cases = [  # images, resolution -> steps, warmup, decays, MixUp, crop's share of the area
        (19_999, (128, 128), 500, 100, (0.4, 0.6, 0.8), 0.0, 0.64),  # BiT: 160 -> 128
        (20_000, (480, 480), 10_000, 500, (0.3, 0.6, 0.9), 0.1, 0.8789),  # 512 -> 480
        (500_000, (384, 384), 20_000, 500, (0.3, 0.6, 0.9), 0.1, 0.8789),
    ]
    for n, size, steps, warmup, at, mixup, crop in cases:
        c = apply_overrides(cfg, hyperrule(n, size))
        got = (c.train.steps, c.optim.warmup_steps, c.optim.decay_at, c.data.mixup_alpha)
        assert got == (steps, warmup, at, mixup), n
        assert c.data.rrc_scale_min == c.data.rrc_scale_max == pytest.approx(crop, abs=1e-4)
    # its supports as BiT's code lists them: under 500k images 500 warmup, decays at 3k, 6k, 9k, end at 10k
    c = apply_overrides(cfg, hyperrule(100_000, (480, 480)))
    assert [round(f * c.train.steps) for f in c.optim.decay_at] == [3000, 6000, 9000]


def test_bit_hyperrule_leaves_the_commands_settings():
    """What the command sets wins; a length it gives keeps the rule's shape (warmup as BiT's share of the run)."""
    from vitkit.recipes import hyperrule

    cfg = get_recipe("bit-hyperrule")

    def ft(given, *overrides):
        return apply_overrides(cfg, hyperrule(10_000, (128, 128), set(given)) + list(overrides))

    c = ft({"train.steps"}, "train.steps=50")
    assert (c.train.steps, c.optim.warmup_steps, c.optim.warmup_fraction) == (50, 0, 0.2)
    c = ft({" train.epochs "}, "train.epochs=3")  # keys as apply_overrides reads them: stripped
    assert (c.train.steps, c.train.epochs, c.optim.warmup_fraction) == (0, 3, 0.2)  # epochs count
    c = ft({"optim.warmup_fraction"}, "optim.warmup_fraction=0.1")
    assert (c.train.steps, c.optim.warmup_steps, c.optim.warmup_fraction) == (500, 0, 0.1)
    c = ft({"optim.warmup_steps", "data.mixup_alpha"}, "optim.warmup_steps=7", "data.mixup_alpha=0.3")
    assert (c.optim.warmup_steps, c.data.mixup_alpha, c.optim.decay_at) == (7, 0.3, (0.4, 0.6, 0.8))


def test_unknown_recipe():
    with pytest.raises(ValueError, match="unknown recipe"):
        get_recipe("imagenet-in-5-minutes")


def _args(**kw):
    base = dict(
        recipe=None,
        model=None,
        dataset=None,
        data_dir=None,
        img_size=None,
        epochs=None,
        steps=None,
        batch_size=None,
        micro_batch_size=None,
        lr=None,
        seed=None,
        device=None,
        checkpoint_every=None,
        precision=None,
        strategy=None,
        compile=False,
        set=None,
    )
    base.update(kw)
    return argparse.Namespace(**base)


def test_bit_model_on_a_vit_recipe_resets_its_vit_options():
    cfg = resolve_config(_args(recipe="fashion-mnist-best", model="BiT-R26x1"))
    m = cfg.model  # the recipe's GAP and sin-cos posemb are a ViT's: reset for the ResNet
    assert (m.arch, m.name, m.backbone, m.pool, m.posemb) == (
        "bit",
        "BiT-R26x1",
        (2, 2, 2, 2),
        "token",
        "learn",
    )
    assert m.drop_path_rate == 0.1 and cfg.data.random_erasing == 0.25  # the recipe's regularisation stays
    back = resolve_config(_args(recipe="fashion-mnist-bit", model="ViT-S/4"))
    assert (back.model.arch, back.model.width_factor, back.model.embed_dim) == ("vit", 1, 384)


def test_flags_override_recipe():
    cfg = resolve_config(_args(model="ViT-S/4", epochs=3, lr=0.01, set=["model.drop_path_rate=0.1"]))
    assert cfg.recipe == "fashion-mnist"
    assert cfg.model.embed_dim == 384 and cfg.model.patch_size == 4 and cfg.model.num_heads == 6
    assert cfg.train.epochs == 3 and cfg.train.steps == 0 and cfg.optim.lr == 0.01
    assert cfg.model.drop_path_rate == 0.1
    assert resolve_config(_args()) == get_recipe("fashion-mnist")
    base = get_recipe("fashion-mnist-best")  # a resumed run's own config is the base
    assert resolve_config(_args(epochs=7), base) == apply_overrides(base, ["train.epochs=7", "train.steps=0"])


def test_every_train_flag_reaches_its_config_key():
    """Each flag of `vitkit train` in FLAG_KEYS, parsed by the real parser, sets the key it names."""
    from vitkit.cli import build_parser
    from vitkit.cli.train import FLAG_KEYS
    from vitkit.config import to_dict

    want = {
        "dataset": "cifar10", "data_dir": "/d", "img_size": 32, "epochs": 3, "steps": 5, "batch_size": 16,
        "micro_batch_size": 8, "lr": 0.02, "seed": 4, "device": "cpu", "checkpoint_every": 7,
        "precision": "bf16-pure", "strategy": "fsdp",
    }  # fmt: skip
    assert set(want) == set(FLAG_KEYS)
    argv = ["train"] + [x for k, v in want.items() for x in (f"--{k.replace('_', '-')}", str(v))]
    cfg = to_dict(resolve_config(build_parser().parse_args(argv)))
    want["img_size"] = [32, 32]
    for flag, key in FLAG_KEYS.items():
        section, name = key.split(".")
        got = cfg[section][name]
        assert (list(got) if isinstance(got, tuple) else got) == want[flag], flag


def test_paper_finetune_uses_its_resolution_and_the_official_length_per_dataset():
    """Was: `vitkit finetune --recipe paper-finetune` fine-tuned at the checkpoint's resolution, not 384 px."""
    from types import SimpleNamespace

    from vitkit.cli import build_parser
    from vitkit.cli.finetune import finetune_config

    ckpt = SimpleNamespace(config=model_config("ViT-B/16", num_classes=21843))

    def cfg(*flags):
        return finetune_config(build_parser().parse_args(["finetune", "--from", "X", *flags]), ckpt)

    c = cfg("--recipe", "paper-finetune")
    assert c.model.img_size == (384, 384) and c.train.steps == 20_000 and c.optim.lr == 0.03
    assert c.model.head_init == "zero" and c.model.head_drop_rate == 0.0
    assert cfg("--recipe", "paper-finetune", "--img-size", "224").model.img_size == (224, 224)
    assert cfg("--recipe", "paper-finetune", "--dataset", "cifar100").train.steps == 10_000
    assert cfg("--recipe", "paper-finetune", "--dataset", "cifar10", "--steps", "7").train.steps == 7
    c = cfg("--recipe", "paper-finetune", "--dataset", "cifar10", "--set", "train.steps=9")
    assert c.train.steps == 9
    assert cfg().model.img_size == (224, 224)  # finetune-small: the checkpoint's resolution


def test_paper_pretrain_has_the_official_pre_training_head():
    """A tanh pre-logits layer of width D, then a zero-initialised head with no dropout before it (the official
    code); dropout 0.1 elsewhere (Table 3)."""
    from vitkit.models import build_model

    cfg = get_recipe("paper-pretrain").model
    assert (cfg.representation_size, cfg.head_init, cfg.head_drop_rate, cfg.drop_rate) == (
        768,
        "zero",
        0.0,
        0.1,
    )
    small = dataclasses.replace(cfg, img_size=32, depth=1, embed_dim=64, num_heads=2, mlp_dim=128)
    model = build_model(dataclasses.replace(small, representation_size=64))
    assert model.head_drop.p == 0.0 and model.pos_drop.p == 0.1 and not model.head.weight.any()
    assert (
        build_model(dataclasses.replace(small, representation_size=64, head_drop_rate=None)).head_drop.p
        == 0.1
    )
    with pytest.raises(ValueError, match=r"model\.head_drop_rate=1\.5 must lie in \[0\.0, 1\.0\)"):
        dataclasses.replace(small, head_drop_rate=1.5)
    cnn = ModelConfig(name="ResNet-26", arch="resnet", backbone=(1, 2, 4, 1))
    with pytest.raises(ValueError, match=r"model\.head_drop_rate=0\.0 is a ViT option"):
        dataclasses.replace(cnn, head_drop_rate=0.0)


def test_paper_pretrain_pre_logits_follow_the_models_width():
    """Was: `--model ViT-L/16` kept the recipe's 768-wide pre-logits (the official L/16 has 1024)."""
    from vitkit.cli import build_parser

    def model(*flags):
        return resolve_config(
            build_parser().parse_args(["train", "--recipe", "paper-pretrain", *flags])
        ).model

    assert model().representation_size == 768
    assert model("--model", "ViT-L/16").representation_size == 1024
    assert model("--set", "model.embed_dim=384", "--set", "model.num_heads=6").representation_size == 384
    assert model("--model", "ViT-L/16", "--set", "model.representation_size=512").representation_size == 512
    assert model("--model", "BiT-R50x1").representation_size is None
    assert (
        resolve_config(build_parser().parse_args(["train", "--model", "ViT-S/4"])).model.representation_size
        is None
    )


def test_a_gpu_recipe_on_the_cpu_says_what_it_costs(caplog, monkeypatch):
    """`vitkit train --recipe fashion-mnist-gpu` on a machine without CUDA warns before the hours go by; the CPU
    recipes and the ranks other than the first do not."""
    import torch

    from vitkit.cli.train import _warn_gpu_recipe_on_cpu
    from vitkit.recipes import GPU_RECIPES

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert set(GPU_RECIPES) <= set(RECIPES)
    with caplog.at_level("WARNING"):
        _warn_gpu_recipe_on_cpu(get_recipe("fashion-mnist-gpu"), main=True)
    assert "recipe fashion-mnist-gpu is sized for one GPU" in caplog.text and "9 minutes" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        _warn_gpu_recipe_on_cpu(get_recipe("fashion-mnist"), main=True)
        _warn_gpu_recipe_on_cpu(get_recipe("fashion-mnist-best"), main=False)
        # was: the cost of the full recipe was told to a run shortened with --steps or --epochs
        best = get_recipe("fashion-mnist-best")
        _warn_gpu_recipe_on_cpu(
            dataclasses.replace(best, train=dataclasses.replace(best.train, steps=1)), main=True
        )
    assert caplog.text == ""
