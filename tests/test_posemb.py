"""Position embeddings: resampling equals the official code's scipy zoom; sincos2d."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage
import torch

from vitkit.models import resample_posemb, sincos2d


def scipy_resample(posemb: torch.Tensor, old, new, prefix: int = 1) -> torch.Tensor:
    """The official vision_transformer checkpoint code's resize: scipy.ndimage.zoom(order=1)."""
    tok, grid = posemb[:, :prefix], posemb[0, prefix:].numpy()
    grid = grid.reshape(old[0], old[1], -1)
    zoom = (new[0] / old[0], new[1] / old[1], 1)
    grid = scipy.ndimage.zoom(grid, zoom, order=1).reshape(1, new[0] * new[1], -1)
    return torch.cat([tok, torch.from_numpy(np.ascontiguousarray(grid))], dim=1)


@pytest.mark.parametrize(
    "old,new",
    [((14, 14), (24, 24)), ((7, 7), (12, 12)), ((14, 14), (10, 10)), ((14, 14), (24, 16)), ((6, 9), (10, 4))],
)
def test_resample_equals_scipy_zoom(old, new):
    pe = torch.randn(1, 1 + old[0] * old[1], 32, dtype=torch.float64).float()
    ours = resample_posemb(pe, new, num_prefix_tokens=1, old_grid=old if old[0] != old[1] else None)
    ref = scipy_resample(pe.double(), old, new).float()
    assert ours.shape == (1, 1 + new[0] * new[1], 32)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5)


def test_resample_b16_224_to_384_like_official():
    pe = torch.randn(1, 197, 768)
    ours = resample_posemb(pe, 24)
    torch.testing.assert_close(
        ours, scipy_resample(pe.double(), (14, 14), (24, 24)).float(), rtol=0, atol=1e-5
    )


def test_resample_identity_and_prefix_kept():
    pe = torch.randn(1, 1 + 49, 16)
    assert resample_posemb(pe, 7) is pe
    out = resample_posemb(pe, 9)
    torch.testing.assert_close(out[:, :1], pe[:, :1], rtol=0, atol=0)
    gap = torch.randn(1, 49, 16)
    assert resample_posemb(gap, (9, 9), num_prefix_tokens=0).shape == (1, 81, 16)


def test_resample_bicubic_matches_timm():
    from timm.layers import resample_abs_pos_embed

    pe = torch.randn(1, 1 + 196, 24)
    ours = resample_posemb(pe, (24, 20), mode="bicubic")
    theirs = resample_abs_pos_embed(pe, new_size=(24, 20), old_size=(14, 14), num_prefix_tokens=1)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


def test_resample_bad_input():
    with pytest.raises(ValueError, match="not a square"):
        resample_posemb(torch.randn(1, 1 + 10, 8), 4)
    with pytest.raises(ValueError, match="shape"):
        resample_posemb(torch.randn(10, 8), 4)
    with pytest.raises(ValueError, match="mode"):
        resample_posemb(torch.randn(1, 5, 8), 4, mode="nearest")


def _big_vision_sincos(h: int, w: int, width: int, temperature: float = 10_000.0) -> np.ndarray:
    """big_vision's posemb_sincos_2d written out in numpy: integer (y, x) of a row-major grid, D/4
    frequencies temperature^(-i/(D/4-1)), [sin x, cos x, sin y, cos y]."""
    y, x = np.mgrid[:h, :w]
    omega = 1.0 / temperature ** (np.arange(width // 4) / (width // 4 - 1))
    y, x = np.outer(y.flatten(), omega), np.outer(x.flatten(), omega)
    return np.concatenate([np.sin(x), np.cos(x), np.sin(y), np.cos(y)], axis=1)


@pytest.mark.parametrize(("grid", "width"), [((7, 7), 32), ((3, 5), 8), ((14, 10), 192)])
def test_sincos2d_equals_big_visions(grid, width):
    want = torch.from_numpy(_big_vision_sincos(*grid, width)).float()
    torch.testing.assert_close(sincos2d(grid, width), want, rtol=0, atol=1e-6)


def test_sincos2d_similarity_peaks_at_self_and_falls_with_distance():
    pe = sincos2d((8, 8), 64)
    assert pe.shape == (64, 64)
    pe = torch.nn.functional.normalize(pe, dim=-1)
    sim = (pe @ pe.T).reshape(8, 8, 8, 8)
    centre = sim[3, 4]
    assert centre.argmax() == 3 * 8 + 4
    assert centre[3, 5] > centre[3, 7] and centre[4, 4] > centre[7, 4]


def test_sincos2d_on_a_reference_grid_keeps_each_patch_at_its_place_in_the_image():
    coarse = sincos2d((7, 5), 32)  # (35, 32)
    fine = sincos2d((21, 15), 32, ref_grid=(7, 5)).reshape(21, 15, 32)  # 3x the resolution
    # patch (3a+1, 3b+1) of the fine grid has its centre where patch (a, b) of the coarse grid has its own
    torch.testing.assert_close(fine[1::3, 1::3].reshape(35, 32), coarse, atol=1e-6, rtol=0)
    assert torch.equal(sincos2d((7, 5), 32, ref_grid=(7, 5)), coarse)
    # between two coarse patches, a fine patch lies between them: closer to both than they are to each other
    d = torch.cdist(fine[2, 1:2], torch.stack([fine[1, 1], fine[4, 1]]))
    assert (d < (fine[1, 1] - fine[4, 1]).norm()).all()


def test_moving_a_sincos_model_keeps_its_grid_and_round_trips(tmp_path):
    from safetensors.torch import save_model

    from vitkit import create_model
    from vitkit.config import RunConfig
    from vitkit.convert import model_from_source
    from vitkit.train.runfiles import write_config

    kw = dict(patch_size=4, in_chans=1, num_classes=3, embed_dim=32, depth=1, num_heads=2, mlp_dim=64)
    torch.manual_seed(0)
    m = create_model("ViT-Ti/16", img_size=28, posemb="sincos2d", **kw).eval()
    run = tmp_path / "run"
    run.mkdir()
    write_config(str(run), RunConfig(model=m.cfg))
    save_model(m, str(run / "model.safetensors"))
    moved = model_from_source(str(run), img_size=56)
    assert moved.cfg.posemb_grid == (7, 7)
    torch.testing.assert_close(moved.pos_embed[0], sincos2d((14, 14), 32, ref_grid=(7, 7)))
    m.set_img_size(56)
    assert m.cfg == moved.cfg and torch.equal(m.pos_embed, moved.pos_embed)
    x = torch.randn(2, 1, 56, 56)
    torch.testing.assert_close(m(x), moved(x))
    # the moved model saved as a run comes back with the same embedding, and moving back restores the original
    run2 = tmp_path / "run2"
    run2.mkdir()
    write_config(str(run2), RunConfig(model=moved.cfg))
    save_model(moved, str(run2 / "model.safetensors"))
    again = model_from_source(str(run2))
    assert again.cfg.posemb_grid == (7, 7) and torch.equal(again.pos_embed, moved.pos_embed)
    back = model_from_source(str(run2), img_size=28)
    assert back.cfg.posemb_grid is None
    torch.testing.assert_close(back.pos_embed[0], sincos2d((7, 7), 32))


def test_a_vitkit_sincos_checkpoint_sets_its_grid_on_a_model_of_the_same_size(tmp_path):
    from safetensors.torch import save_model

    from vitkit import create_model
    from vitkit.config import RunConfig
    from vitkit.convert import load_pretrained
    from vitkit.train.runfiles import write_config

    kw = dict(patch_size=4, in_chans=1, num_classes=3, embed_dim=32, depth=1, num_heads=2, mlp_dim=64)
    kw["posemb"] = "sincos2d"
    moved = create_model("ViT-Ti/16", img_size=28, **kw)
    moved.set_img_size(56)  # trained (say) at 28 px, then fine-tuned at 56: posemb_grid (7, 7)
    run = tmp_path / "run"
    run.mkdir()
    write_config(str(run), RunConfig(model=moved.cfg))
    save_model(moved, str(run / "model.safetensors"))
    fresh = create_model("ViT-Ti/16", img_size=56, **kw)  # built without posemb_grid
    report = load_pretrained(fresh, str(run))
    assert fresh.cfg.posemb_grid == (7, 7) and torch.equal(fresh.pos_embed, moved.pos_embed)
    assert report.resampled == ((7, 7), (14, 14))
    with pytest.raises(ValueError, match="posemb_grid"):
        create_model("ViT-Ti/16", img_size=28, posemb_grid=(7, 7), **{**kw, "posemb": "learn"})


def test_resample_and_pca_refuse_empty_sizes():
    import vitkit
    from vitkit.inspect import embedding_pca

    with pytest.raises(ValueError, match=r"new_grid=\(0, 4\): expected a positive grid"):
        resample_posemb(torch.zeros(1, 17, 8), (0, 4))
    with pytest.raises(ValueError, match="k=0 principal components"):
        embedding_pca(vitkit.create_model("ViT-Ti/4", img_size=16, depth=1), k=0)


# ----------------------------------------------------------------------------- 1-D relative attention (App. D.4)


def _relative(pool: str = "token", **kw):
    import vitkit

    kw = dict(img_size=(12, 16), patch_size=4, in_chans=1, num_classes=5, embed_dim=32, depth=2, num_heads=4,
              mlp_dim=64, posemb="relative", pool=pool) | kw  # fmt: skip
    model = vitkit.create_model("ViT-Ti/4", **kw).eval()
    with torch.no_grad():
        for blk in model.blocks:
            blk.attn.rel_pos.normal_(std=0.5)  # large enough to matter
    return model


def _brute_force_logits(attn, x: torch.Tensor) -> torch.Tensor:
    """The paper's relative attention written out pair by pair: content logits q.k plus the query against the
    embedding of the offset p_q - p_k (the tokens in their 1-D order) as a key; scaled by 1/sqrt(head_dim)."""
    B, N, _ = x.shape
    H, hd = attn.num_heads, attn.head_dim
    q, k, _ = attn.qkv(x).reshape(B, N, 3, H, hd).permute(2, 0, 3, 1, 4).double()  # (B, H, N, hd)
    rel = attn.rel_pos.double().reshape(-1, H, hd)  # (2N - 1, H, hd)
    out = torch.zeros(B, H, N, N, dtype=torch.float64)
    for i in range(N):
        for j in range(N):
            r = rel[i - j + N - 1]  # (H, hd)
            out[:, :, i, j] = ((q[:, :, i] * k[:, :, j]).sum(-1) + (q[:, :, i] * r).sum(-1)) / hd**0.5
    return out  # (B, H, N, N)


@pytest.mark.parametrize("pool", ["token", "gap"])
def test_relative_attention_equals_the_pairwise_definition(pool):
    model = _relative(pool)
    images = torch.randn(2, 1, 12, 16)
    with torch.no_grad():
        logits, attns = model(images, return_attention=True)
        x = model.embed(images)  # no absolute embedding is added
        assert torch.equal(x[:, model.num_prefix_tokens :], model.patch_embed(images))
        want = _brute_force_logits(model.blocks[0].attn, model.blocks[0].norm1(x))
        torch.testing.assert_close(attns[0].double(), want.softmax(-1), rtol=1e-5, atol=1e-6)
        # the SDPA path (the bias as its float mask) and the class-token-only last block give the same logits
        torch.testing.assert_close(model(images), logits, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(
            model.forward_head(model.forward_features(images)), logits, rtol=1e-5, atol=1e-5
        )


def test_relative_attention_trains_its_tables_without_weight_decay():
    model = _relative().train()
    images = torch.randn(2, 1, 12, 16)
    model(images).logsumexp(-1).sum().backward()  # SDPA with the bias as a float mask
    sdpa = [blk.attn.rel_pos.grad.clone() for blk in model.blocks]
    model.zero_grad()
    logits, _ = model(images, return_attention=True)  # the explicit softmax path
    logits.logsumexp(-1).sum().backward()
    for a, blk in zip(sdpa, model.blocks):
        assert a.abs().sum() > 0
        torch.testing.assert_close(a, blk.attn.rel_pos.grad, rtol=1e-4, atol=1e-6)
    assert {"blocks.0.attn.rel_pos", "blocks.1.attn.rel_pos"} <= model.no_weight_decay()


def test_relative_attention_holds_one_grid_and_round_trips_through_a_state_dict(tmp_path):
    from safetensors.torch import save_file

    import vitkit

    model = _relative(img_size=(16, 16))
    assert vitkit.count_params(model.cfg) == sum(p.numel() for p in model.parameters())
    assert model.blocks[0].attn.rel_pos.shape == (
        2 * 17 - 1,
        32,
    )  # offsets of 17 tokens: class token, 4x4 grid
    with pytest.raises(ValueError, match="tied to the 4x4 patch grid"):
        model.set_img_size(32)
    with pytest.raises(ValueError, match="dynamic_img_size"):
        _relative(dynamic_img_size=True)
    path = str(tmp_path / "rel.safetensors")
    save_file(model.state_dict(), path)
    loaded = vitkit.create_model(pretrained=path, num_heads=4)  # the config read from the tensors
    assert loaded.cfg.posemb == "relative" and loaded.cfg.img_size == (16, 16)
    images = torch.randn(2, 1, 16, 16)
    torch.testing.assert_close(loaded(images), model(images))
    with pytest.raises(ValueError, match="tied to the 4x4 patch grid"):
        vitkit.create_model(pretrained=path, num_heads=4, img_size=32)


def test_a_dynamic_size_sincos_table_is_made_once_per_size():
    """Was: a dynamic_img_size sin-cos model rebuilt its table on every forward at a size other than its own (on
    CUDA a host-to-device copy each time); now once per (grid, width, reference grid, device), the same values,
    and usable by autograd though first made under inference mode."""
    from vitkit.models import create_model
    from vitkit.models.posemb import sincos2d

    m = create_model("ViT-Ti/4", img_size=16, in_chans=1, num_classes=3, depth=1, embed_dim=32, num_heads=2,
                     posemb="sincos2d", dynamic_img_size=True)  # fmt: skip
    with torch.inference_mode():
        first = m._patch_posemb((6, 5))
    assert m._patch_posemb((6, 5)) is first
    torch.testing.assert_close(first[0], sincos2d((6, 5), 32, ref_grid=(4, 4)), rtol=0, atol=0)
    m(torch.randn(2, 1, 24, 20)).sum().backward()
    assert m.patch_embed.proj.weight.grad is not None
