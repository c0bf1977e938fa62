"""Pretrained weights: official/big_vision .npz, timm, Hugging Face, resampling, heads, safety, hub ids."""

from __future__ import annotations

import functools
import json
import logging
import pickle

import numpy as np
import pytest
import scipy.ndimage
import torch

import vitkit
from vitkit.convert import ConversionError, UnsafeCheckpointError, load_pretrained, read_checkpoint

# a tiny ViT at ViT-B/16's patch size: width 32, 2 blocks, 4 heads, MLP 64
D, DEPTH, HEADS, MLP, P = 32, 2, 4, 64, 16


def flax_arrays(
    *,
    grid: int = 2,
    chans: int = 3,
    classes: int = 5,
    big_vision: bool = False,
    scanned: bool = False,
    gap: bool = False,
    rep: int | None = None,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Random weights in the official (or big_vision) Flax layout, keyed as in their .npz files."""
    rng = np.random.default_rng(seed)
    r = lambda *s: rng.normal(0, 0.2, s).astype(np.float32)  # noqa: E731
    hd = D // HEADS
    mha, mlp, ln2 = ("MultiHeadDotProductAttention_0", "MlpBlock_0", "LayerNorm_1") if big_vision else (
        "MultiHeadDotProductAttention_1", "MlpBlock_3", "LayerNorm_2")  # fmt: skip
    w: dict[str, np.ndarray] = {"embedding/kernel": r(P, P, chans, D), "embedding/bias": r(D)}
    n = grid * grid
    if not gap:
        w["cls"] = r(1, 1, D)
    if big_vision:
        w["pos_embedding"] = r(1, n, D)  # big_vision: no class-token entry
    else:
        w["Transformer/posembed_input/pos_embedding"] = r(1, n + (0 if gap else 1), D)
    blocks = []
    for _ in range(DEPTH):
        b = {f"{mha}/{x}/kernel": r(D, HEADS, hd) for x in ("query", "key", "value")}
        b.update({f"{mha}/{x}/bias": r(HEADS, hd) for x in ("query", "key", "value")})
        b.update({f"{mha}/out/kernel": r(HEADS, hd, D), f"{mha}/out/bias": r(D)})
        for ln in ("LayerNorm_0", ln2):
            b.update({f"{ln}/scale": 1 + r(D), f"{ln}/bias": r(D)})
        b.update({f"{mlp}/Dense_0/kernel": r(D, MLP), f"{mlp}/Dense_0/bias": r(MLP)})
        b.update({f"{mlp}/Dense_1/kernel": r(MLP, D), f"{mlp}/Dense_1/bias": r(D)})
        blocks.append(b)
    if scanned:
        for k in blocks[0]:
            w[f"Transformer/encoderblock/{k}"] = np.stack([b[k] for b in blocks])  # (depth, ...)
    else:
        for i, b in enumerate(blocks):
            w.update({f"Transformer/encoderblock_{i}/{k}": v for k, v in b.items()})
    w.update({"Transformer/encoder_norm/scale": 1 + r(D), "Transformer/encoder_norm/bias": r(D)})
    if rep:
        w.update({"pre_logits/kernel": r(D, rep), "pre_logits/bias": r(rep)})
    w.update({"head/kernel": r(rep or D, classes), "head/bias": r(classes)})
    return w


def save_npz(path, arrays: dict[str, np.ndarray], prefix: str = "") -> str:
    np.savez(path, **{prefix + k: v for k, v in arrays.items()})
    return str(path)


def timm_vit(*, grid=2, chans=3, classes=5, gap=False, no_embed_class=False, eps=1e-6, **kw):
    from timm.models.vision_transformer import VisionTransformer as TimmViT

    return TimmViT(
        img_size=kw.pop("img_size", grid * P), patch_size=P, in_chans=chans, num_classes=classes, embed_dim=D, depth=DEPTH,
        num_heads=HEADS, mlp_ratio=MLP / D, class_token=kw.pop("class_token", not gap), global_pool="avg" if gap else "token",
        fc_norm=False if gap else None, no_embed_class=no_embed_class,
        norm_layer=functools.partial(torch.nn.LayerNorm, eps=eps), **kw,
    ).eval()  # fmt: skip


def randomize(model: torch.nn.Module, std: float = 0.2) -> torch.nn.Module:
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, std)
    return model.eval()


def assert_same_logits(ours, theirs, x, atol=1e-5):
    with torch.no_grad():
        a, b = ours(x), theirs(x)
    torch.testing.assert_close(a, b, rtol=0, atol=atol)


# ----------------------------------------------------------------------------- official / big_vision .npz


@pytest.mark.parametrize(
    "layout",
    [
        dict(),
        dict(prefix="opt/target/"),
        dict(gap=True),
        dict(big_vision=True, prefix="params/"),
        dict(big_vision=True, scanned=True, prefix="params/"),
        dict(big_vision=True, scanned=True, gap=True, prefix="params/"),
    ],
    ids=[
        "official",
        "opt-target",
        "official-gap",
        "big_vision",
        "big_vision-scanned",
        "big_vision-scanned-gap",
    ],
)
def test_npz_matches_timms_own_loader(tmp_path, layout):
    layout = dict(layout)
    prefix = layout.pop("prefix", "")
    path = save_npz(tmp_path / "ckpt.npz", flax_arrays(**layout), prefix)
    gap, bv = layout.get("gap", False), layout.get("big_vision", False)
    theirs = timm_vit(gap=gap, no_embed_class=bv and not gap)
    theirs.load_pretrained(path)  # timm's _load_weights
    ours = vitkit.create_model(pretrained=path)
    assert ours.cfg.pool == ("gap" if gap else "token")
    assert (ours.cfg.num_heads, ours.cfg.depth, ours.cfg.embed_dim, ours.cfg.norm_eps) == (
        HEADS,
        DEPTH,
        D,
        1e-6,
    )
    assert read_checkpoint(path).format == ("big_vision" if bv else "official")
    assert_same_logits(ours, theirs, torch.randn(3, 3, 2 * P, 2 * P))


def test_npz_pre_logits_loaded(tmp_path):
    arrays = flax_arrays(rep=24)
    path = save_npz(tmp_path / "rep.npz", arrays)
    model = vitkit.create_model(pretrained=path)
    assert model.cfg.representation_size == 24
    torch.testing.assert_close(model.pre_logits.fc.weight, torch.from_numpy(arrays["pre_logits/kernel"].T))
    torch.testing.assert_close(model.head.weight, torch.from_numpy(arrays["head/kernel"].T))
    new = vitkit.create_model(
        pretrained=path, num_classes=3
    )  # a different head: replaced, pre-logits dropped
    assert isinstance(new.pre_logits, torch.nn.Identity) and new.cfg.representation_size is None
    assert new.head.weight.shape == (3, D) and new.head.weight.abs().sum() == 0


def official_forward(w: dict[str, np.ndarray], images: np.ndarray, tanh_gelu: bool) -> np.ndarray:
    """The official vit_jax forward written out in float64 numpy on its own .npz arrays (class token, 1-D
    posemb, pre-LN blocks, LayerNorm eps 1e-6, flax's tanh GELU or the erf one): an independent reference."""
    from scipy.special import erf

    def ln(x, name):
        mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + 1e-6) * w[f"{name}/scale"] + w[f"{name}/bias"]

    def gelu(x):
        if tanh_gelu:
            return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))
        return 0.5 * x * (1 + erf(x / np.sqrt(2)))

    w = {k: v.astype(np.float64) for k, v in w.items()}
    x = images.astype(np.float64).transpose(0, 2, 3, 1)  # (B, H, W, C): NHWC as Flax
    b, h, wd, c = x.shape
    patches = x.reshape(b, h // P, P, wd // P, P, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, -1, P * P * c)
    z = patches @ w["embedding/kernel"].reshape(P * P * c, D) + w["embedding/bias"]  # (B, Np, D)
    z = np.concatenate([np.repeat(w["cls"], b, 0), z], 1) + w["Transformer/posembed_input/pos_embedding"]
    for i in range(DEPTH):
        pre = f"Transformer/encoderblock_{i}/"
        mha, mlp = pre + "MultiHeadDotProductAttention_1/", pre + "MlpBlock_3/"
        y = ln(z, pre + "LayerNorm_0")
        q, k, v = (np.einsum("bnd,dhk->bhnk", y, w[mha + f"{n}/kernel"]) + w[mha + f"{n}/bias"][None, :, None]
                   for n in ("query", "key", "value"))  # fmt: skip
        logits = q @ k.transpose(0, 1, 3, 2) / np.sqrt(D // HEADS)
        a = np.exp(logits - logits.max(-1, keepdims=True))
        a /= a.sum(-1, keepdims=True)
        z = z + np.einsum("bhnk,hkd->bnd", a @ v, w[mha + "out/kernel"]) + w[mha + "out/bias"]
        y = ln(z, pre + "LayerNorm_2")
        y = gelu(y @ w[mlp + "Dense_0/kernel"] + w[mlp + "Dense_0/bias"])
        z = z + y @ w[mlp + "Dense_1/kernel"] + w[mlp + "Dense_1/bias"]
    cls = ln(z, "Transformer/encoder_norm")[:, 0]
    return cls @ w["head/kernel"] + w["head/bias"]


def test_npz_logits_equal_the_official_forward_with_its_tanh_gelu(tmp_path):
    """`mlp_act="gelu_tanh"` computes what the official JAX code computes on its own checkpoint; the default
    erf GELU (timm's, transformers') is the other reference's."""
    arrays = flax_arrays(seed=3)
    path = save_npz(tmp_path / "ckpt.npz", arrays)
    x = np.random.default_rng(0).normal(size=(2, 3, 2 * P, 2 * P)).astype(np.float32)
    official = vitkit.create_model(pretrained=path, mlp_act="gelu_tanh").double()
    erf_model = vitkit.create_model(pretrained=path).double()
    assert official.cfg.mlp_act == "gelu_tanh" and erf_model.cfg.mlp_act == "gelu"
    with torch.no_grad():
        ours_tanh = official(torch.from_numpy(x).double()).numpy()
        ours_erf = erf_model(torch.from_numpy(x).double()).numpy()
    np.testing.assert_allclose(ours_tanh, official_forward(arrays, x, tanh_gelu=True), rtol=0, atol=1e-9)
    np.testing.assert_allclose(ours_erf, official_forward(arrays, x, tanh_gelu=False), rtol=0, atol=1e-9)
    assert np.abs(ours_tanh - ours_erf).max() > 1e-4  # the two GELUs differ visibly on these weights
    with pytest.raises(ValueError, match=r"model\.mlp_act='relu'"):
        vitkit.create_model("ViT-Ti/16", mlp_act="relu")


# ----------------------------------------------------------------------------- timm and Hugging Face


@pytest.mark.parametrize("suffix", [".safetensors", ".pth", ".bin"])
@pytest.mark.parametrize("kind", ["token", "gap", "no_embed_class"])
def test_timm_state_dict_files(tmp_path, suffix, kind):
    from safetensors.torch import save_file

    t = randomize(timm_vit(gap=kind == "gap", no_embed_class=kind == "no_embed_class"))
    path = str(tmp_path / f"timm{suffix}")
    sd = t.state_dict()
    if suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in sd.items()}, path)
    else:
        torch.save({"state_dict": sd, "epoch": 3} if suffix == ".pth" else sd, path)
    with pytest.raises(ConversionError, match="num_heads"):  # fused qkv of a non-paper width: heads unknown
        vitkit.create_model(pretrained=path)
    ours = vitkit.create_model(pretrained=path, num_heads=HEADS)
    assert_same_logits(ours, t, torch.randn(2, 3, 2 * P, 2 * P))


def test_timm_fc_norm_is_refused(tmp_path):
    from safetensors.torch import save_file

    t = timm_vit(gap=True)
    sd = dict(t.state_dict())
    sd["fc_norm.weight"] = torch.ones(D)
    save_file(sd, str(tmp_path / "fc.safetensors"))
    with pytest.raises(ConversionError, match="fc_norm"):
        read_checkpoint(tmp_path / "fc.safetensors")


@pytest.mark.parametrize(
    ("kw", "size"),
    [(dict(img_size=(2 * P, 4 * P)), (2 * P, 4 * P)),  # 2x4 patches + the class row = 9 = 3^2 rows
     (dict(img_size=(2 * P, 3 * P), no_embed_class=True), (2 * P, 3 * P)),  # 6 rows: no square to guess from
     (dict(act_layer="gelu_tanh", eps=1e-5), (2 * P, 2 * P)),
     (dict(dynamic_img_size=True), (2 * P, 2 * P))],
    ids=["2x4-grid", "no-embed-class-2x3", "gelu-tanh-eps1e-5", "dynamic"],
)  # fmt: skip
def test_a_timm_model_in_memory_is_read_with_its_own_settings(kw, size):
    """Image size, activation, LayerNorm eps, dynamic size and position-embedding layout come from the module,
    as a hub config.json gives them for a folder."""
    t = randomize(timm_vit(**kw))
    ours = vitkit.create_model(pretrained=t)
    assert tuple(ours.cfg.img_size) == size and ours.cfg.norm_eps == t.norm.eps
    assert ours.cfg.mlp_act == ("gelu_tanh" if "act_layer" in kw else "gelu")
    assert ours.cfg.dynamic_img_size == kw.get("dynamic_img_size", False)
    assert_same_logits(ours, t, torch.randn(2, 3, *size))


@pytest.mark.parametrize("kind", ["class-row-2x4", "no-embed-class-3x3"])
def test_a_bare_state_dict_is_read_at_the_size_asked_for(caplog, kind):
    """9 = 3^2 position rows with a class token: 2x4 patches and a class-token row, or 3x3 without one (timm's
    no_embed_class); a bare state dict does not say which. The square reading is taken with a warning, and an
    img_size that fits one reading chooses it (the class-row reading with a warning of its own)."""
    size = (2 * P, 4 * P) if kind.startswith("class") else (3 * P, 3 * P)
    t = randomize(timm_vit(img_size=size, no_embed_class=kind.startswith("no")))
    with caplog.at_level(logging.WARNING):
        guessed = vitkit.create_model(pretrained=t.state_dict(), num_heads=HEADS)
    assert tuple(guessed.cfg.img_size) == (3 * P, 3 * P) and "if it is a 2x4 grid with one" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        ours = vitkit.create_model(pretrained=t.state_dict(), num_heads=HEADS, img_size=size)
    assert tuple(ours.cfg.img_size) == size
    assert ("read as a class-token row and a 2x4 grid" in caplog.text) == kind.startswith("class")
    assert "without a class-token row" not in caplog.text
    assert_same_logits(ours, t, torch.randn(2, 3, *size))


def test_a_state_dict_whose_layout_is_plain_is_resampled_to_any_size_asked_for():
    """5 rows with a class token can only be a 2x2 grid and a class-token row: a size asked for whose token count
    would fit the rows (1x4) is a resampling, not a reading."""
    t = randomize(timm_vit())
    asked = vitkit.create_model(pretrained=t.state_dict(), num_heads=HEADS, img_size=(P, 4 * P))
    moved = vitkit.create_model(pretrained=t.state_dict(), num_heads=HEADS)
    moved.set_img_size((P, 4 * P))
    torch.testing.assert_close(asked.pos_embed, moved.pos_embed, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    ("kw", "match"),
    [(dict(gap=True, class_token=True), r"class token pooled by average"),
     (dict(act_layer="relu"), r"act_layer='ReLU'"),
     (dict(reg_tokens=4), r"register tokens \(timm's reg_tokens=4\)")],
    ids=["avg-pool-with-class-token", "relu", "register-tokens"],
)  # fmt: skip
def test_a_timm_model_vitkit_cannot_compute_is_refused(kw, match):
    with pytest.raises(ConversionError, match=match):
        vitkit.create_model(pretrained=timm_vit(**kw))


def _hf_model(cls_name: str, **kw):
    import transformers

    cfg = transformers.ViTConfig(
        hidden_size=D, num_hidden_layers=DEPTH, num_attention_heads=HEADS, intermediate_size=MLP,
        image_size=2 * P, patch_size=P, num_labels=5, layer_norm_eps=1e-5, **kw,
    )  # fmt: skip
    return randomize(getattr(transformers, cls_name)(cfg), std=0.1)


@pytest.mark.parametrize("act", ["gelu", "gelu_pytorch_tanh", "gelu_new"])
def test_hf_image_classification_matches(tmp_path, act):
    hf = _hf_model("ViTForImageClassification", hidden_act=act)
    hf.save_pretrained(tmp_path / "hf")
    ours = vitkit.create_model(pretrained=tmp_path / "hf")
    assert ours.cfg.norm_eps == 1e-5 and ours.cfg.num_heads == HEADS and ours.cfg.num_classes == 5
    assert ours.cfg.mlp_act == ("gelu" if act == "gelu" else "gelu_tanh")
    x = torch.randn(3, 3, 2 * P, 2 * P)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), hf(pixel_values=x).logits, rtol=0, atol=1e-5)
    assert read_checkpoint(tmp_path / "hf").meta["classes"][0] == "LABEL_0"
    if act == "gelu":
        hf.config.hidden_act = "relu"
        hf.save_pretrained(tmp_path / "relu")
        with pytest.raises(ConversionError, match="hidden_act='relu'; vitkit's MLP takes 'gelu', 'gelu_new'"):
            read_checkpoint(tmp_path / "relu")


def test_hf_vit_model_pooler_is_pre_logits(tmp_path):
    hf = _hf_model("ViTModel")
    hf.save_pretrained(tmp_path / "hf", safe_serialization=False)  # pytorch_model.bin, read weights-only
    ours = vitkit.create_model(pretrained=tmp_path / "hf")
    assert ours.cfg.num_classes == 0 and ours.cfg.representation_size == D
    x = torch.randn(2, 3, 2 * P, 2 * P)
    with torch.no_grad():
        out = hf(pixel_values=x)
        torch.testing.assert_close(ours(x), out.pooler_output, rtol=0, atol=1e-5)
        torch.testing.assert_close(ours.forward_features(x), out.last_hidden_state, rtol=0, atol=1e-5)


# ----------------------------------------------------------------------------- resolution and heads


def scipy_zoom(pe: torch.Tensor, old, new) -> torch.Tensor:
    """The official code's resize of the patch position embeddings: scipy.ndimage.zoom(order=1)."""
    grid = pe[0, 1:].double().numpy().reshape(old[0], old[1], -1)
    grid = scipy.ndimage.zoom(grid, (new[0] / old[0], new[1] / old[1], 1), order=1)
    return torch.cat([pe[:, :1].double(), torch.from_numpy(grid.reshape(1, new[0] * new[1], -1))], dim=1)


@pytest.fixture
def b16_224(tmp_path):
    """ViT-B/16-shaped position embeddings (a 14x14 grid at 224 px) on a tiny encoder, saved by vitkit."""
    m = vitkit.create_model(
        "ViT-B/16", img_size=224, embed_dim=D, depth=1, num_heads=HEADS, mlp_dim=MLP, num_classes=5
    )
    path = str(tmp_path / "b16.safetensors")
    vitkit.convert.save_model_file(path, m)
    return path, m


@pytest.mark.parametrize("size", [384, (384, 256)])
def test_224_to_384_equals_scipy_zoom(b16_224, size):
    path, m = b16_224
    big = vitkit.create_model(pretrained=path, img_size=size)
    new = big.cfg.grid_size
    assert big.cfg.img_size == ((size, size) if isinstance(size, int) else size)
    ref = scipy_zoom(m.pos_embed.detach(), (14, 14), new).float()
    torch.testing.assert_close(big.pos_embed.detach(), ref, rtol=0, atol=1e-5)
    assert big(torch.randn(1, 3, *big.cfg.img_size)).shape == (1, 5)


def test_bicubic_resample_matches_timm(b16_224):
    from timm.layers import resample_abs_pos_embed

    path, m = b16_224
    big = vitkit.create_model(pretrained=path, img_size=384, resample="bicubic")
    ref = resample_abs_pos_embed(m.pos_embed.detach(), new_size=(24, 24), num_prefix_tokens=1)
    torch.testing.assert_close(big.pos_embed.detach(), ref, rtol=0, atol=1e-5)


def test_head_mismatch_is_reported_or_reset(b16_224):
    path, _ = b16_224
    model = vitkit.models.create_model(
        "ViT-B/16", embed_dim=D, depth=1, num_heads=HEADS, mlp_dim=MLP, num_classes=7
    )
    with pytest.raises(
        ConversionError, match=r"head.weight is \(5, 32\) in the checkpoint.*\(7, 32\).*reset_head=True"
    ):
        load_pretrained(model, path)
    report = load_pretrained(model, path, reset_head=True)
    assert report.head_reset and model.head.weight.abs().sum() == 0 and model.cfg.head_init == "zero"
    feats = vitkit.models.create_model(
        "ViT-B/16", embed_dim=D, depth=1, num_heads=HEADS, mlp_dim=MLP, num_classes=0
    )
    load_pretrained(feats, path)  # no head: the encoder only


def test_grey_model_from_rgb_checkpoint(b16_224):
    path, m = b16_224
    grey = vitkit.create_model(pretrained=path, in_chans=1)
    x = torch.randn(2, 1, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(grey(x), m.eval()(x.expand(-1, 3, -1, -1)), rtol=0, atol=1e-4)


def test_adapted_channels_get_a_mean_and_std_each(tmp_path):
    """Was: a 1-channel model from an RGB checkpoint kept 3 means and stds, which timm's transforms and the
    exported peer folders then applied to 1-channel images (a shape error) and pretrained_cfg refused itself."""
    from vitkit.convert.runs import save_model_file

    m = vitkit.create_model("ViT-Ti/16", img_size=32, depth=1, num_classes=3)
    save_model_file(str(tmp_path / "m.safetensors"), m, {"mean": [0.1, 0.2, 0.3], "std": [0.5, 0.6, 0.7]})
    grey = vitkit.create_model(pretrained=str(tmp_path / "m.safetensors"), in_chans=1)
    cfg = grey.pretrained_cfg
    assert cfg["input_size"] == (1, 32, 32)
    assert cfg["mean"] == pytest.approx((0.2,)) and cfg["std"] == pytest.approx((0.6,))
    cfg["mean"] = cfg["mean"]  # consistent with itself again
    four = vitkit.create_model(pretrained=str(tmp_path / "m.safetensors"), in_chans=4)
    assert four.pretrained_cfg["mean"] == (0.1, 0.2, 0.3, 0.1)  # the filters' cycle (timm's adapt_input_conv)


def test_wrong_shapes_and_keys_are_named(tmp_path, b16_224):
    path, m = b16_224
    small = vitkit.models.create_model(
        "ViT-B/16", embed_dim=48, depth=1, num_heads=4, mlp_dim=MLP, num_classes=5
    )
    with pytest.raises(
        ConversionError,
        match=r"patch_embed.proj.weight: checkpoint \(32, 3, 16, 16\), model \(48, 3, 16, 16\)",
    ):
        load_pretrained(small, path)
    from safetensors.torch import save_file

    sd = {k: v.clone() for k, v in m.state_dict().items()}
    del sd["blocks.0.norm1.weight"]
    sd["blocks.0.ls1.gamma"] = torch.ones(D)
    save_file(sd, str(tmp_path / "odd.safetensors"))
    target = vitkit.models.create_model(
        "ViT-B/16", embed_dim=D, depth=1, num_heads=HEADS, mlp_dim=MLP, num_classes=5
    )
    with pytest.raises(
        ConversionError,
        match=r"missing keys \[blocks.0.norm1.weight\], unexpected keys \[blocks.0.ls1.gamma\]",
    ):
        load_pretrained(target, tmp_path / "odd.safetensors")
    report = load_pretrained(target, tmp_path / "odd.safetensors", strict=False)
    assert report.missing == ["blocks.0.norm1.weight"] and report.unexpected == ["blocks.0.ls1.gamma"]


def test_vitkit_run_dir_roundtrip(tmp_path):
    from helpers import tiny_run
    from vitkit.train.loop import train

    cfg = tiny_run(epochs=1)
    train(cfg, str(tmp_path / "run"))
    model = vitkit.model_from_source(tmp_path / "run")
    assert model.cfg.img_size == (16, 16) and model.cfg.num_heads == 2
    ckpt = read_checkpoint(tmp_path / "run")
    assert ckpt.format == "vitkit" and "mean" in ckpt.meta
    big = vitkit.model_from_source(tmp_path / "run", img_size=32)
    assert big.pos_embed.shape == (1, 1 + 64, 32)


# ----------------------------------------------------------------------------- safety


class _WritesAFile:
    """Unpickling this calls open(path, "w"): a stand-in for any code a pickle can run."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.parametrize("how", ["torch.save", "raw-pickle"])
def test_malicious_pickle_is_refused_and_runs_nothing(tmp_path, how):
    marker = tmp_path / "pwned.txt"
    path = tmp_path / ("evil.pth" if how == "torch.save" else "evil.bin")
    payload = {"patch_embed.proj.weight": torch.zeros(1), "x": _WritesAFile(str(marker))}
    if how == "torch.save":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload))
    with pytest.raises(UnsafeCheckpointError, match=r"evil\.(pth|bin): refused to load"):
        read_checkpoint(path)
    with pytest.raises(UnsafeCheckpointError):
        vitkit.create_model(pretrained=path)
    assert not marker.exists()
    if how == "raw-pickle":  # the file really is malicious: an unsafe load would have written the marker
        pickle.loads(path.read_bytes())
        assert marker.exists()


def test_npz_with_object_arrays_is_refused(tmp_path):
    arrays = flax_arrays()
    arrays["evil"] = np.array([{"a": 1}], dtype=object)
    path = save_npz(tmp_path / "evil.npz", arrays)
    with pytest.raises(UnsafeCheckpointError, match=r"evil\.npz: refused"):
        read_checkpoint(path)
    import pickle

    (tmp_path / "pickled.npz").write_bytes(pickle.dumps({"a": 1}))  # a pickle under the name: refused too
    with pytest.raises(UnsafeCheckpointError, match=r"pickled\.npz: refused"):
        read_checkpoint(tmp_path / "pickled.npz")
    for name, junk in [
        ("junk.bin", b"hello world\n"),
        ("rnd.pth", bytes(range(128, 256)) * 4),
        ("empty.pth", b""),
    ]:
        (tmp_path / name).write_bytes(junk)  # not pickles of code: unreadable, not "dangerous"
        with pytest.raises(ConversionError, match=rf"{name} is not a readable PyTorch weights file: \S") as e:
            read_checkpoint(tmp_path / name)
        assert not isinstance(e.value, UnsafeCheckpointError)
    for junk in (b"hello\n", bytes(range(7, 64))):  # not pickles: unreadable, not "dangerous"
        (tmp_path / "junk.npz").write_bytes(junk)
        with pytest.raises(
            ConversionError, match=r"junk\.npz is not a readable \.npz archive: neither a zip"
        ):
            read_checkpoint(tmp_path / "junk.npz")


@pytest.mark.parametrize("content", [b"not a safetensors file", b'\x10\x00\x00\x00\x00\x00\x00\x00{"a":'])
def test_malformed_safetensors_error_cleanly(tmp_path, content):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    with pytest.raises(ConversionError, match=r"bad\.safetensors is not a valid safetensors file"):
        read_checkpoint(path)


def test_truncated_safetensors(tmp_path, b16_224):
    src, _ = b16_224
    with open(src, "rb") as f:
        data = f.read()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ConversionError, match=r"cut\.safetensors"):
        read_checkpoint(tmp_path / "cut.safetensors")


def test_unknown_sources(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_checkpoint(tmp_path / "nope.npz")
    (tmp_path / "w.txt").write_text("x")
    with pytest.raises(ConversionError, match="unknown file type"):
        read_checkpoint(tmp_path / "w.txt")
    (tmp_path / "runs").mkdir()  # a typo under a local folder is a missing path, not a hub id
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="runs/fashon-mnist does not exist"):
        read_checkpoint("runs/fashon-mnist")


# ----------------------------------------------------------------------------- hub ids (no network)


def test_hub_offline_uncached_names_id_and_cache(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    for hub_id in ("google/vit-base-patch16-224", "hf-hub:timm/vit_base_patch16_224.augreg2_in21k_ft_in1k"):
        with pytest.raises(ConversionError) as e:
            read_checkpoint(hub_id)
        assert hub_id in str(e.value) and str(tmp_path / "hub-cache") in str(e.value)
        assert "cannot be reached (no connection, or HF_HUB_OFFLINE=1)" in str(e.value)
    monkeypatch.chdir(tmp_path)  # no runs/ folder here
    with pytest.raises(ConversionError, match=r"nor is 'runs/best' a local file or folder"):
        read_checkpoint("runs/best")  # a mistyped local path reads as a hub id: both are said


def test_hub_unreachable_online_is_not_called_a_missing_file(monkeypatch, tmp_path):
    """Was: no connection (huggingface_hub's LocalEntryNotFoundError) was reported as 'config.json not found in
    the repository'."""
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    def unreachable(repo_id, filename, **kw):
        raise LocalEntryNotFoundError("connection error, and the file is not in the cache")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", unreachable)
    with pytest.raises(ConversionError, match="the Hugging Face hub cannot be reached") as e:
        read_checkpoint("google/vit-base-patch16-224")
    assert "not found in the repository" not in str(e.value)

    def config_cached(repo_id, filename, **kw):  # the config cached, the weights not, the hub unreachable
        if filename == "config.json":
            return str(tmp_path / "config.json")
        raise LocalEntryNotFoundError("connection error, and the file is not in the cache")

    (tmp_path / "config.json").write_text("{}")
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", config_cached)
    with pytest.raises(ConversionError, match="the Hugging Face hub cannot be reached"):
        read_checkpoint("google/vit-base-patch16-224")


def test_hub_ids_resolve_through_the_cache(tmp_path, monkeypatch):
    import huggingface_hub
    from huggingface_hub.errors import EntryNotFoundError

    hf = _hf_model("ViTForImageClassification")
    hf.save_pretrained(tmp_path / "snap")
    t = randomize(timm_vit())
    (tmp_path / "timm").mkdir()
    torch.save(t.state_dict(), tmp_path / "timm" / "pytorch_model.bin")
    cfg = '{"architecture": "vit_custom", "num_classes": 5, "model_args": {"num_heads": %d}, "pretrained_cfg": {"input_size": [3, 32, 32], "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}}'
    (tmp_path / "timm" / "config.json").write_text(cfg % HEADS)
    calls = []

    def fake_download(repo_id, filename, **kw):
        calls.append((repo_id, filename))
        path = tmp_path / ("snap" if repo_id == "google/tiny-vit" else "timm") / filename
        if not path.exists():
            raise EntryNotFoundError(f"{repo_id}/{filename}")
        return str(path)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    x = torch.randn(2, 3, 2 * P, 2 * P)
    ours = vitkit.create_model(pretrained="google/tiny-vit")
    with torch.no_grad():
        torch.testing.assert_close(ours(x), hf(pixel_values=x).logits, rtol=0, atol=1e-5)
    ours = vitkit.create_model(pretrained="hf-hub:timm/tiny")
    assert_same_logits(ours, t, x)
    assert ("timm/tiny", "model.safetensors") in calls and ("timm/tiny", "pytorch_model.bin") in calls


def test_create_model_without_name_or_weights():
    with pytest.raises(ValueError, match="needs a model name"):
        vitkit.create_model()
    assert vitkit.create_model("ViT-Ti/16", img_size=32, depth=1).cfg.depth == 1


def test_big_vision_sincos_checkpoint_is_laid_out_on_the_models_grid(tmp_path):
    """big_vision files hold no position embedding (fixed sin-cos) and no image size: at any size the embedding
    is computed on the model's own grid, as big_vision does, not on a guessed training grid."""
    arrays = flax_arrays(big_vision=True, gap=True, grid=2)
    del arrays["pos_embedding"]
    path = save_npz(tmp_path / "sincos.npz", arrays, "params/")
    ckpt = read_checkpoint(path)
    assert ckpt.config.posemb == "sincos2d"
    model = vitkit.create_model(pretrained=path, img_size=3 * P)
    assert model.cfg.posemb_grid is None
    torch.testing.assert_close(model.pos_embed[0], vitkit.models.sincos2d((3, 3), D))


def test_malformed_npz_arrays_are_named(tmp_path):
    """Was: a block with other heads or a 2-D query kernel loaded silently as another model; a scanned array of
    the wrong depth, a 3-D embedding or a string array gave a traceback or an error naming nothing."""
    mha = "Transformer/encoderblock_0/MultiHeadDotProductAttention_1/"
    cases = []
    mixed = flax_arrays()
    for n in ("query", "key", "value"):
        mixed[f"{mha}{n}/kernel"] = mixed[f"{mha}{n}/kernel"].reshape(D, 2 * HEADS, D // HEADS // 2)
        mixed[f"{mha}{n}/bias"] = mixed[f"{mha}{n}/bias"].reshape(2 * HEADS, -1)
    mixed[f"{mha}out/kernel"] = mixed[f"{mha}out/kernel"].reshape(2 * HEADS, -1, D)
    cases.append((mixed, "", r"the blocks' attention heads differ \(\[8, 4\]\)"))
    flat = flax_arrays()
    flat[f"{mha}query/kernel"] = flat[f"{mha}query/kernel"].reshape(D, D)
    cases.append((flat, "", rf"array '{mha}query/kernel' has shape \(32, 32\); expected 3 axes"))
    scanned = flax_arrays(big_vision=True, scanned=True)
    scanned["Transformer/encoderblock/LayerNorm_0/scale"] = np.ones((DEPTH + 1, D), np.float32)
    cases.append((scanned, "params/", r"has no entry for block 2 \(the scanned blocks' arrays disagree"))
    embed = flax_arrays()
    embed["embedding/kernel"] = embed["embedding/kernel"].reshape(P, P, -1)
    cases.append((embed, "", r"array 'embedding/kernel' has shape \(16, 16, 96\); expected 4 axes"))
    text = flax_arrays()
    text["Transformer/encoder_norm/scale"] = np.array(["a"] * D)
    cases.append((text, "", r"array 'Transformer/encoder_norm/scale' holds <U1, not numbers"))
    for i, (arrays, prefix, match) in enumerate(cases):
        path = save_npz(tmp_path / f"bad{i}.npz", arrays, prefix)
        with pytest.raises(ConversionError, match=match):
            read_checkpoint(path)


def test_a_wrongly_shaped_tensor_is_named_itself(tmp_path):
    """Was: the config was read from the damaged tensor, and every other block's tensors were listed instead."""
    from safetensors.torch import save_file

    state = vitkit.create_model("ViT-Ti/16", img_size=32, depth=3, num_classes=3).state_dict()
    bad = dict(state, **{"blocks.0.mlp.fc1.weight": torch.zeros(100, 192)})
    save_file(bad, str(tmp_path / "a.safetensors"))
    with pytest.raises(
        ConversionError, match=r"blocks\.0\.mlp\.fc1\.weight \(100, 192\) and blocks\.0\.mlp\.fc1"
    ):
        read_checkpoint(tmp_path / "a.safetensors")
    odd = dict(state, **{"blocks.2.norm1.weight": torch.ones(7)})
    save_file(odd, str(tmp_path / "b.safetensors"))
    with pytest.raises(
        ConversionError, match=r"blocks\.2\.norm1\.weight \(7,\) unlike the other blocks' \(192,\)"
    ):
        read_checkpoint(tmp_path / "b.safetensors")
    save_file(state, str(tmp_path / "c.safetensors"))
    with pytest.raises(
        ConversionError, match=r"c\.safetensors: width 192 is not divisible by the number of heads 5"
    ):
        vitkit.create_model(pretrained=str(tmp_path / "c.safetensors"), num_heads=5)


# ----------------------------------------------------------------------------- layouts and files a review found


def test_a_non_square_official_npz_keeps_its_class_row(tmp_path):
    """Was: 1 + 24 = 25 rows (a 4x6 grid and the class row: the official code adds the embedding after the class
    token) read as a 5x5 grid without one, resampled to 4x6 in silence (logits 0.29 off)."""
    arrays = flax_arrays(seed=4)
    pe = np.random.default_rng(1).normal(0, 0.2, (1, 25, D)).astype(np.float32)
    arrays["Transformer/posembed_input/pos_embedding"] = pe
    path = save_npz(tmp_path / "4x6.npz", arrays)
    model = vitkit.create_model(pretrained=path, img_size=(4 * P, 6 * P)).double()
    torch.testing.assert_close(model.pos_embed.float(), torch.from_numpy(pe), rtol=0, atol=0)
    x = np.random.default_rng(0).normal(size=(2, 3, 4 * P, 6 * P)).astype(np.float32)
    with torch.no_grad():
        ours = model(torch.from_numpy(x).double()).numpy()
    np.testing.assert_allclose(ours, official_forward(arrays, x, tanh_gelu=False), rtol=0, atol=1e-9)
    bv = flax_arrays(big_vision=True, seed=5)  # big_vision adds it before: 24 rows and never a class row
    bv["pos_embedding"] = pe[:, 1:]
    model = vitkit.create_model(
        pretrained=save_npz(tmp_path / "bv.npz", bv, "params/"), img_size=(4 * P, 6 * P)
    )
    want = torch.cat([torch.zeros(1, 1, D), torch.from_numpy(pe[:, 1:])], 1)
    torch.testing.assert_close(model.pos_embed, want, rtol=0, atol=0)


@pytest.mark.parametrize("kind", ["class-row-4x8", "no-embed-class-4x6"])
def test_a_non_square_timm_file_is_read_at_the_size_asked_for(tmp_path, kind):
    """Was: 33 rows (4x8 and a class row) or 24 rows with a class token (timm's no_embed_class at 4x6) could not
    be loaded at all: the error asked for the img_size that had been given."""
    from safetensors.torch import save_file

    size = (4 * P, 8 * P) if kind.startswith("class") else (4 * P, 6 * P)
    t = randomize(timm_vit(img_size=size, no_embed_class=kind.startswith("no")))
    save_file({k: v.contiguous() for k, v in t.state_dict().items()}, str(tmp_path / "t.safetensors"))
    ours = vitkit.create_model(pretrained=str(tmp_path / "t.safetensors"), num_heads=HEADS, img_size=size)
    assert tuple(ours.cfg.img_size) == size
    assert_same_logits(ours, t, torch.randn(2, 3, *size))
    into = vitkit.create_model("ViT-Ti/16", img_size=size, patch_size=P, embed_dim=D, depth=DEPTH,
                               num_heads=HEADS, mlp_dim=MLP, num_classes=5)  # fmt: skip
    load_pretrained(into, str(tmp_path / "t.safetensors"))
    assert_same_logits(into.eval(), t, torch.randn(2, 3, *size))
    # the command line takes the size too (--img-size took one integer: no command could read this file)
    from vitkit.cli import main

    out = tmp_path / "run"
    flags = ["--num-heads", str(HEADS), "--img-size", f"{size[0]}x{size[1]}"]
    assert main(["convert", str(tmp_path / "t.safetensors"), "--out", str(out), *flags]) == 0
    assert_same_logits(vitkit.create_model(pretrained=str(out)).eval(), t, torch.randn(2, 3, *size))


@pytest.mark.parametrize("name", ["resnetaa50", "resnetblur50"])
def test_an_anti_aliased_timm_resnet_in_memory_is_refused(name):
    """Was: loaded as a plain ResNet-50 (its blur and average pools have no weights): logits 10-75 off."""
    import timm

    with pytest.raises(
        ConversionError, match=r"anti-aliased downsampling \((\w|\.)+: (AvgPool2d|BlurPool2d)\)"
    ):
        vitkit.create_model(pretrained=timm.create_model(name, num_classes=5))


def test_odd_files_and_keys_are_named(tmp_path):
    """Was: a .npy file named .npz a TypeError traceback; a transformers folder missing one of q/k/v "layer 1:
    query/key/value weight incomplete (have [0, 2])" naming neither the folder nor the key."""
    np.save(tmp_path / "single.npy", np.zeros(3, np.float32))
    (tmp_path / "single.npy").rename(tmp_path / "single.npz")
    with pytest.raises(ConversionError, match=r"single\.npz is a single \.npy array"):
        read_checkpoint(tmp_path / "single.npz")
    hf = _hf_model("ViTForImageClassification")
    hf.save_pretrained(tmp_path / "hf")
    from safetensors.torch import load_file, save_file

    sd = load_file(str(tmp_path / "hf" / "model.safetensors"))
    del sd["vit.encoder.layer.1.attention.attention.key.weight"]
    save_file(sd, str(tmp_path / "hf" / "model.safetensors"))
    with pytest.raises(
        ConversionError, match=r"hf.*: missing encoder\.layer\.1\.attention\.attention\.key\.weight"
    ):
        read_checkpoint(tmp_path / "hf")


def test_files_that_leave_their_model_open_are_read_as_they_are_or_refused(tmp_path, caplog):
    """Was: an official npz without its position embedding loaded as big_vision's sin-cos; a transformers state
    dict of a 4x6 grid could not be read at the img_size given; timm's global_pool='' read pooled without a word."""
    arrays = flax_arrays(seed=6)
    del arrays["Transformer/posembed_input/pos_embedding"]
    with pytest.raises(ConversionError, match=r"missing array 'Transformer/posembed_input/pos_embedding'"):
        vitkit.create_model(pretrained=save_npz(tmp_path / "nopos.npz", arrays))
    transformers = pytest.importorskip("transformers")
    hf = transformers.ViTForImageClassification(
        transformers.ViTConfig(
            image_size=[32, 48], patch_size=8, hidden_size=64, num_hidden_layers=1, num_attention_heads=4,
            intermediate_size=96, num_labels=3,
        )
    ).eval()  # fmt: skip
    ours = vitkit.create_model(pretrained=hf.state_dict(), img_size=(32, 48), num_heads=4)
    assert ours.cfg.img_size == (32, 48)
    x = torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), hf(x).logits, rtol=1e-5, atol=1e-5)
    timm = pytest.importorskip("timm")
    t = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, embed_dim=64, depth=1, num_heads=2,
        num_classes=0, global_pool="",
    )  # fmt: skip
    with caplog.at_level("WARNING"):
        m = vitkit.create_model(pretrained=t)
    assert "global_pool='' (unpooled tokens)" in caplog.text
    m.reset_classifier(0, "")
    with torch.no_grad():
        torch.testing.assert_close(m(x[..., :32]), t.eval()(x[..., :32]), rtol=1e-5, atol=1e-5)


def test_default_weights_are_hub_ids_beside_a_timm_folder_and_model_folders_ask_for_convert(
    tmp_path, monkeypatch, capsys
):
    """Was: create_model(V, pretrained=True) failed in a folder holding timm/ or google/ (a timm checkout): the
    default id read as a path under it. `vitkit eval/predict` of a timm or transformers model folder (vitkit's
    own export --format timm|hf) said "config.json: unknown keys ['architecture', ...]". A name vitkit gives a
    model (ViT-32x2/8) could not be passed back with its weights (no heads for width 32)."""
    import vitkit
    from vitkit.cli import main
    from vitkit.convert.hub import default_pretrained, is_hub_id

    (tmp_path / "timm").mkdir()
    monkeypatch.chdir(tmp_path)
    source = default_pretrained("ViT-Ti/16")
    assert source.startswith("hf-hub:timm/") and is_hub_id(source)
    folder = tmp_path / "peer"
    folder.mkdir()
    (folder / "config.json").write_text('{"architecture": "vit_tiny_patch16_224", "num_classes": 3}')
    (folder / "model.safetensors").write_bytes(b"")
    assert main(["eval", str(folder), "--dataset", "synthetic"]) == 2
    assert (
        "its config.json is not a vitkit run's (a timm or Hugging Face model folder?)"
        in capsys.readouterr().err
    )
    assert (
        main(["eval", str(folder / "model.safetensors"), "--dataset", "synthetic"]) == 2
    )  # its weights file
    assert "its folder's config.json is not a vitkit run's (a timm or Hugging Face" in capsys.readouterr().err
    m = vitkit.create_model("ViT-32x2/8", img_size=16, num_heads=2, num_classes=3)
    assert vitkit.create_model("ViT-32x2/8", pretrained=m).cfg.num_heads == 2
    with pytest.raises(ValueError, match="width 32 is neither in the paper's table nor a multiple of 64"):
        vitkit.create_model("ViT-32x2/8")


@pytest.mark.parametrize(
    ("arch", "size"), [("vit_so400m_patch14_siglip_gap_224", 28), ("vit_base_patch32_siglip_gap_256", 64)]
)
def test_a_timm_folder_takes_heads_and_activation_from_its_architecture(arch, size, tmp_path):
    """Was: timm's save_for_hf/push_to_hub write model_args only as given to create_model, so SO400M's 16 heads
    were read from its width as 18 and SigLIP's tanh GELU as the erf one, without a word (logits off by 0.33 and
    8e-5). timm builds the named architecture on the meta device to say them."""
    timm = pytest.importorskip("timm")
    from timm.models._hub import save_for_hf

    t = timm.create_model(arch, pretrained=False, depth=1, img_size=size, num_classes=0).eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in t.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    t.pretrained_cfg = dict(t.pretrained_cfg, input_size=(3, size, size))
    save_for_hf(t, str(tmp_path / "peer"))
    assert "num_heads" not in (tmp_path / "peer" / "config.json").read_text()
    m = vitkit.create_model(pretrained=str(tmp_path / "peer"))
    assert m.cfg.num_heads == t.blocks[0].attn.num_heads
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        torch.testing.assert_close(m(x), t(x), rtol=1e-5, atol=1e-5)


def test_a_timm_folder_whose_architecture_timm_cannot_build_is_read_with_a_warning(tmp_path, caplog):
    """... and where timm does not know the architecture (or is missing), what the folder leaves out is
    vitkit's default, said in a warning."""
    timm = pytest.importorskip("timm")
    from timm.models._hub import save_for_hf

    t = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=32, depth=1, num_classes=3
    ).eval()
    save_for_hf(t, str(tmp_path / "peer"), model_args={"num_heads": 3})
    config = (tmp_path / "peer" / "config.json").read_text()
    (tmp_path / "peer" / "config.json").write_text(
        config.replace("vit_tiny_patch16_224", "vit_from_the_future")
    )
    with caplog.at_level("WARNING"):
        m = vitkit.create_model(pretrained=str(tmp_path / "peer"))
    assert "timm could not build it" in caplog.text and "act_layer/norm_eps" in caplog.text
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(m(x), t(x), rtol=1e-5, atol=1e-5)


def test_a_grey_model_from_a_folder_with_rgb_statistics_converts_and_exports_usable_files(tmp_path):
    """Was: `convert` and `export --format safetensors` wrote the source's three means and stds for a
    one-channel model (transformers' processor lists RGB's), and `predict` refused both files."""
    transformers = pytest.importorskip("transformers")
    from PIL import Image

    from vitkit.cli import main

    hf = _hf_model("ViTForImageClassification", num_channels=1)
    hf.save_pretrained(tmp_path / "hf")
    transformers.ViTImageProcessor(
        size={"height": 2 * P, "width": 2 * P}, image_mean=[0.2, 0.3, 0.4], image_std=[0.5, 0.5, 0.5]
    ).save_pretrained(tmp_path / "hf")
    Image.fromarray(np.full((2 * P, 2 * P), 90, np.uint8)).save(tmp_path / "g.png")
    assert main(["convert", str(tmp_path / "hf"), "--out", str(tmp_path / "run")]) == 0
    data = json.loads((tmp_path / "run" / "data.json").read_text())
    assert data["mean"] == pytest.approx([0.3]) and data["std"] == [0.5]
    out = tmp_path / "grey.safetensors"
    assert main(["export", str(tmp_path / "hf"), "--format", "safetensors", "--out", str(out)]) == 0
    for source in (tmp_path / "run", out):
        assert main(["predict", str(source), str(tmp_path / "g.png")]) == 0, source


def test_a_damaged_compressed_npz_is_a_conversion_error_naming_the_array(tmp_path):
    """Was: a flipped byte in a compressed member of an .npz (np.savez_compressed) ended in a raw zlib.error
    traceback naming neither the file nor the array."""
    import zlib

    from vitkit.convert.files import read_npz

    path = tmp_path / "c.npz"
    np.savez_compressed(path, **{f"a{i}": np.arange(600, dtype=np.float32) * i for i in range(3)})
    good, seen_zlib = path.read_bytes(), 0
    for offset in range(60, len(good) - 200, 7):
        bad = bytearray(good)
        bad[offset] ^= 0x5A
        path.write_bytes(bytes(bad))
        try:
            with np.load(path) as archive:
                [archive[k] for k in archive.files]
        except zlib.error:
            seen_zlib += 1
        except Exception:
            pass
        try:
            read_npz(str(path))
        except ConversionError as e:
            assert str(path) in str(e)
            assert "(array 'a" in str(e) or "zlib" not in str(e)
    assert seen_zlib, "no offset gave numpy's zlib.error: the test no longer covers it"


def test_a_distilled_deit_and_an_npz_with_a_gap_in_its_blocks_are_refused_by_name(tmp_path):
    """Was: DeiT's distillation token read as "5 patch position embeddings do not form a square grid"; an .npz
    without encoderblock_0 but with encoderblock_1 as "no transformer blocks found"."""
    pytest.importorskip("timm")
    state = timm_vit().state_dict()
    state["dist_token"] = torch.zeros(1, 1, D)
    with pytest.raises(ConversionError, match="distillation token"):
        vitkit.create_model(pretrained=state, num_heads=HEADS)
    arrays = {k: v for k, v in flax_arrays().items() if not k.startswith("Transformer/encoderblock_0/")}
    arrays |= {
        k.replace("encoderblock_0", "encoderblock_1"): v for k, v in flax_arrays().items() if "block_0" in k
    }
    np.savez(tmp_path / "gap.npz", **arrays)
    with pytest.raises(ConversionError, match="encoderblock_0 is missing, but encoderblock_1 is there"):
        vitkit.create_model(pretrained=str(tmp_path / "gap.npz"))


def test_a_timm_folders_architecture_is_built_from_nowhere_else(tmp_path, monkeypatch, caplog):
    """The architecture is built with pretrained=False from the installed timm only: a hub or local-dir name is
    not resolved (timm would fetch its config), model_args' checkpoint_path and the like are dropped; a timm
    whose constructors fail on the meta device builds one block on the CPU instead."""
    timm = pytest.importorskip("timm")
    from timm.models import _hub
    from timm.models._hub import save_for_hf

    def no_fetch(*args, **kw):
        raise AssertionError(f"fetched {args}")

    from timm.models import _factory

    for module in (_hub, _factory):
        monkeypatch.setattr(module, "load_model_config_from_hf", no_fetch)
    t = timm.create_model("vit_so400m_patch14_siglip_gap_224", pretrained=False, depth=1, img_size=28)
    save_for_hf(t.eval(), str(tmp_path / "peer"))
    config = json.loads((tmp_path / "peer" / "config.json").read_text())
    for arch, extra, says in (
        ("hf-hub:someone/some-repo", {}, "it names a source, not an architecture"),
        ("local-dir:" + str(tmp_path), {}, "it names a source, not an architecture"),
        (config["architecture"], {"checkpoint_path": str(tmp_path / "none.pth")}, None),
    ):
        bent = config | {"architecture": arch, "model_args": config["model_args"] | extra}
        (tmp_path / "peer" / "config.json").write_text(json.dumps(bent))
        caplog.clear()
        with caplog.at_level("WARNING"):
            m = vitkit.create_model(pretrained=str(tmp_path / "peer"))
        assert (says in caplog.text) if says else "could not build" not in caplog.text, caplog.text
        assert m.cfg.num_heads == (18 if says else 16)  # the width's guess, else the architecture's
    real = timm.create_model

    def old_timm(*args, **kw):  # older timm: drop-path rates read with .item(), which the meta device refuses
        if torch.empty(0).device.type == "meta":
            raise RuntimeError("Tensor.item() cannot be called on meta tensors")
        return real(*args, **kw)

    monkeypatch.setattr(timm, "create_model", old_timm)
    caplog.clear()
    with caplog.at_level("WARNING"):
        m = vitkit.create_model(pretrained=str(tmp_path / "peer"))
    assert m.cfg.num_heads == 16 and "could not build" not in caplog.text
