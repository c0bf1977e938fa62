"""Initialisation: mimetic attention (the weight products it promises, the local attention it starts from) and
the official code's initialisation."""

import pytest
import torch

from vitkit import create_model
from vitkit.inspect.attention import attention_maps, mean_attention_distance, patch_distances
from vitkit.models.init import mimetic_init_

KW = dict(
    img_size=28, patch_size=4, in_chans=1, num_classes=10, embed_dim=64, depth=2, num_heads=2, mlp_dim=128
)


def _low_rank(m: torch.Tensor, rank: int) -> torch.Tensor:
    u, s, vh = torch.linalg.svd(m)
    return (u[:, :rank] * s[:rank]) @ vh[:rank]


def test_products_are_the_rank_limited_targets():
    d, heads = 32, 4
    hd = d // heads
    qkv, proj = torch.nn.Linear(d, 3 * d), torch.nn.Linear(d, d)
    gen = torch.Generator().manual_seed(3)
    mimetic_init_(qkv, proj, heads, qk=(0.5, 1.0), vo=(0.3, 0.6), generator=gen)
    replay = torch.Generator().manual_seed(3)
    eye = torch.eye(d, dtype=torch.float64)
    w = qkv.weight.double()
    for h in range(heads):
        target = 0.5 * torch.randn(d, d, generator=replay, dtype=torch.float64) / d**0.5 + 1.0 * eye
        got = w[h * hd : (h + 1) * hd].T @ w[d + h * hd : d + (h + 1) * hd]  # W_q^T W_k of head h
        assert torch.allclose(got, _low_rank(target, hd), atol=1e-5)
    target = 0.3 * torch.randn(d, d, generator=replay, dtype=torch.float64) / d**0.5 - 0.6 * eye
    vo = w[2 * d :].T @ proj.weight.double().T  # W_v^T W_proj^T: the full-rank value/output map
    assert torch.allclose(vo, target, atol=1e-5)


def test_with_sincos_posemb_attention_starts_local_and_default_starts_global():
    torch.manual_seed(0)
    x = torch.randn(4, 1, 28, 28)
    uniform = float(patch_distances(7, 4).mean())
    local = create_model("ViT-Ti/16", posemb="sincos2d", attn_init="mimetic", **KW)
    plain = create_model("ViT-Ti/16", posemb="sincos2d", **KW)
    d_local = mean_attention_distance(attention_maps(local, x)[0], 7, 4)  # (heads,)
    d_plain = mean_attention_distance(attention_maps(plain, x)[0], 7, 4)
    assert (d_local < 0.6 * uniform).all(), d_local
    assert ((d_plain - uniform).abs() < 0.1 * uniform).all(), d_plain


def test_mimetic_model_trains_and_bad_value_is_named():
    torch.manual_seed(0)
    m = create_model("ViT-Ti/16", attn_init="mimetic", **KW)
    loss = m(torch.randn(2, 1, 28, 28)).logsumexp(-1).mean()
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters())
    with pytest.raises(ValueError, match=r"model\.attn_init"):
        create_model("ViT-Ti/16", attn_init="identity", **KW)


def test_mimetic_init_is_skipped_when_weights_follow():
    from vitkit.models import build_model

    cfg = create_model("ViT-Ti/16", attn_init="mimetic", **KW).cfg
    d, hd = cfg.embed_dim, cfg.embed_dim // cfg.num_heads
    for follow, expect_identity in ((False, True), (True, False)):
        w = build_model(cfg, weights_follow=follow).blocks[0].attn.qkv.weight
        diag = (w[:hd].T @ w[d : d + hd]).diagonal().mean()  # W_q^T W_k of head 0
        assert bool(diag > 0.2) == expect_identity, (follow, float(diag))
    with pytest.raises(ValueError, match="divisible"):
        mimetic_init_(torch.nn.Linear(6, 18), torch.nn.Linear(6, 6), num_heads=4)


def test_official_weight_init_follows_the_official_code():
    torch.manual_seed(0)
    d = 256
    kw = dict(KW, embed_dim=d, num_heads=4, mlp_dim=512, representation_size=d)
    official = create_model("ViT-Ti/16", weight_init="official", **kw)
    default = create_model("ViT-Ti/16", **kw)
    official.requires_grad_(False), default.requires_grad_(False)
    for q_k_v in (official.blocks[0].attn.qkv.weight, official.blocks[1].attn.qkv.weight):
        for part in q_k_v.chunk(3):  # each xavier over (D, D): uniform in +-sqrt(3 / D), std 1 / sqrt(D)
            bound = (3 / d) ** 0.5
            assert 0.97 * bound < float(part.abs().max()) <= bound
            assert abs(float(part.std()) * d**0.5 - 1) < 0.02
    fused = default.blocks[0].attn.qkv.weight  # timm's: xavier over (3D, D), std 1 / sqrt(2D)
    assert (
        float(fused.abs().max()) <= (1.5 / d) ** 0.5 and abs(float(fused.std()) * (2 * d) ** 0.5 - 1) < 0.02
    )
    pe = official.pos_embed  # normal(0.02), not truncated: 4.6% of its values lie beyond 2 std
    assert 0.03 < float((pe.abs() > 0.04).float().mean()) < 0.06 and abs(float(pe.std()) - 0.02) < 0.001
    assert float(default.pos_embed.abs().max()) <= 0.04
    fc = official.pre_logits.fc.weight  # lecun normal: std 1 / sqrt(fan_in), truncated at 2 std
    assert abs(float(fc.std()) * d**0.5 - 1) < 0.03 and float(fc.abs().max()) <= 2 / 0.8796 / d**0.5
    assert not official.head.weight.any() and not official.head.bias.any()  # the official head is zero
    assert default.head.weight.any()
    with pytest.raises(ValueError, match=r"model\.weight_init"):
        create_model("ViT-Ti/16", weight_init="jax", **KW)
    with pytest.raises(ValueError, match="is a ViT option"):
        create_model("ResNet-26", weight_init="official")
