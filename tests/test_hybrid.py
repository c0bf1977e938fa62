"""The paper's hybrid (ResNet feature map -> patches): names, shapes, FLOPs, and parity with timm's hybrids."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import vitkit
from vitkit.config import ModelConfig, apply_overrides, from_dict, to_dict
from vitkit.convert import read_checkpoint
from vitkit.models import count_params, create_model, forward_macs, model_config
from vitkit.models.resnet import Bottleneck, pad_same

# (vitkit name, timm name, image size): timm's three hybrid layouts at a small size and depth
TIMM_HYBRIDS = [
    ("R+ViT-Ti/32", "vit_tiny_r_s16_p8_224", 64),
    ("R26+ViT-S/32", "vit_small_r26_s32_224", 64),
    ("R50+ViT-B/16", "vit_base_r50_s16_224", 32),
]


def test_names_give_the_papers_hybrids():
    cfg = model_config("R50+ViT-B/16")
    assert cfg.backbone == (3, 4, 9) and cfg.patch_size == 1 and cfg.token_stride == 16
    assert cfg.grid_size == (14, 14) and cfg.name == "R50+ViT-B/16"
    assert model_config("r50+vit-b/48", img_size=384).patch_size == 3  # 3x3 patches of the stride-16 map
    assert model_config("r50+vit-b/32").backbone == (3, 4, 6, 3)  # the standard ResNet-50 at stride 32
    tiny = model_config("R+ViT-Ti/16")
    assert tiny.backbone == () and tiny.patch_size == 4 and tiny.grid_size == (14, 14)
    assert model_config("R26+ViT-S/32", img_size=384).grid_size == (12, 12)
    with pytest.raises(ValueError, match="multiple of the ResNet's stride 16"):
        model_config("R50+ViT-B/8")
    with pytest.raises(ValueError, match="unknown hybrid 'R18\\+ViT-B/16'"):
        model_config("R18+ViT-B/16")
    with pytest.raises(ValueError, match="token stride"):
        model_config("R50+ViT-B/16", img_size=200)
    assert model_config("R50x1+ViT-B/16").backbone == (3, 4, 9)  # the paper's notation


@pytest.mark.parametrize(
    ("backbone", "patch", "name"),
    [((3, 4, 9), 1, "R50+ViT-B/16"), ((3, 4, 6, 3), 1, "R50+ViT-B/32"), ((3, 4, 9), 2, "R3-4-9+ViT-B/32"),
     ((2, 2, 2, 2), 1, "R26+ViT-B/32"), ((), 4, "R+ViT-B/16")],
)  # fmt: skip
def test_a_hybrids_name_parses_back_to_its_resnet_and_patch(backbone, patch, name):
    """A name is given only where it parses back: R50's stride-16 stages under 2x2 patches are not R50+ViT-B/32
    (the standard ResNet-50 under 1x1 patches)."""
    from vitkit.models.registry import model_name

    assert model_name(768, 12, 12, 3072, patch, backbone) == name
    if not name.startswith("R3-"):
        cfg = model_config(name)
        assert (cfg.backbone, cfg.patch_size) == (backbone, patch)


def test_backbone_config_parses_validates_and_round_trips():
    cfg = vitkit.RunConfig()
    cfg = apply_overrides(cfg, ["model.backbone=3,4,9", "model.patch_size=1"])
    assert cfg.model.backbone == (3, 4, 9)
    assert apply_overrides(cfg, ["model.backbone=()"]).model.backbone == ()
    assert apply_overrides(cfg, ["model.backbone=none", "model.patch_size=16"]).model.backbone is None
    assert from_dict(vitkit.RunConfig, to_dict(cfg)) == cfg  # JSON lists come back as tuples
    for bad in ((3, 0), (1, 1, 1, 1, 1), "349"):
        with pytest.raises(ValueError, match=r"model\.backbone"):
            ModelConfig(backbone=bad, patch_size=1)


def _hook_macs(model: nn.Module, x: torch.Tensor) -> int:
    """Convolution MACs counted from the layers' actual output shapes."""
    total = 0

    def hook(mod, inp, out):
        nonlocal total
        k = mod.weight[0].numel()  # in/groups * kh * kw
        total += out[0].numel() * k

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return total


@pytest.mark.parametrize("name,img", [("R50+ViT-B/16", 64), ("R26+ViT-S/32", 64), ("R+ViT-Ti/16", 48)])
def test_analytic_macs_and_params_match_the_built_model(name, img):
    model = create_model(name, img_size=img, depth=1, num_classes=7)
    conv = _hook_macs(model, torch.randn(1, 3, img, img))
    plain = forward_macs(model.cfg) - conv  # the transformer's share: the ViT formula on the token grid
    cfg = model.cfg
    n, d, m = cfg.num_tokens, cfg.embed_dim, cfg.mlp_dim
    assert plain == n * (4 * d * d + 2 * d * m) + 2 * n * n * d + d * 7
    assert count_params(cfg) == sum(p.numel() for p in model.parameters())


def test_same_padding_matches_tensorflow():
    x = torch.arange(36.0).reshape(1, 1, 6, 6)
    y = pad_same(x, 7, 2)  # total 5: 2 before, 3 after (TF puts the extra on the bottom/right)
    assert y.shape[-2:] == (11, 11)
    assert torch.equal(y[0, 0, 2:8, 2:8], x[0, 0])
    assert pad_same(x, 1, 1) is x


def _randomise_norms(model: nn.Module) -> None:
    """Random GroupNorm affines, so that zero-initialised residual branches are exercised too."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, nn.GroupNorm):
                mod.weight.copy_(torch.rand(mod.weight.shape, generator=g) + 0.5)
                mod.bias.copy_(torch.randn(mod.bias.shape, generator=g) * 0.1)


@pytest.mark.parametrize("name,timm_name,img", TIMM_HYBRIDS)
def test_timm_hybrid_weights_load_and_give_timms_logits(tmp_path, name, timm_name, img):
    timm = pytest.importorskip("timm")
    from safetensors.torch import save_file

    ref = timm.create_model(timm_name, pretrained=False, img_size=img, depth=2, num_classes=5).eval()
    _randomise_norms(ref)
    path = tmp_path / "timm_hybrid.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(path))

    model = vitkit.create_model(pretrained=str(path)).eval()  # architecture inferred from the keys
    cfg = model.cfg
    assert cfg.name.startswith(name.split("+")[0] + "+") and cfg.img_size == (img, img)
    assert cfg.backbone == model_config(name).backbone and cfg.depth == 2
    x = torch.randn(2, 3, img, img)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x), rtol=0, atol=1e-5)
    assert count_params(cfg) == sum(p.numel() for p in ref.parameters())


def test_hybrid_moves_to_another_resolution_and_inspects():
    from vitkit.inspect import analyse, embedding_pca

    model = create_model("R+ViT-Ti/16", img_size=32, depth=2, num_classes=3, in_chans=1).eval()
    model.set_img_size(64)
    assert model.cfg.grid_size == (4, 4) and model.pos_embed.shape[1] == 17
    out = model(torch.randn(2, 1, 64, 64))
    assert out.shape == (2, 3)
    comps, ratio = embedding_pca(model, k=5, return_variance=True)  # the root's standardised 7x7 filters
    assert comps.shape == (5, 1, 7, 7)
    flat = comps.flatten(1)
    torch.testing.assert_close(flat @ flat.T, torch.eye(5), rtol=0, atol=1e-4)
    assert bool((ratio[:-1] >= ratio[1:]).all())
    a = analyse(model, torch.randn(2, 1, 64, 64), k=5)
    assert a.patch_size == 16 and a.distances.shape == (2, 3)


def test_zero_initialised_residual_branches():
    model = create_model("R26+ViT-S/32", img_size=32, depth=1)
    blocks = [m for m in model.modules() if isinstance(m, Bottleneck)]
    assert len(blocks) == 8 and all(int(torch.count_nonzero(b.norm3.weight.detach())) == 0 for b in blocks)


def _official_resnet(rng: np.random.Generator, layers: tuple[int, ...], chans: int) -> dict[str, np.ndarray]:
    """Random BiT ResNet arrays in the official hybrid .npz layout (kernels HWIO)."""
    r = lambda *s: rng.normal(0, 0.2, s).astype(np.float32)  # noqa: E731
    w = {"conv_root/kernel": r(7, 7, chans, 64), "gn_root/scale": 1 + r(64), "gn_root/bias": r(64)}
    c = 64
    for i, depth in enumerate(layers):
        out = (256, 512, 1024, 2048)[i]
        mid = out // 4
        for j in range(depth):
            u = f"block{i + 1}/unit{j + 1}/"
            shapes = {"conv1": (1, 1, c, mid), "conv2": (3, 3, mid, mid), "conv3": (1, 1, mid, out)}
            if j == 0:
                shapes["conv_proj"] = (1, 1, c, out)
            for name, shape in shapes.items():
                w[f"{u}{name}/kernel"] = r(*shape)
                n = shape[-1]
                w[f"{u}{name.replace('conv', 'gn')}/scale"] = 1 + r(n)
                w[f"{u}{name.replace('conv', 'gn')}/bias"] = r(n)
            c = out
    return w


@pytest.mark.parametrize(
    "layers,timm_name", [((), "vit_tiny_r_s16_p8_224"), ((2, 1, 2), "vit_base_r50_s16_224")]
)
def test_official_hybrid_npz_matches_timms_own_loader(tmp_path, layers, timm_name):
    timm = pytest.importorskip("timm")
    from test_convert import DEPTH, HEADS, MLP, D, P, flax_arrays, save_npz

    chans = 64 if not layers else (256, 512, 1024)[len(layers) - 1]
    arrays = flax_arrays(chans=chans)  # the encoder; its 16x16 patches are cut from the feature map
    arrays.update(_official_resnet(np.random.default_rng(1), layers, 3))
    path = save_npz(tmp_path / "hybrid.npz", arrays)
    stride = 4 * 2 ** max(len(layers) - 1, 0)
    img = 2 * P * stride  # a 2x2 token grid
    kw = dict(img_size=img, patch_size=P, embed_dim=D, depth=DEPTH, num_heads=HEADS, mlp_ratio=MLP / D)
    if layers:  # timm's R50 hybrid with these stage depths
        from timm.models.vision_transformer_hybrid import _create_vision_transformer_hybrid, _resnetv2

        ref = _create_vision_transformer_hybrid(timm_name, backbone=_resnetv2(layers), num_classes=5, **kw)
    else:
        ref = timm.create_model(timm_name, num_classes=5, **kw)
    ref.load_pretrained(path)  # timm's _load_weights, hybrid branch
    ours = vitkit.create_model(pretrained=path)
    assert ours.cfg.backbone == layers and ours.cfg.token_stride == P * stride
    assert read_checkpoint(path).format == "official"
    with torch.no_grad():
        x = torch.randn(2, 3, img, img)
        torch.testing.assert_close(ours(x), ref.eval()(x), rtol=0, atol=1e-4)


def test_hybrid_exports_to_onnx(tmp_path):
    pytest.importorskip("onnxruntime")
    from vitkit.convert import check_onnx, export_onnx

    model = create_model("R26+ViT-S/32", img_size=64, embed_dim=32, depth=1, num_heads=2, mlp_dim=64).eval()
    _randomise_norms(model)
    diffs = check_onnx(export_onnx(model, str(tmp_path / "hybrid.onnx")), model, (1, 3))
    assert set(diffs) == {1, 3} and max(diffs.values()) < 1e-4, diffs


def test_r50_at_stride_32_is_the_standard_resnet50():
    cfg = model_config("R50+ViT-L/32")
    assert cfg.backbone == (3, 4, 6, 3) and cfg.patch_size == 1 and cfg.grid_size == (7, 7)
    assert model_config("R50 + ViT-B/16").backbone == (3, 4, 9)  # spaces allowed
    with pytest.raises(ValueError, match="names its ResNet"):
        model_config("R50+ViT-B/16", backbone=())


def test_train_flag_model_sets_the_resnet():
    from test_recipes import _args
    from vitkit.cli.train import resolve_config

    cfg = resolve_config(_args(model="R+ViT-Ti/16", img_size=32))
    assert cfg.model.backbone == () and cfg.model.patch_size == 4 and cfg.model.name == "R+ViT-Ti/16"
    cfg = resolve_config(_args(recipe="fashion-mnist-fast", model="ViT-Ti/4"))
    assert cfg.model.backbone is None and cfg.model.patch_size == 4


def test_hybrid_checkpoints_adapt_channels_and_refuse_unknown_cnns(tmp_path):
    from safetensors.torch import save_file

    from vitkit.convert import ConversionError, load_pretrained

    src = create_model("R26+ViT-S/32", img_size=64, embed_dim=32, depth=1, num_heads=2, mlp_dim=64)
    path = str(tmp_path / "h.safetensors")
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, path)
    gray = create_model(
        "R26+ViT-S/32", img_size=64, embed_dim=32, depth=1, num_heads=2, mlp_dim=64, in_chans=1
    )
    report = load_pretrained(gray, path)
    assert report.channels_adapted == (3, 1)
    assert gray.patch_embed.backbone.stem.conv.weight.shape == (64, 1, 7, 7)
    assert gray(torch.randn(2, 1, 64, 64)).shape == (2, 1000)

    odd = {"patch_embed.backbone.conv1.0.weight": torch.zeros(32, 3, 3, 3), **src.state_dict()}
    del odd["patch_embed.backbone.stem.conv.weight"]
    bad = str(tmp_path / "odd.safetensors")
    save_file({k: v.contiguous() for k, v in odd.items()}, bad)
    with pytest.raises(ConversionError, match="not the BiT ResNet"):
        read_checkpoint(bad)
