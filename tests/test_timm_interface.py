"""timm's model interface on vitkit's models, checked against timm itself (random weights, no downloads)."""

from __future__ import annotations

import io
import pickle

import pytest
import torch

import vitkit
from vitkit.convert import ConversionError

timm = pytest.importorskip("timm")

GAP = dict(class_token=False, global_pool="avg", fc_norm=False)


def _pair(pool: str = "token", depth: int = 3):
    """A vitkit ViT and timm's with the same weights, in eval mode."""
    ours = vitkit.create_model("ViT-Ti/16", img_size=32, num_classes=5, depth=depth, pool=pool).eval()
    kw = GAP if pool == "gap" else {}
    theirs = timm.create_model("vit_tiny_patch16_224", img_size=32, num_classes=5, depth=depth, **kw).eval()
    theirs.load_state_dict(ours.state_dict())
    return ours, theirs


def _assert_same(a, b):
    assert type(a) is type(b) and (not isinstance(a, (list, tuple)) or len(a) == len(b))
    if isinstance(a, (list, tuple)):
        for u, v in zip(a, b):
            _assert_same(u, v)
    else:
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


@pytest.mark.parametrize("pool", ["token", "gap"])
def test_forward_intermediates_and_get_intermediate_layers_equal_timms(pool):
    ours, theirs = _pair(pool)
    x = torch.randn(2, 3, 32, 32)
    cases = [
        {},
        {"indices": 2, "norm": True},
        {"indices": [0, -1], "return_prefix_tokens": True, "output_fmt": "NLC"},
        {"indices": [1], "intermediates_only": True},
        {"indices": [0], "stop_early": True},
    ]
    with torch.no_grad():
        for kw in cases:
            _assert_same(ours.forward_intermediates(x, **kw), theirs.forward_intermediates(x, **kw))
        for kw in ({"n": 2, "reshape": True}, {"n": [0, 2], "return_prefix_tokens": True, "norm": True}):
            _assert_same(ours.get_intermediate_layers(x, **kw), theirs.get_intermediate_layers(x, **kw))
    for bad, match in ((4, "the last n blocks with 1 <= n <= 3"), ([3], r"\[3\] outside the 3 blocks")):
        with pytest.raises(ValueError, match=match):
            ours.forward_intermediates(x, indices=bad)
    with pytest.raises(ValueError, match="output_fmt='NHWC'"):
        ours.forward_intermediates(x, output_fmt="NHWC")


@pytest.mark.parametrize("name", ["ViT-Ti/16", "GAP", "R+ViT-Ti/16", "BiT-R26x1"])
def test_reset_classifier_without_pooling_gives_features_as_timm(name):
    """timm's `reset_classifier(0, "")`: a ViT's final-normed tokens (B, N, D), a CNN's last map (B, C, h, w)."""
    kw = (
        dict(img_size=32, num_classes=5, depth=1)
        if name != "BiT-R26x1"
        else dict(img_size=32, num_classes=5, in_chans=3)
    )
    if name == "GAP":
        name, kw = "ViT-Ti/16", dict(kw, pool="gap", posemb="sincos2d")
    model = vitkit.create_model(name, **kw).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        feats = model.forward_features(x)
        with pytest.raises(ValueError, match="num_classes must be 0"):
            model.reset_classifier(3, global_pool="")
        model.reset_classifier(0, global_pool="")
        torch.testing.assert_close(model(x), feats, rtol=0, atol=1e-6)
        model.reset_classifier(0)  # the mode stays, as timm's global_pool
        assert model(x).shape == feats.shape
        model.reset_classifier(4)  # a head pools again
        assert model(x).shape == (2, 4)


def test_reset_classifier_gives_a_zero_head_and_drops_pre_logits():
    model = vitkit.create_model("ViT-Ti/16", img_size=32, num_classes=5, depth=1, representation_size=16)
    model.eval().reset_classifier(3)
    assert not model.head.training
    model.train()
    assert model.get_classifier() is model.head and tuple(model.head.weight.shape) == (3, 192)
    assert not model.head.weight.any() and isinstance(model.pre_logits, torch.nn.Identity)
    assert (model.num_classes, model.cfg.num_classes, model.cfg.representation_size) == (3, 3, None)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 3)
    model.reset_classifier(0)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 192)  # pooled features
    with pytest.raises(ValueError, match="pools by 'token'"):
        model.reset_classifier(3, global_pool="avg")
    with pytest.raises(ValueError, match=r"model\.num_classes=-1 must be >= 0"):
        model.reset_classifier(-1)
    cnn = vitkit.create_model("BiT-R26x1", img_size=32, num_classes=5, drop_rate=0.5).eval().double()
    rng_id = cnn.head.drop.rng_id
    cnn.reset_classifier(7, global_pool="avg")
    assert (
        cnn.get_classifier().out_channels == 7 and not cnn.head.fc.weight.any()
    )  # timm's ResNetV2: the conv
    assert not cnn.head.training and cnn.head.fc.weight.dtype == torch.float64  # the model's mode and dtype
    cnn.head.fc.weight.data.normal_()
    with torch.no_grad():  # was: the new head's dropout ran in an evaluated model
        x = torch.randn(2, 1, 32, 32, dtype=torch.float64)
        torch.testing.assert_close(cnn(x), cnn(x), rtol=0, atol=0)
    cnn = cnn.train().float()
    assert cnn.head.drop.rng_id == rng_id and cnn(torch.randn(2, 1, 32, 32)).shape == (2, 7)
    cnn.reset_classifier(0)
    assert cnn.get_classifier() is None and cnn(torch.randn(2, 1, 32, 32)).shape == (2, cnn.num_features)


def test_pretrained_cfg_carries_the_weights_normalisation_to_timms_data_config(tmp_path):
    from timm.data import resolve_model_data_config
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    model = vitkit.create_model("ViT-Ti/4")
    cfg = resolve_model_data_config(model)
    assert cfg["input_size"] == (1, 28, 28) and cfg["mean"] == (0.5,) and cfg["crop_pct"] == 1.0
    assert vitkit.create_model("ResNet-50").pretrained_cfg["mean"] == (0.485, 0.456, 0.406)  # timm's ResNet
    size = dict(image_size=32, patch_size=16, hidden_size=64, num_hidden_layers=1, num_attention_heads=4)
    hf = ViTForImageClassification(
        ViTConfig(**size, intermediate_size=128, num_labels=2, id2label={0: "cat", 1: "dog"})
    )
    hf.save_pretrained(tmp_path / "hf")
    ViTImageProcessor(image_mean=[0.4, 0.45, 0.5], image_std=[0.2, 0.25, 0.3]).save_pretrained(
        tmp_path / "hf"
    )
    loaded = vitkit.create_model(pretrained=str(tmp_path / "hf"))
    cfg = resolve_model_data_config(loaded)
    assert (
        cfg["mean"] == (0.4, 0.45, 0.5)
        and cfg["std"] == (0.2, 0.25, 0.3)
        and cfg["input_size"] == (3, 32, 32)
    )
    assert (
        loaded.pretrained_cfg["label_names"] == ("cat", "dog") and loaded.default_cfg == loaded.pretrained_cfg
    )
    fresh_head = vitkit.create_model(pretrained=str(tmp_path / "hf"), num_classes=3)
    assert "label_names" not in fresh_head.pretrained_cfg and fresh_head.pretrained_cfg["mean"] == cfg["mean"]


def test_timm_layer_decay_groups_vitkit_models_as_its_own():
    from timm.optim import create_optimizer_v2

    ours, theirs = _pair(depth=4)

    def scales(model):
        opt = create_optimizer_v2(model, "adamw", lr=1e-3, weight_decay=0.05, layer_decay=0.75)
        names = {id(p): n for n, p in model.named_parameters()}
        return {
            names[id(p)]: (g["lr_scale"], g["weight_decay"]) for g in opt.param_groups for p in g["params"]
        }

    assert scales(ours) == scales(theirs) and len(set(scales(ours).values())) > 6
    groups = create_optimizer_v2(
        vitkit.create_model("BiT-R26x1"), "sgd", lr=0.1, layer_decay=0.75
    ).param_groups
    assert len({g["lr_scale"] for g in groups}) == 10  # stem, 8 bottlenecks, the norm and head


def test_create_model_takes_pretrained_bools_listed_settings_and_state_dicts(monkeypatch):
    random = vitkit.create_model("ViT-Ti/4", pretrained=False)  # timm's False: random weights
    assert random.cfg.img_size == (28, 28)
    small = vitkit.create_model("vit-ti/4")
    assert (small.cfg.img_size, small.cfg.in_chans, small.num_classes) == ((28, 28), 1, 10)
    assert vitkit.count_params(small) == sum(p.numel() for p in small.parameters()) == 5_353_738
    assert vitkit.forward_macs(small) == vitkit.forward_macs(small.cfg)
    assert vitkit.create_model("ViT-Ti/4", img_size=32, in_chans=3).cfg.in_chans == 3
    assert vitkit.create_model("ViT-Ti/16").cfg.img_size == (224, 224)
    named = vitkit.models.model_config  # the name says the shape (was: "ViT-Ti/16" whatever the overrides)
    assert named("ViT-Ti/16", embed_dim=64, num_heads=2, mlp_dim=128, depth=2).name == "ViT-64x2/16"
    assert (
        named("ViT-B/16", patch_size=8).name == "ViT-B/8"
        and named("ViT-S/16", img_size=32).name == "ViT-S/16"
    )
    assert named("R50+ViT-B/16", depth=2).name == "R50+ViT-768x2/16"
    assert sorted(vitkit.list_models("*ResNet-26")) == ["AA-ResNet-26", "ResNet-26", "SASA-ResNet-26"]
    assert "ViT-B/16" in vitkit.list_models("vit-b*") and vitkit.list_models("nothing*") == []
    both = vitkit.list_models(["ViT-B*", "*ResNet-26"], exclude_filters="SASA*")  # timm's list and exclusions
    assert both == ["ViT-B/16", "ViT-B/32", "ResNet-26", "AA-ResNet-26"]
    assert "ViT-Ti/4" not in vitkit.list_models(pretrained=True) and "ViT-B/16" in vitkit.list_models(
        pretrained=True
    )
    with pytest.raises(ValueError, match="list_models\\(pattern=3\\)"):
        vitkit.list_models(3)
    with pytest.raises(ValueError, match="expected a ModelConfig or a vitkit model"):
        vitkit.count_params("ViT-B/16")
    asked = []
    monkeypatch.setattr(vitkit.api, "model_from_source", lambda src, name, **kw: asked.append(src))
    vitkit.create_model("vit-b/16", pretrained=True)
    assert asked == ["hf-hub:google/vit-base-patch16-224"]  # a hub id, whatever folders are here
    with pytest.raises(ValueError, match="pretrained=True: no default weights for 'ViT-Ti/4'"):
        vitkit.create_model("ViT-Ti/4", pretrained=True)
    monkeypatch.undo()
    _, theirs = _pair()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        from_state = vitkit.create_model(pretrained=theirs.state_dict())
        torch.testing.assert_close(from_state(x), theirs(x), rtol=0, atol=1e-5)
        target = vitkit.create_model("ViT-Ti/16", img_size=32, num_classes=5, depth=3).eval()
        vitkit.load_pretrained(target, theirs.state_dict())
        torch.testing.assert_close(target(x), theirs(x), rtol=0, atol=1e-5)
    assert from_state.pretrained_cfg["source"] == "<state dict>"
    with pytest.raises(
        ConversionError, match=r"state dict: keys must be names and values tensors; .*\['a'\]"
    ):
        vitkit.create_model(pretrained={"a": 1})


@pytest.mark.parametrize("pool", ["token", "gap"])
def test_dynamic_img_size_equals_timms_and_a_moved_model(pool):
    """Any multiple of the patch size, the position embedding resampled per forward: timm's dynamic_img_size
    logits (bicubic, antialiased), and those of a copy moved with set_img_size for every embedding kind."""
    import copy

    ours = vitkit.create_model(
        "ViT-Ti/16", img_size=32, num_classes=5, depth=3, pool=pool, dynamic_img_size=True
    ).eval()
    kw = GAP if pool == "gap" else {}
    theirs = timm.create_model(
        "vit_tiny_patch16_224", img_size=32, num_classes=5, depth=3, dynamic_img_size=True, **kw
    ).eval()
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(2, 3, 48, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=1e-5)
        _assert_same(ours.forward_intermediates(x, indices=1), theirs.forward_intermediates(x, indices=1))
        torch.testing.assert_close(ours(x[..., :32, :32]), theirs(x[..., :32, :32]), rtol=0, atol=1e-5)
    for posemb in ("learn", "learn2d", "sincos2d"):
        model = vitkit.create_model(
            "ViT-Ti/16", img_size=32, num_classes=5, depth=1, pool=pool, posemb=posemb, dynamic_img_size=True
        ).eval()
        moved = copy.deepcopy(model)
        moved.set_img_size((48, 64), mode="bicubic")
        with torch.no_grad():
            torch.testing.assert_close(model(x), moved(x), rtol=0, atol=1e-5, msg=posemb)
    with pytest.raises(
        ValueError, match="image size 40x64 is not a positive multiple of the token stride 16"
    ):
        ours(torch.randn(1, 3, 40, 64))
    fixed = vitkit.create_model("ViT-Ti/16", img_size=32, depth=1)
    with pytest.raises(ValueError, match=r"model\.set_img_size\(\), or dynamic_img_size=True"):
        fixed(x)


def test_models_in_memory_load_with_their_configs(caplog):
    """transformers' model brings its config (tanh GELU, eps, heads: its bare state dict is warned about);
    vitkit's own CNNs load from the model; a compiled model's or DDP's prefixes are dropped."""
    from transformers import ViTConfig, ViTForImageClassification

    size = dict(image_size=32, patch_size=16, hidden_size=64, num_hidden_layers=1, num_attention_heads=4)
    hf = ViTForImageClassification(
        ViTConfig(**size, intermediate_size=128, num_labels=3, hidden_act="gelu_new")
    )
    x = torch.randn(2, 3, 32, 32)
    ours = vitkit.create_model(pretrained=hf.eval())
    assert (ours.cfg.mlp_act, ours.cfg.num_heads, ours.cfg.norm_eps) == ("gelu_tanh", 4, 1e-12)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), hf(pixel_values=x).logits, rtol=0, atol=1e-5)
    with caplog.at_level("WARNING"):
        vitkit.read_checkpoint(hf.state_dict(), num_heads=4)
    assert "transformers state dict without its config" in caplog.text
    cnn = vitkit.create_model("ResNet-26", img_size=32).eval()
    twin = vitkit.create_model(pretrained=cnn)
    twin_x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(twin(twin_x), cnn(twin_x), rtol=0, atol=0)
    odd = timm.create_model("vit_small_patch16_224", img_size=32, depth=1, num_heads=12, num_classes=3).eval()
    with torch.no_grad():  # 384 wide with 12 heads: the module says so (the paper's table would guess 6)
        torch.testing.assert_close(vitkit.create_model(pretrained=odd)(x), odd(x), rtol=0, atol=1e-5)
    resnet = timm.create_model("resnet50", num_classes=3)
    cfg = vitkit.create_model(pretrained=resnet).pretrained_cfg  # its own resize and crop, not its input size
    assert (cfg["interpolation"], cfg["crop_pct"]) == (resnet.pretrained_cfg["interpolation"], 0.95)
    _, theirs = _pair()
    compiled = torch.compile(theirs)  # its state dict's names begin with _orig_mod.
    assert next(iter(compiled.state_dict())).startswith("_orig_mod.")
    assert vitkit.read_checkpoint(compiled.state_dict()).config.depth == 3
    assert vitkit.read_checkpoint({f"module.{k}": v for k, v in theirs.state_dict().items()}).format == "timm"


def test_pretrained_cfg_takes_timms_crop_and_resize_from_its_hub_config(tmp_path):
    import json

    from safetensors.torch import save_file

    _, theirs = _pair()
    (tmp_path / "hub").mkdir()
    save_file(theirs.state_dict(), str(tmp_path / "hub" / "model.safetensors"))
    pre = {"input_size": [3, 32, 32], "mean": [0.5] * 3, "std": [0.5] * 3, "crop_pct": 0.9}
    pre |= {"interpolation": "bicubic", "crop_mode": "center"}
    config = {"architecture": "vit_tiny_patch16_224", "num_classes": 5, "pretrained_cfg": pre}
    (tmp_path / "hub" / "config.json").write_text(json.dumps(config))
    cfg = vitkit.create_model(pretrained=str(tmp_path / "hub")).pretrained_cfg
    assert (cfg["crop_pct"], cfg["interpolation"], cfg["input_size"]) == (0.9, "bicubic", (3, 32, 32))
    stem = vitkit.create_model("SASA-ResNet-26", img_size=32, sasa_stem="attention").pretrained_cfg
    assert stem["first_conv"] == "stem.qk"  # the pixels' first layer, not a later conv


@pytest.mark.parametrize("name", ["ResNet-26", "BiT-R26x1"])
def test_cnn_forward_intermediates_equal_timms(name):
    """The stem's map before its pooling, then each stage's (BiT's last one normed if asked), as timm's ResNet
    and ResNetV2; SASA's attention stem gives its pooled output."""
    from vitkit.convert.resnet import to_timm_resnet_names
    from vitkit.perf.benchmark import timm_twin

    ours = vitkit.create_model(name, img_size=64, in_chans=3, num_classes=5).eval()
    theirs = timm_twin(ours.cfg).eval()
    state = ours.state_dict()
    theirs.load_state_dict(to_timm_resnet_names(state) if ours.cfg.arch == "resnet" else state)
    x = torch.randn(2, 3, 64, 64)
    cases = [
        {},
        {"indices": 2, "norm": True},
        {"indices": [0, 2], "stop_early": True},
        {"indices": [1], "intermediates_only": True},
    ]
    with torch.no_grad():
        for kw in cases:
            _assert_same(ours.forward_intermediates(x, **kw), theirs.forward_intermediates(x, **kw))
    sasa = vitkit.create_model("SASA-ResNet-26", img_size=32, in_chans=3, sasa_stem="attention").eval()
    maps = sasa.forward_intermediates(torch.randn(1, 3, 32, 32), indices=[0, 1], intermediates_only=True)
    assert [tuple(m.shape) for m in maps] == [(1, 64, 8, 8), (1, 256, 8, 8)]
    with pytest.raises(ValueError, match="output_fmt='NLC': the CNNs give 'NCHW' maps"):
        ours.forward_intermediates(x, output_fmt="NLC")


@pytest.mark.parametrize(
    "kw", [{}, {"indices": [0], "prune_norm": True}, {"indices": 2, "prune_head": False}]
)
def test_prune_intermediate_layers_as_timms(kw):
    ours, theirs = _pair(depth=4)
    assert ours.prune_intermediate_layers(**kw) == theirs.prune_intermediate_layers(**kw)
    assert len(ours.blocks) == len(theirs.blocks) == ours.cfg.depth
    assert ours.num_classes == theirs.num_classes
    x = torch.randn(2, 3, 32, 32)
    take = kw.get("indices", 1)
    with torch.no_grad():
        _assert_same(ours.forward_intermediates(x, take), theirs.forward_intermediates(x, take))
        # a pruned head: vitkit still pools (the class token), timm's reset_classifier(0, "") gives every token
        # (the last block computes the class token's query only: 1e-6 apart in float32)
        want = theirs(x)[:, 0] if kw.get("prune_head", True) else theirs(x)
        torch.testing.assert_close(ours(x), want, rtol=1e-5, atol=1e-5)


def test_a_checkpoints_stated_heads_are_kept_and_num_heads_is_used_where_it_was_not():
    """Was: a name replaced a vitkit model's 6 heads by the table's 3 (logits 0.77 off, no word), num_heads=3 was
    ignored, and a checkpoint read before refused num_heads=4 asking for num_heads."""
    torch.manual_seed(0)
    m6 = vitkit.create_model("ViT-Ti/16", num_heads=6, img_size=16, num_classes=3).eval()
    with pytest.raises(ConversionError, match=r"num_heads 6 vs 3 \(the checkpoint's vs the name's\)"):
        vitkit.create_model("ViT-Ti/16", pretrained=m6)
    with pytest.raises(ConversionError, match=r"num_heads=3, but its model has 6 heads"):
        vitkit.create_model(pretrained=m6, num_heads=3)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(vitkit.create_model(pretrained=m6, num_heads=6)(x), m6(x))
    # a model built first and loaded after: its heads checked too (they were not: logits off, no word)
    m2 = vitkit.create_model("ViT-Ti/16", num_heads=2, img_size=16, num_classes=3)
    with pytest.raises(ConversionError, match=r"trained with 6 attention heads, the model has 2"):
        vitkit.load_pretrained(m2, m6)
    unstated = vitkit.read_checkpoint(m6.state_dict())  # a bare state dict: heads not stated, so taken
    vitkit.load_pretrained(m2, unstated, strict=True)
    sasa8 = vitkit.create_model("SASA-ResNet-26", img_size=16, num_classes=3)  # the attention baselines too
    sasa4 = vitkit.create_model("SASA-ResNet-26", img_size=16, num_classes=3, num_heads=4)
    with pytest.raises(ConversionError, match=r"trained with 8 attention heads, the model has 4"):
        vitkit.load_pretrained(sasa4, sasa8)
    t6 = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=16, num_heads=6)
    with pytest.raises(ConversionError, match=r"num_heads 6 vs 3"):  # a timm model in memory states its heads
        vitkit.create_model("ViT-Ti/16", pretrained=t6)
    with pytest.raises(ConversionError, match=r"num_heads=3, but its model has 6 heads"):
        vitkit.create_model(pretrained=t6, num_heads=3)
    transformers = pytest.importorskip("transformers")
    hf = transformers.ViTForImageClassification(
        transformers.ViTConfig(
            hidden_size=192, num_hidden_layers=12, num_attention_heads=6, intermediate_size=768, image_size=16,
            patch_size=16, num_labels=3,
        )
    )  # fmt: skip
    with pytest.raises(ConversionError, match=r"num_heads 6 vs 3"):  # transformers' config states them too
        vitkit.create_model("ViT-Ti/16", pretrained=hf)
    t = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=32, depth=2, embed_dim=72, num_heads=4
    )
    ck = vitkit.read_checkpoint(t.state_dict())  # width 72: heads not stated, not a multiple of 64
    with pytest.raises(ConversionError, match="pass num_heads="):
        vitkit.create_model(pretrained=ck)
    ours = vitkit.create_model(pretrained=ck, num_heads=4)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), t.eval()(x), rtol=1e-5, atol=1e-5)


def test_a_pruned_model_names_its_depth_and_without_its_norm_is_not_saved(tmp_path):
    """Was: prune_norm left the config claiming a norm (count_params 2 x width off, a reload missing norm.*), and
    the name still said ViT-Ti/16 at 2 blocks."""
    from vitkit.convert.runs import save_model_file

    m = vitkit.create_model("ViT-Ti/16", img_size=32, depth=4)
    m.prune_intermediate_layers([1])
    assert m.cfg.depth == 2 and m.cfg.name == "ViT-192x2/16" and not m.norm_pruned
    assert vitkit.count_params(m) == sum(p.numel() for p in m.parameters())
    assert vitkit.create_model(pretrained=m).cfg.depth == 2
    m.prune_intermediate_layers([1], prune_norm=True)
    assert m.norm_pruned and vitkit.count_params(m) == sum(p.numel() for p in m.parameters())
    for save in (lambda: vitkit.create_model(pretrained=m), lambda: save_model_file(str(tmp_path / "m"), m)):
        with pytest.raises(ConversionError, match=r"final norm was pruned .* cannot be saved or read"):
            save()


def test_pretrained_cfg_takes_preprocessing_edits_as_timms_dict():
    """Was: a read-only property rebuilt on every read: edits were lost, assigning named default_cfg."""
    m = vitkit.create_model("ViT-Ti/16", img_size=32, depth=1)
    m.pretrained_cfg["crop_pct"] = 0.875
    assert timm.data.resolve_model_data_config(m)["crop_pct"] == 0.875 and m.default_cfg["crop_pct"] == 0.875
    m.pretrained_cfg = {
        "mean": (0.1, 0.2, 0.3),
        "std": (0.5, 0.5, 0.5),
        "url": "ignored",
        "input_size": (3, 32, 32),
    }
    assert timm.data.resolve_model_data_config(m)["mean"] == (0.1, 0.2, 0.3)
    with pytest.raises(KeyError, match=r"pretrained_cfg\['input_size'\] follows the model's config"):
        m.pretrained_cfg["input_size"] = (3, 64, 64)
    fresh = vitkit.create_model("ViT-Ti/16", img_size=32, depth=1)
    fresh.pretrained_cfg["mean"] = (0.2, 0.2, 0.2)  # alone: std keeps its default
    assert fresh.pretrained_cfg["mean"] == (0.2, 0.2, 0.2) and fresh.pretrained_cfg["std"] == (0.5, 0.5, 0.5)
    with pytest.raises(
        ValueError, match=r"pretrained_cfg\['std'\]=\(0\.5, 0\.5\): one positive number per channel"
    ):
        fresh.pretrained_cfg["std"] = (0.5, 0.5)
    cfg = fresh.pretrained_cfg
    with pytest.raises(KeyError, match="follows the model's config"):
        cfg |= {"input_size": (3, 99, 99)}
    for remove in (lambda: cfg.pop("mean"), lambda: cfg.__delitem__("std"), cfg.clear):
        with pytest.raises(KeyError, match="none can be removed"):
            remove()
    cnn = vitkit.create_model("ResNet-26", img_size=32, num_classes=3)
    cnn.default_cfg = {"interpolation": "bicubic"}
    assert cnn.pretrained_cfg["interpolation"] == "bicubic"
    # a refused assignment changes nothing (it wrote the mean, then refused the size); pickled as a plain dict
    # (it was written but could not be read back)
    with pytest.raises(KeyError, match="follows the model's config"):
        fresh.pretrained_cfg = {"mean": (0.9, 0.9, 0.9), "input_size": (3, 64, 64)}
    assert fresh.pretrained_cfg["mean"] == (0.2, 0.2, 0.2) and fresh.preprocess["mean"] == [0.2, 0.2, 0.2]
    back = pickle.loads(pickle.dumps(fresh.pretrained_cfg))
    assert type(back) is dict and back == dict(fresh.pretrained_cfg)
    buf = io.BytesIO()
    torch.save({"cfg": fresh.pretrained_cfg}, buf)
    assert torch.load(io.BytesIO(buf.getvalue()), weights_only=False)["cfg"] == back  # pickle's, not weights


def test_loader_errors_say_what_to_pass():
    """Was: a headless checkpoint into a classifier named only the missing head keys; pretrained=0 a TypeError of
    os.fspath; fast_inference took any dtype and ran fp32; timm's positional pretrained was refused."""
    t = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, depth=2, num_classes=0)
    model = vitkit.create_model("ViT-Ti/16", img_size=32, depth=2, num_classes=10)
    with pytest.raises(ConversionError, match=r"no classification head: pass reset_head=True"):
        vitkit.load_pretrained(model, t.state_dict())
    vitkit.load_pretrained(model, t.state_dict(), reset_head=True)
    with pytest.raises(TypeError, match=r"pretrained=0: expected a path, a hub id, a state dict or a model"):
        vitkit.create_model("ViT-Ti/16", pretrained=0)
    with pytest.raises(ValueError, match=r"fast inference dtype 'fp16': expected fp32 or bf16"):
        vitkit.fast_inference(model, torch.randn(1, 3, 32, 32), dtype="fp16", method="onnx")
    assert vitkit.create_model("ViT-Ti/16", False, img_size=32).cfg.img_size == (32, 32)


def test_timm_descriptive_attributes_and_a_json_pretrained_cfg():
    """Was: global_pool, has_class_token, no_embed_class, dynamic_img_size and patch_embed.num_patches raised
    AttributeError (code written for timm's ViT reads them); `model.pretrained_cfg = cfg` refused a hub
    config.json's [3, 224, 224] (a list, not the tuple) and timm's own cfg for the same shape (its name)."""
    import json

    import timm

    m = vitkit.create_model("ViT-Ti/16", img_size=32, depth=1, num_classes=4)
    t = timm.create_model("vit_tiny_patch16_224", img_size=32, depth=1, num_classes=4)
    for name in ("global_pool", "has_class_token", "no_embed_class", "dynamic_img_size"):
        assert getattr(m, name) == getattr(t, name), name
    assert m.patch_embed.num_patches == t.patch_embed.num_patches == 4
    gap = vitkit.create_model(
        "ViT-Ti/16", img_size=32, depth=1, pool="gap", posemb="sincos2d", dynamic_img_size=True
    )
    assert (gap.global_pool, gap.has_class_token, gap.no_embed_class, gap.dynamic_img_size) == (
        "avg",
        False,
        True,
        True,
    )
    m.reset_classifier(0, "")
    assert m.global_pool == ""
    m.pretrained_cfg = json.loads('{"input_size": [3, 32, 32], "mean": [0.1, 0.2, 0.3]}')
    at224 = vitkit.create_model("ViT-Ti/16", depth=1)  # timm's pretrained_cfg keeps its weights' 224 px
    at224.pretrained_cfg = dict(t.pretrained_cfg)  # timm's name for the shape is not the model's: ignored
    assert at224.pretrained_cfg["mean"] == t.pretrained_cfg["mean"]
    assert at224.pretrained_cfg["architecture"] == "ViT-192x1/16"  # its own name
    with pytest.raises(KeyError, match=r"pretrained_cfg\['input_size'\] follows the model's config"):
        m.pretrained_cfg = {"input_size": [3, 64, 64]}


def test_timms_global_pool_keyword_chooses_the_pooling():
    """Was: create_model(..., global_pool="avg") was an unknown option (timm's keyword for the pooling)."""
    assert vitkit.create_model("ViT-Ti/16", img_size=32, depth=1, global_pool="avg").cfg.pool == "gap"
    assert vitkit.create_model("ViT-Ti/16", img_size=32, depth=1, global_pool="token").cfg.pool == "token"
    assert (
        vitkit.create_model("BiT-R50x1", img_size=32, global_pool="avg").cfg.arch == "bit"
    )  # what a CNN does
    with pytest.raises(ValueError, match=r"global_pool='max': a ViT pools by its class token"):
        vitkit.create_model("ViT-Ti/16", img_size=32, depth=1, global_pool="max")
    with pytest.raises(ValueError, match=r"not both that and pool='token'"):
        vitkit.create_model("ViT-Ti/16", img_size=32, depth=1, global_pool="avg", pool="token")
    with pytest.raises(ValueError, match=r"reset_classifier\(0, ''\) gives its tokens unpooled"):
        vitkit.create_model("ViT-Ti/16", img_size=32, depth=1, global_pool="")
    with pytest.raises(ValueError, match=r"global_pool='token': the CNNs pool by the mean"):
        vitkit.create_model("ResNet-50", img_size=32, global_pool="token")
