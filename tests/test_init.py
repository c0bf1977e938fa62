"""Mimetic initialisation: the weight products it promises and the local attention it starts from."""

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
