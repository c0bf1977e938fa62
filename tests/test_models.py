"""Every registered variant built tiny and checked; parameter counts; timm parity; bad input."""

from __future__ import annotations

import functools

import pytest
import torch

import vitkit
from vitkit.models import count_params, create_model, list_models, model_config
from vitkit.models.layers import patchify_project
from vitkit.models.registry import REGISTERED
from vitkit.models.resnet import Bottleneck

PAPER_COUNTS = {
    "ViT-Ti/16": 5_717_416,
    "ViT-S/16": 22_050_664,
    "ViT-B/16": 86_567_656,
    "ViT-L/16": 304_326_632,
    "ViT-H/14": 632_045_800,
    "ViT-B/32": 88_224_232,
}


@pytest.mark.parametrize("name,expected", PAPER_COUNTS.items())
def test_param_counts_match_paper(name, expected):
    model = create_model(name, device="meta")
    assert sum(p.numel() for p in model.parameters()) == expected
    assert count_params(model.cfg) == expected


def tiny(name: str, **kw) -> vitkit.VisionTransformer:
    """The variant's patch size and heads, at a tiny width, depth and image size."""
    cfg = model_config(name)
    heads = cfg.num_heads
    opts = dict(
        depth=2,
        embed_dim=heads * 8,
        mlp_dim=heads * 16,
        img_size=2 * cfg.token_stride,
        num_classes=5,
        in_chans=3,
    )
    opts.update(kw)
    return create_model(name, **opts)


OPTIONS = [
    {},
    dict(pool="gap"),
    dict(posemb="sincos2d"),
    dict(posemb="learn2d"),
    dict(posemb="none", pool="gap"),
    dict(representation_size=12),
    dict(qkv_bias=False),
    dict(drop_rate=0.1, attn_drop_rate=0.1, drop_path_rate=0.2),
    dict(posemb="sincos2d", attn_init="mimetic"),
]


# every variant with every option; the big hybrids' ResNets (seconds each) with the default options only
# (the CNN baselines have their own tests: test_bit.py, test_attention_baselines.py)
MATRIX = [
    (n, o)
    for n in list_models()
    if n.startswith(("ViT-", "R50+", "R26+", "R+"))
    for o in OPTIONS
    if not n.startswith(("R50+", "R26+")) or not o
]


@pytest.mark.parametrize(
    "name,opts",
    MATRIX,
    ids=[f"{n}-" + (",".join(f"{k}={v}" for k, v in o.items()) or "default") for n, o in MATRIX],
)
def test_every_variant_tiny(name, opts):
    model = tiny(name, **opts)
    cfg = model.cfg
    for mod in model.modules():  # hybrids: the zero-initialised residual branches would pass no gradient on
        if isinstance(mod, Bottleneck):
            torch.nn.init.ones_(mod.norm3.weight)
    x = torch.randn(3, 3, *cfg.img_size)
    assert sum(p.numel() for p in model.parameters()) == count_params(cfg)

    model.train()
    out = model(x)
    assert out.shape == (3, 5)
    assert torch.isfinite(out).all()
    out.square().sum().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{pname} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{pname} has a non-finite gradient"
        assert p.grad.abs().sum() > 0, f"{pname} has an all-zero gradient"

    model.eval()
    with torch.no_grad():
        out = model(x)
        feats = model.forward_features(x)
        assert feats.shape == (3, cfg.num_tokens, cfg.embed_dim)
        torch.testing.assert_close(model.forward_head(feats), out, rtol=0, atol=1e-5)
        pre = model.forward_head(feats, pre_logits=True)
        assert pre.shape == (3, cfg.representation_size or cfg.embed_dim)
        logits, attns = model(x, return_attention=True)
        assert len(attns) == cfg.depth
        for a in attns:
            assert a.shape == (3, cfg.num_heads, cfg.num_tokens, cfg.num_tokens)
            torch.testing.assert_close(a.sum(-1), torch.ones(a.shape[:-1]), rtol=0, atol=1e-5)
        torch.testing.assert_close(logits, out, rtol=0, atol=1e-5)  # explicit == SDPA


def test_registry_lists_registered():
    assert list_models() == list(REGISTERED)
    assert "ViT-B/16" in list_models()


def timm_twin(model: vitkit.VisionTransformer):
    """timm's VisionTransformer of the same config, random weights."""
    from timm.models.vision_transformer import VisionTransformer as TimmViT

    c = model.cfg
    gap = c.pool == "gap"
    t = TimmViT(
        img_size=c.img_size,
        patch_size=c.patch_size,
        in_chans=c.in_chans,
        num_classes=c.num_classes,
        embed_dim=c.embed_dim,
        depth=c.depth,
        num_heads=c.num_heads,
        mlp_ratio=c.mlp_dim / c.embed_dim,
        qkv_bias=c.qkv_bias,
        class_token=not gap,
        global_pool="avg" if gap else "token",
        fc_norm=False if gap else None,
        norm_layer=functools.partial(torch.nn.LayerNorm, eps=c.norm_eps),
    )
    with torch.no_grad():
        for p in t.parameters():
            p.normal_(0, 0.2)
    return t.eval()


@pytest.mark.parametrize(
    "name,kw",
    [
        ("ViT-Ti/16", {}),
        ("ViT-S/32", {}),
        ("ViT-Ti/16", dict(img_size=(160, 96))),
        ("ViT-Ti/16", dict(img_size=64, pool="gap")),
        ("ViT-S/16", dict(img_size=64, qkv_bias=False, in_chans=1, num_classes=7)),
    ],
)
def test_timm_parity(name, kw):
    model = create_model(name, **kw).eval()
    t = timm_twin(model)
    model.load_state_dict(t.state_dict(), strict=True)
    x = torch.randn(2, model.cfg.in_chans, *model.cfg.img_size)
    with torch.no_grad():
        ours, theirs = model(x), t(x)
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)
        torch.testing.assert_close(model.forward_features(x), t.forward_features(x), rtol=0, atol=1e-5)


@pytest.mark.parametrize("posemb", ["learn", "relative"])
def test_forward_macs_count_the_vits_every_product(posemb):
    """Was: relative attention's logits (each query against every offset's key) were left out (13% here)."""
    from torch.utils.flop_counter import FlopCounterMode

    from vitkit.models import forward_macs

    kw = dict(img_size=32, num_classes=5, pool="gap", posemb=posemb, depth=1, embed_dim=64, num_heads=2)
    model = create_model("ViT-Ti/8", mlp_dim=128, **kw).eval()
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        model(torch.randn(1, 3, 32, 32), return_attention=True)  # the explicit path: every product counted
    assert fc.get_total_flops() == 2 * forward_macs(model)


def test_the_names_vitkit_gives_parse_back_and_other_spellings_find_the_defaults():
    """Was: 'ViT-192x2/16' (a depth-2 ViT-Ti's name) and 'R3-4-9+ViT-B/32' could not be parsed; a backbone given to
    a plain name kept it ('ViT-B/1' for an R50 hybrid); pretrained=True took only the table's spelling."""
    from vitkit.models import model_config
    from vitkit.models.registry import DEFAULT_PRETRAINED, lookup

    for name, kw in (
        ("ViT-Ti/16", {"depth": 2}),
        ("R50+ViT-B/16", {"depth": 2}),
        ("ViT-S/4", {"mlp_dim": 96}),
    ):
        cfg = model_config(name, **kw)
        assert "x" in cfg.name and model_config(cfg.name, mlp_dim=cfg.mlp_dim) == cfg, cfg.name
    hybrid = model_config("ViT-B/2", backbone=(3, 4, 9))
    assert hybrid.name == "R3-4-9+ViT-B/32" and model_config(hybrid.name) == hybrid
    assert model_config("ViT-B/1", backbone=(3, 4, 9)).name == "R50+ViT-B/16"
    assert model_config("R3-4-9+ViT-B/16") == model_config("R50+ViT-B/16")  # one model, one name
    with pytest.raises(ValueError, match=r"'ViT-100x2/16'.*pass num_heads="):
        model_config("ViT-100x2/16")
    assert model_config("ViT-100x2/16", num_heads=4).mlp_dim == 400
    for spelling in ("R50x1+ViT-B/16", "r50 + vit-b/16"):
        assert lookup(DEFAULT_PRETRAINED, spelling) == DEFAULT_PRETRAINED["R50+ViT-B/16"]
    assert lookup(DEFAULT_PRETRAINED, "ViT-B/016") == DEFAULT_PRETRAINED["ViT-B/16"]


def test_head_hidden_size_is_the_heads_input_width():
    """timm's head_hidden_size (the pooled features' width) was missing; with pre-logits it is theirs."""
    rep = create_model("ViT-Ti/8", img_size=16, num_classes=0, representation_size=24, depth=1)
    assert rep.num_features == 192 and rep.head_hidden_size == 24 == rep(torch.randn(1, 3, 16, 16)).shape[-1]
    rep.reset_classifier(3)
    assert rep.head_hidden_size == 192
    assert create_model("ResNet-26", img_size=32, num_classes=3).head_hidden_size == 2048


@pytest.mark.parametrize("bad", ["ViT-X/16", "ViT-B", "B/16", "ViT-B/0", "", "resnet50", "ViT-B/16x"])
def test_bad_names(bad):
    with pytest.raises(ValueError, match=r"model|patch"):
        create_model(bad)


def test_impossible_sizes_say_what_is_wrong():
    with pytest.raises(ValueError, match="225x225 is not divisible by the patch size 16"):
        create_model("ViT-B/16", img_size=225)
    with pytest.raises(ValueError, match="width 100 is not divisible by the number of heads 12"):
        create_model("ViT-B/16", embed_dim=100)
    with pytest.raises(ValueError, match="pool='cls'"):
        create_model("ViT-Ti/16", pool="cls")
    with pytest.raises(ValueError, match="unknown model option"):
        create_model("ViT-Ti/16", widht=3)


def test_layernorm_eps_and_head_zero_init():
    m = tiny("ViT-Ti/16", norm_eps=1e-5, head_init="zero")
    assert all(n.eps == 1e-5 for n in m.modules() if isinstance(n, torch.nn.LayerNorm))
    assert m.head.weight.abs().sum() == 0 and m.head.bias.abs().sum() == 0
    assert create_model("ViT-Ti/16", img_size=32).norm.eps == 1e-6  # the official code's


def test_wrong_input_shape_is_reported():
    m = tiny("ViT-Ti/16")
    with pytest.raises(ValueError, match="expected images of shape"):
        m(torch.randn(1, 3, 48, 32))


@pytest.mark.parametrize("c,p,hw", [(3, 16, (48, 32)), (1, 4, (30, 29)), (64, 1, (7, 5))])
def test_patchify_project_equals_the_strided_conv(c, p, hw):
    """The CUDA patch embedding (one matrix product) computes the CPU's strided conv, forward and gradients."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(c, 24, kernel_size=p, stride=p)
    x = torch.randn(2, c, *hw, requires_grad=True)
    want = conv(x).flatten(2).transpose(1, 2)  # (B, N, D)
    got = patchify_project(x, conv)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    g = torch.randn_like(want)
    gw, gb, gx = torch.autograd.grad((want * g).sum(), (conv.weight, conv.bias, x))
    hw_, hb, hx = torch.autograd.grad((got * g).sum(), (conv.weight, conv.bias, x))
    torch.testing.assert_close(hw_, gw, rtol=0, atol=1e-4)
    torch.testing.assert_close(hb, gb, rtol=0, atol=1e-5)
    torch.testing.assert_close(hx, gx, rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", ["ViT-B/16", "R26+ViT-S/32"])
def test_models_give_the_same_logits_and_gradients_on_the_cuda_patch_path(name, monkeypatch):
    """The model with its patch embedding as one matrix product (the path CUDA takes) matches the conv path."""
    import vitkit.models.layers as layers

    torch.manual_seed(0)
    m = tiny(name).train()
    x = torch.randn(2, 3, *m.cfg.img_size)
    conv_out = m(x)
    conv_grads = torch.autograd.grad(conv_out.square().sum(), list(m.parameters()))
    monkeypatch.setattr(layers, "use_matmul_patch_embed", lambda x: True)
    mm_out = m(x)
    mm_grads = torch.autograd.grad(mm_out.square().sum(), list(m.parameters()))
    torch.testing.assert_close(mm_out, conv_out, rtol=0, atol=1e-5)
    for (n, _), a, b in zip(m.named_parameters(), mm_grads, conv_grads):
        scale = float(b.abs().max())  # float32 sums in another order: within 1e-4 of the tensor's scale
        torch.testing.assert_close(a, b, rtol=0, atol=1e-4 * scale + 1e-7, msg=lambda m, n=n: f"{n}: {m}")


def test_set_img_size_resamples_and_runs():
    """The patch rows zoomed as the official code's scipy.ndimage.zoom(order=1), the class-token row kept; the 2D
    kinds laid out on the new grid (each axis of learn2d resampled, sincos2d in the trained grid's units)."""
    import scipy.ndimage

    m = tiny("ViT-Ti/16").eval()
    before = m.pos_embed.detach().clone()  # (1, 1 + 4, D): a 2x2 grid at 32 px
    m.set_img_size(64)
    assert m.pos_embed.shape == (1, 1 + 16, m.embed_dim)
    torch.testing.assert_close(m.pos_embed[0, 0], before[0, 0], rtol=0, atol=0)
    grid = before[0, 1:].reshape(2, 2, -1).double().numpy()
    want = scipy.ndimage.zoom(grid, (2, 2, 1), order=1).reshape(16, -1)
    torch.testing.assert_close(m.pos_embed[0, 1:].double(), torch.from_numpy(want), rtol=0, atol=1e-6)
    assert m(torch.randn(2, 3, 64, 64)).shape == (2, 5)
    m = tiny("ViT-Ti/16", posemb="learn2d")
    row, col = m.pos_embed_row.detach().clone(), m.pos_embed_col.detach().clone()  # (1, 2, D/2)
    m.set_img_size((48, 64))
    for new, old, n in ((m.pos_embed_row, row, 3), (m.pos_embed_col, col, 4)):
        want = scipy.ndimage.zoom(old[0].double().numpy(), (n / 2, 1), order=1)
        torch.testing.assert_close(new[0].double(), torch.from_numpy(want), rtol=0, atol=1e-6)
    assert m(torch.randn(1, 3, 48, 64)).shape == (1, 5)
    m = tiny("ViT-Ti/16", posemb="sincos2d")
    m.set_img_size((48, 64))
    torch.testing.assert_close(m.pos_embed[0], vitkit.models.sincos2d((3, 4), m.embed_dim, ref_grid=(2, 2)))
    assert m(torch.randn(1, 3, 48, 64)).shape == (1, 5)


@pytest.mark.parametrize("posemb", ["learn", "learn2d", "sincos2d"])
def test_set_img_size_refuses_a_mode_before_changing_anything(posemb):
    """Was: the patch embedding moved to the new size before the mode was checked (a half-moved model that
    refused its own images), and learn2d took any mode without a word."""
    m = tiny("ViT-Ti/16", posemb=posemb).eval()
    x = torch.randn(2, 3, 32, 32)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    logits = m(x)
    with pytest.raises(ValueError, match="mode='nearest': expected 'bilinear' or 'bicubic'"):
        m.set_img_size(64, mode="nearest")
    assert (
        m.cfg.img_size == (32, 32)
        and m.patch_embed.img_size == (32, 32)
        and m.patch_embed.grid_size == (2, 2)
    )
    after = m.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], v) for k, v in before.items())
    torch.testing.assert_close(m(x), logits, rtol=0, atol=0)


def test_learn2d_concatenates_row_and_column():
    m = tiny("ViT-Ti/16", img_size=48, posemb="learn2d")
    pe = m._patch_posemb()[0].reshape(3, 3, -1)  # (gh, gw, D)
    half = m.embed_dim // 2
    torch.testing.assert_close(pe[1, 2, :half], m.pos_embed_col[0, 2])
    torch.testing.assert_close(pe[1, 2, half:], m.pos_embed_row[0, 1])


def test_no_weight_decay_names_exist():
    m = tiny("ViT-Ti/16")
    names = dict(m.named_parameters())
    assert "pos_embed" in names and "cls_token" in names
    assert {"pos_embed", "cls_token"} <= m.no_weight_decay()


def test_on_attention_sees_each_layers_maps_and_changes_nothing():
    """forward_features(on_attention=...) hands each layer's attention over as it is computed: the maps
    return_attention gives, and the features a plain forward gives."""
    model = create_model(
        "ViT-Ti/4", img_size=16, in_chans=3, num_classes=3, depth=3, embed_dim=32, num_heads=2
    )
    model.eval()
    x = torch.randn(2, 3, 16, 16)
    seen = []
    with torch.no_grad():
        feats = model.forward_features(x, on_attention=lambda i, a: seen.append((i, a)))
        plain, attns = model.forward_features(x, return_attention=True)
    assert [i for i, _ in seen] == [0, 1, 2] and all(torch.equal(a, b) for (_, a), b in zip(seen, attns))
    torch.testing.assert_close(feats, plain, rtol=0, atol=0)
    torch.testing.assert_close(feats, model.forward_features(x), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("posemb", ["learn", "learn2d", "sincos2d"])
def test_the_residual_stream_is_fp32_under_bf16_autocast_with_any_pooling(posemb):
    """Was: a model without a class token (GAP) cast its fp32 position embedding down to the bf16 patch embedding,
    so every block's residual sum ran in bf16 under autocast (3x the gradient error; timm's promotes to fp32, as a
    class token's concatenation did); a bf16 model stays bf16."""
    x = torch.randn(2, 3, 16, 16)
    for pool in ("gap", "token"):
        m = create_model(
            "ViT-Ti/4", img_size=16, in_chans=3, depth=1, num_classes=3, pool=pool, posemb=posemb
        )
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert m.embed(x).dtype == torch.float32, pool
        assert m.to(torch.bfloat16).embed(x.bfloat16()).dtype == torch.bfloat16
    # a bf16 model at another size: its sincos table (made in fp32 for the new grid) follows the model's dtype
    dyn = create_model(
        "ViT-Ti/4", img_size=16, in_chans=3, depth=1, pool="gap", posemb=posemb, dynamic_img_size=True
    )
    assert dyn.to(torch.bfloat16)(torch.randn(1, 3, 24, 24).bfloat16()).dtype == torch.bfloat16
