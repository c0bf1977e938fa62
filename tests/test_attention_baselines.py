"""The attention baselines the paper cites (SASA, AA) and their batch-norm ResNet control: every registered
variant, each layer against an independent reference or timm, analytic counts, timm ResNet weights, the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import vitkit
from helpers import check_cnn_trains, run_vitkit
from vitkit.convert import ConversionError, read_checkpoint
from vitkit.models import build_model, count_params, create_model, forward_macs, list_models, model_config
from vitkit.models.augmented_conv import AugmentedConv2d, relative_logits_1d, relative_logits_2d
from vitkit.models.local_attention import AttentionStem, LocalSelfAttention2d
from vitkit.models.resnet_v1 import ResNetV1

RESNETS = [n for n in list_models() if "ResNet-" in n]


def perturb_(model: torch.nn.Module, scale: float = 0.1) -> None:
    """Every parameter and norm statistic away from its init, so that a swapped weight shows."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn_like(p))
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.add_(scale * torch.randn_like(b))
            elif name.endswith("running_var"):
                b.mul_(1 + scale * torch.rand_like(b))


@pytest.mark.parametrize("name", RESNETS)
def test_registered_variants_build_train_and_count(name):
    kw = dict(img_size=32, num_classes=5, in_chans=3, drop_rate=0.1, drop_path_rate=0.1)
    model = create_model(name, **kw)
    arch = {"SASA": "sasa", "AA": "aa"}.get(name.split("-")[0], "resnet")
    assert isinstance(model, ResNetV1) and model.cfg.arch == arch
    assert sum(p.numel() for p in model.parameters()) == count_params(model.cfg)
    check_cnn_trains(model, torch.randn(2, 3, 32, 32), 5, nonzero_grads=False)  # norm3 starts at zero


def test_paper_sizes():
    """Parameters and FLOPs beside the papers' (SASA Table 1: ResNet-26 13.7M, conv-stem + attention 10.3M;
    ResNet-50 25.6M / 8.2 GFLOPs, 18.0M / 7.0; AA Table: AA-ResNet-50 8.3 GFLOPs)."""
    counts = {n: count_params(model_config(n, img_size=224)) for n in ("ResNet-26", "SASA-ResNet-26")}
    assert round(counts["ResNet-26"] / 1e6, 1) == 13.7 and round(counts["SASA-ResNet-26"] / 1e6, 1) == 10.3
    r50, sasa50, aa50 = (model_config(n) for n in ("ResNet-50", "SASA-ResNet-50", "AA-ResNet-50"))
    assert count_params(r50) == 25_557_032  # torchvision's and timm's resnet50
    assert count_params(aa50) == 25_113_950  # the paper's 25.8M not reproduced (augmented_conv.py says why)
    assert round(count_params(sasa50) / 1e6, 1) == 18.0
    assert round(2 * forward_macs(r50) / 1e9, 1) == 8.2 and round(2 * forward_macs(aa50) / 1e9, 1) == 8.3
    assert round(2 * forward_macs(sasa50) / 1e9, 2) == 6.81  # the paper's 7.0
    # "Full Attention" (the attention stem): ResNet-26 10.3M / 4.7 GFLOPs, ResNet-50 18.0M / 7.2 in the paper;
    # mixing each in-block position's value matrix first costs less than the paper's count of m value maps
    full26, full50 = (model_config(n, sasa_stem="attention") for n in ("SASA-ResNet-26", "SASA-ResNet-50"))
    assert round(count_params(full26) / 1e6, 1) == 10.3 and round(count_params(full50) / 1e6, 1) == 18.0
    assert (
        round(2 * forward_macs(full26) / 1e9, 2) == 4.46 and round(2 * forward_macs(full50) / 1e9, 2) == 6.88
    )


# SASA at 28 px: every map at most 7x7, where the dense path computes exactly the windows' pairs (on larger maps
# its dense and tiled paths also compute masked pairs, which the count leaves out as the paper does)
@pytest.mark.parametrize(
    "name,size,kw",
    [
        ("ResNet-26", 45, {}),
        ("SASA-ResNet-26", 28, {}),
        ("SASA-ResNet-26", 28, {"sasa_stem": "attention"}),
        ("AA-ResNet-26", 40, {}),
    ],
)
def test_forward_macs_count_every_product(name, size, kw):
    from torch.utils.flop_counter import FlopCounterMode

    cfg = model_config(name, img_size=size, num_classes=10, **kw)
    model = build_model(cfg).eval()
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        model(torch.randn(1, 3, size, size))
    assert fc.get_total_flops() == 2 * forward_macs(cfg)


def sasa_reference(layer: LocalSelfAttention2d, x: torch.Tensor) -> torch.Tensor:
    """The paper's equation pixel by pixel: y_ij = sum_ab softmax(q_ij.(k_ab + r_{a-i,b-j})) v_ab per head."""
    h, w = x.shape[-2:]
    q, k, v = layer.qkv(x).chunk(3, dim=1)
    nh, dh, r = layer.num_heads, layer.head_dim, layer.window // 2
    out = torch.zeros_like(q)
    for i in range(h):
        for j in range(w):
            for n in range(nh):
                ch = slice(n * dh, (n + 1) * dh)
                logits, values = [], []
                for a in range(max(i - r, 0), min(i + r + 1, h)):
                    for c in range(max(j - r, 0), min(j + r + 1, w)):
                        rel = torch.cat([layer.rel_row[n, :, a - i + r], layer.rel_col[n, :, c - j + r]])
                        logits.append((q[:, ch, i, j] * layer.scale * (k[:, ch, a, c] + rel)).sum(-1))
                        values.append(v[:, ch, a, c])
                weights = torch.stack(logits, -1).softmax(-1)  # (B, neighbours)
                out[:, ch, i, j] = (weights.unsqueeze(1) * torch.stack(values, -1)).sum(-1)
    return torch.nn.functional.avg_pool2d(out, 2, ceil_mode=True) if layer.stride == 2 else out


@pytest.mark.parametrize(
    "stride,window,size", [(1, 3, (5, 6)), (2, 5, (5, 7)), (1, 7, (3, 4)), (2, 3, (7, 6))]
)
def test_local_attention_matches_the_equation(stride, window, size):
    """Both ways of computing it (all pairs masked; gathered windows) against the equation."""
    torch.manual_seed(0)
    layer = LocalSelfAttention2d(6, 8, num_heads=2, window=window, stride=stride)
    x = torch.randn(2, 6, *size)
    dense = size[0] * size[1] <= 4 * window * window
    with torch.no_grad():
        want = sasa_reference(layer, x)
        torch.testing.assert_close(layer(x), want, rtol=1e-5, atol=1e-5)
        q, k, v = layer.qkv(x).chunk(3, dim=1)
        other = layer._tiled(q, k, v) if dense else layer._dense(q, k, v)
        other = other.reshape(2, 8, *size)
        if stride == 2:
            other = torch.nn.functional.avg_pool2d(other, 2, ceil_mode=True)
        torch.testing.assert_close(other, want, rtol=1e-5, atol=1e-5)
    x.requires_grad_(True)  # padded tiles and masked pairs leave no NaN in the gradients
    layer(x).square().sum().backward()
    assert torch.isfinite(x.grad).all() and all(torch.isfinite(p.grad).all() for p in layer.parameters())


def attention_stem_reference(stem: AttentionStem, x: torch.Tensor) -> torch.Tensor:
    """The paper's stem pixel by pixel: v_ab = sum_m p(a, b, m) W_V^m x_ab, p = softmax_m over the in-block
    position's row + column tables; each pixel attends to its 4x4 block, logits q . (k + r_offset); batch norm,
    ReLU, 4x4 max pool."""
    b, _, h, w = x.shape
    nh, dh, s = stem.num_heads, stem.head_dim, stem.block
    pix = x.permute(0, 2, 3, 1)  # (B, H, W, C)
    q, k = stem.qk(pix).chunk(2, dim=-1)  # (B, H, W, D)
    mixed = {}  # in-block position -> sum_m p(a, b, m) W_V^m, (D, C)
    for a in range(s):
        for c in range(s):
            p = (stem.mix_row[a] + stem.mix_col[c]).softmax(-1)  # (m,)
            mixed[a, c] = sum(p_m * w_m for p_m, w_m in zip(p, stem.value))
    out = torch.zeros(b, h, w, nh * dh)
    for i in range(h):
        for j in range(w):
            for n in range(nh):
                ch = slice(n * dh, (n + 1) * dh)
                logits, values = [], []
                for a in range(i - i % s, i - i % s + s):
                    for c in range(j - j % s, j - j % s + s):
                        rel = torch.cat(
                            [stem.rel_row[n, :, a - i + s - 1], stem.rel_col[n, :, c - j + s - 1]]
                        )
                        logits.append((q[:, i, j, ch] * stem.scale * (k[:, a, c, ch] + rel)).sum(-1))
                        values.append(pix[:, a, c] @ mixed[a % s, c % s][ch].t())  # (B, dh)
                weights = torch.stack(logits, -1).softmax(-1)  # (B, 16)
                out[:, i, j, ch] = (weights.unsqueeze(-1) * torch.stack(values, 1)).sum(1)
    out = torch.relu(stem.norm(out.permute(0, 3, 1, 2)))
    return torch.nn.functional.max_pool2d(out, s)


def test_attention_stem_matches_the_equation():
    """The block layout, the once-mixed value matrices and the in-block relative logits against the paper's stem
    pixel by pixel; a pixel's output depends on its own block only."""
    torch.manual_seed(0)
    stem = AttentionStem(3, 8, num_heads=2).eval()
    perturb_(stem, 0.5)  # mixture tables away from the even mix, running statistics away from identity
    x = torch.randn(2, 3, 8, 12)
    with torch.no_grad():
        out = stem(x)
        assert out.shape == (2, 8, 2, 3)
        torch.testing.assert_close(out, attention_stem_reference(stem, x), rtol=1e-5, atol=1e-5)
        y = x.clone()
        y[:, :, 4:, 8:] += 1.0  # one block changed: only its pooled output moves
        moved = (stem(y) - out).abs().amax(1) > 0  # (B, 2, 3)
        assert moved[:, 1, 2].all() and moved.sum() == 2
    with pytest.raises(ValueError, match="image sides divisible by 4, got 6x8"):
        stem(torch.randn(1, 3, 6, 8))
    with pytest.raises(
        ValueError, match=r"attention stem: 10 channels do not split into 2 heads .* even width"
    ):
        AttentionStem(3, 10, num_heads=2)
    stem.train()
    x.requires_grad_(True)
    stem(x).square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in stem.parameters())


def test_sasa_with_the_attention_stem_trains():
    model = create_model("SASA-ResNet-26", img_size=28, in_chans=1, num_classes=4, sasa_stem="attention")
    assert isinstance(model.stem, AttentionStem) and sum(
        p.numel() for p in model.parameters()
    ) == count_params(model.cfg)
    assert {"stem.mix_row", "stem.mix_col", "stem.rel_row"} <= model.no_weight_decay()
    check_cnn_trains(model, torch.randn(2, 1, 28, 28), 4, nonzero_grads=False)


def test_relative_logits_match_timm():
    from timm.layers.bottleneck_attn import rel_logits_1d

    q, table = torch.randn(2, 3, 4, 5, 6), torch.randn(9, 6)  # (B, heads, H, W, d), (2W - 1, d)
    ours = relative_logits_1d(q, table)  # (B, heads, H, W, W)
    theirs = rel_logits_1d(q.flatten(0, 1), table, permute_mask=(0, 1, 3, 2, 4))  # (B*heads, H, W, H', W')
    torch.testing.assert_close(ours.flatten(0, 1), theirs[:, :, :, 0], rtol=1e-5, atol=1e-5)
    assert ours[0, 0, 0, 1, 3] == pytest.approx(float(q[0, 0, 0, 1] @ table[3 - 1 + 4]), abs=1e-5)


@pytest.mark.parametrize("stride", [1, 2])
def test_augmented_attention_matches_timm_bottleneck_attention(stride):
    """The attention branch is timm's BottleneckAttn with the AA paper's scaling (scale_pos_embed=True)."""
    from timm.layers.bottleneck_attn import BottleneckAttn

    torch.manual_seed(0)
    aa = AugmentedConv2d(
        16, 32, num_heads=2, key_channels=16, value_channels=8, feat_size=(3, 4), stride=stride
    )
    theirs = BottleneckAttn(16, 8, feat_size=(3, 4), num_heads=2, qk_ratio=2.0, scale_pos_embed=True)
    with torch.no_grad():
        theirs.qkv.weight.copy_(aa.qkv.weight)
        theirs.pos_embed.height_rel.copy_(aa.rel_h)
        theirs.pos_embed.width_rel.copy_(aa.rel_w)
    h, w = (6, 7) if stride == 2 else (3, 4)
    x = torch.randn(2, 16, h, w)
    with torch.no_grad():
        pooled = torch.nn.functional.avg_pool2d(x, 2, ceil_mode=True) if stride == 2 else x
        torch.testing.assert_close(aa.attention(pooled), theirs(pooled), rtol=1e-5, atol=1e-5)
        y = aa(x)
        assert y.shape == (2, 32, 3, 4)
        torch.testing.assert_close(y[:, 24:], aa.proj(theirs(pooled)), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(y[:, :24], aa.conv(x))
    with pytest.raises(ValueError, match="built to attend over 3x4 maps got 5x5"):
        aa.attention(torch.randn(1, 16, 5, 5))


def test_relative_logits_2d_index_rows_and_columns():
    q = torch.randn(1, 1, 2, 3, 4)
    rel_h, rel_w = torch.randn(3, 4), torch.randn(5, 4)
    s = relative_logits_2d(q, rel_h, rel_w).reshape(2, 3, 2, 3)  # (query y, x, key y', x')
    for y, x, yy, xx in [(0, 0, 1, 2), (1, 2, 0, 0), (1, 1, 1, 1)]:
        want = q[0, 0, y, x] @ (rel_h[yy - y + 1] + rel_w[xx - x + 2])
        assert s[y, x, yy, xx] == pytest.approx(float(want), abs=1e-5)


def test_resnet_matches_timm_and_loads_its_files(tmp_path):
    from safetensors.torch import save_file

    from vitkit.perf.benchmark import timm_twin

    torch.manual_seed(0)
    ours = create_model("ResNet-50", img_size=64, num_classes=7, drop_path_rate=0.1)
    perturb_(ours)
    theirs = timm_twin(ours.cfg)
    from vitkit.convert.resnet import to_timm_resnet_names

    theirs.load_state_dict(to_timm_resnet_names(ours.state_dict()), strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        a, b = ours.eval()(x), theirs.eval()(x)
        scale = float(a.abs().max())
        assert scale > 1.0
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6 * scale)
    path = tmp_path / "resnet50.safetensors"
    save_file({k: v.contiguous() for k, v in theirs.state_dict().items()}, str(path))
    ckpt = read_checkpoint(str(path))
    assert (ckpt.format, ckpt.config.name, ckpt.config.backbone) == ("timm", "ResNet-50", (3, 4, 6, 3))
    loaded = vitkit.create_model(pretrained=str(path))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), b, rtol=0, atol=1e-6 * scale)
    hub = tmp_path / "resnet50.a1_in1k"  # a timm hub folder: its config.json gives the size and mean/std
    hub.mkdir()
    save_file({k: v.contiguous() for k, v in theirs.state_dict().items()}, str(hub / "model.safetensors"))
    pre = {"input_size": [3, 64, 64], "mean": [0.4, 0.5, 0.6], "std": [0.2, 0.2, 0.3]}
    (hub / "config.json").write_text(json.dumps({"architecture": "resnet50", "pretrained_cfg": pre}))
    ckpt = read_checkpoint(str(hub))
    assert ckpt.config.img_size == (64, 64) and ckpt.meta["mean"] == [0.4, 0.5, 0.6]
    grey = vitkit.create_model(pretrained=str(path), in_chans=1, num_classes=3)
    assert grey.head.fc.weight.abs().sum() == 0 and grey.stem.conv.weight.shape == (64, 1, 7, 7)


def test_other_timm_resnets_are_refused_by_name(tmp_path):
    from timm.models.resnet import BasicBlock, Bottleneck, ResNet

    from vitkit.convert.resnet import infer_resnet_config

    basic = ResNet(BasicBlock, [1, 1, 1, 1], num_classes=3).state_dict()
    with pytest.raises(ConversionError, match="basic-block ResNet"):
        infer_resnet_config(basic, "resnet18.safetensors")
    deep = ResNet(Bottleneck, [1, 1, 1, 1], stem_type="deep", num_classes=3).state_dict()
    with pytest.raises(ConversionError, match="deep-stem"):
        infer_resnet_config(deep, "resnet50d.safetensors")
    with pytest.raises(ConversionError, match=r"timm's resnet26 \(2, 2, 2, 2\) is not its ResNet-26"):
        infer_resnet_config(ResNet(Bottleneck, [2, 2, 2, 2]).state_dict(), "resnet26.safetensors")
    grouped = ResNet(Bottleneck, [1, 2, 4, 1], cardinality=32, base_width=4, num_classes=3).state_dict()
    with pytest.raises(
        ConversionError, match=r"layer1\.0\.conv3\.weight is \(256, 128, 1, 1\).*grouped or wider"
    ):
        infer_resnet_config(grouped, "resnext.safetensors")
    from safetensors.torch import save_file

    own = tmp_path / "sasa.safetensors"  # vitkit's own weights without their config
    save_file(create_model("SASA-ResNet-26").state_dict(), str(own))
    with pytest.raises(ConversionError, match="own ResNet/SASA/AA weights load from their run folder"):
        read_checkpoint(str(own))


def test_aa_moves_to_another_size():
    model = create_model("AA-ResNet-26", img_size=32, in_chans=3, num_classes=4).eval()
    with pytest.raises(ValueError, match="set_img_size"):
        model(torch.randn(1, 3, 64, 64))
    table = model.stages[1].blocks[0].conv2.rel_w.detach().clone()  # (2 * 4 - 1, dkh)
    model.set_img_size(64)
    moved = model.stages[1].blocks[0].conv2.rel_w.detach()
    assert moved.shape[0] == 2 * 8 - 1 and model.cfg.img_size == (64, 64)
    torch.testing.assert_close(moved[[0, 7, 14]], table[[0, 3, 6]])  # ends and centre kept
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 4)
    assert sum(p.numel() for p in model.parameters()) == count_params(model.cfg)


def test_aa_weights_load_at_another_size(tmp_path):
    """The relative tables are resampled over their offsets: 7 (4x4 maps of stage 2 at 32 px) to 11 (6x6 at
    48 px), linearly with the end offsets kept, as numpy's interp gives."""
    from vitkit.convert import load_pretrained
    from vitkit.convert.runs import save_model_file

    src = create_model("AA-ResNet-26", img_size=32, in_chans=3, num_classes=4).eval()
    save_model_file(str(tmp_path / "aa.safetensors"), src)
    model = create_model("AA-ResNet-26", img_size=48, in_chans=3, num_classes=4)
    report = load_pretrained(model, str(tmp_path / "aa.safetensors"))
    assert "stages.1.blocks.0.conv2.rel_h" in report.relative_resampled
    old = src.stages[1].blocks[0].conv2.rel_h.detach().double().numpy()  # (7, d)
    assert old.shape[0] == 7
    want = np.stack([np.interp(np.linspace(0, 6, 11), np.arange(7), col) for col in old.T], axis=1)
    torch.testing.assert_close(
        model.stages[1].blocks[0].conv2.rel_h.detach().double(), torch.from_numpy(want), rtol=0, atol=1e-6
    )
    torch.testing.assert_close(
        model.stages[1].blocks[0].conv2.qkv.weight, src.stages[1].blocks[0].conv2.qkv.weight
    )


def test_configs_name_what_is_wrong():
    with pytest.raises(ValueError, match=r"model\.backbone=\(4, 4, 4, 4\): ResNet-50 has the stage depths"):
        vitkit.ModelConfig(name="ResNet-50", arch="resnet", backbone=(4, 4, 4, 4))
    with pytest.raises(
        ValueError, match=r"model\.aa_value_ratio=0\.97 with model\.num_heads=8: stage 2's 128"
    ):
        model_config("AA-ResNet-26", aa_value_ratio=0.97)
    with pytest.raises(
        ValueError, match=r"with model\.num_heads=128: stage 2's 128 channels would give .* dv=128"
    ):
        model_config("AA-ResNet-26", num_heads=128)
    with pytest.raises(ValueError, match="depth is one of 26, 38, 50, 101, 152"):
        model_config("SASA-ResNet-34")
    with pytest.raises(ValueError, match="that model is 'SASA-ResNet-26'"):
        vitkit.ModelConfig(name="ResNet-26", arch="sasa", backbone=(1, 2, 4, 1), num_heads=8)
    with pytest.raises(ValueError, match=r"model\.num_heads=6: stage 1's 64 attention channels"):
        model_config("SASA-ResNet-26", num_heads=6)
    with pytest.raises(ValueError, match=r"model\.sasa_window=4"):
        model_config("SASA-ResNet-26", sasa_window=4)
    with pytest.raises(ValueError, match=r"model\.sasa_window=5 applies to arch='sasa' only"):
        model_config("AA-ResNet-26", sasa_window=5)
    with pytest.raises(ValueError, match=r"model\.sasa_stem='attn' is not one of 'conv', 'attention'"):
        model_config("SASA-ResNet-26", sasa_stem="attn")
    with pytest.raises(ValueError, match=r"model\.sasa_stem='attention' applies to arch='sasa' only"):
        model_config("ResNet-26", sasa_stem="attention")
    with pytest.raises(ValueError, match=r"4x4 blocks: image size 30x32 must be a multiple of 4"):
        model_config("SASA-ResNet-26", sasa_stem="attention", img_size=(30, 32))
    with pytest.raises(ValueError, match=r"model\.aa_value_ratio=1\.0 must lie in \(0, 1\)"):
        model_config("AA-ResNet-50", aa_value_ratio=1.0)
    with pytest.raises(ValueError, match=r"model\.aa_value_ratio=0\.0 must lie in \(0, 1\)"):  # was: "dv=8"
        model_config("AA-ResNet-26", aa_value_ratio=0.0)
    with pytest.raises(ValueError, match=r"model\.num_heads=8 is a ViT option; the RESNET baseline"):
        model_config("ResNet-50", num_heads=8)
    with pytest.raises(ValueError, match="fixes backbone"):
        model_config("ResNet-50", backbone=(1, 1, 1, 1))
    with pytest.raises(ValueError, match=r"model\.aa_key_ratio=0\.3 applies to arch='aa' only"):
        vitkit.ModelConfig(aa_key_ratio=0.3)
    assert model_config("aa-resnet-50").name == "AA-ResNet-50"


def test_models_command_and_export(tmp_path, capsys):
    from vitkit.cli import main

    assert main(["models", "--json"]) == 0
    rows = {r["model"]: r for r in json.loads(capsys.readouterr().out)}
    sasa = rows["SASA-ResNet-50"]
    assert (sasa["arch"], sasa["width"], sasa["depth"], sasa["heads"]) == ("sasa", 2048, 50, 8)
    assert rows["ResNet-50"]["params"] == 25_557_032 and rows["ResNet-50"]["heads"] is None
    pytest.importorskip("onnxruntime")
    from vitkit.convert import check_onnx, export_onnx

    for name, kw in [
        ("SASA-ResNet-26", {}),
        ("AA-ResNet-26", {}),
        ("SASA-ResNet-26", {"sasa_stem": "attention"}),
    ]:
        model = create_model(name, img_size=32, num_classes=10, **kw).eval()
        perturb_(model, 0.01)
        path = export_onnx(model, str(tmp_path / f"{name}-{len(kw)}.onnx"))
        assert max(check_onnx(path, model, (1, 3)).values()) < 1e-4


def test_benchmark_compares_resnet_with_timm_and_refuses_peerless():
    from vitkit.perf.benchmark import run_benchmark

    cfg = model_config("ResNet-26", img_size=32, num_classes=10, in_chans=1)
    res = run_benchmark(cfg, batch_size=2, compare="timm", warmup=1, repeats=1, min_seconds=0.01)
    assert res["max_logit_diff_vs_timm"] <= 1e-4 and res["timm_img_s"] > 0
    with pytest.raises(ValueError, match="timm has no SASA-ResNet-26"):
        run_benchmark(model_config("SASA-ResNet-26", img_size=32), batch_size=2, compare="timm")


@pytest.mark.parametrize("name", ["SASA-ResNet-26", "AA-ResNet-26"])
def test_cli_trains_evaluates_and_finetunes(tmp_path, name):
    out = tmp_path / "run"
    flags = ["--dataset", "synthetic", "--device", "cpu", "--batch-size", "32", "--model", name]
    flags += ["--set", "data.synthetic_size=96", "--set", "model.img_size=16", "--set", "train.compile=false"]
    r = run_vitkit("train", *flags, "--epochs", "1", "--out", str(out), "--no-progress")
    assert r.returncode == 0, r.stderr
    config = json.loads((out / "config.json").read_text())["model"]
    assert (config["name"], config["arch"], config["num_heads"]) == (name, name.split("-")[0].lower(), 8)
    assert "Training curves" in (out / "report.html").read_text()
    r = run_vitkit("eval", str(out), "--json", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["top1"] == pytest.approx(
        json.loads((out / "summary.json").read_text())["test_top1"]
    )
    r = run_vitkit("inspect", str(out))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    ft = tmp_path / "ft"  # to another size with a new head: AA's relative tables are resampled
    r = run_vitkit(
        "finetune", "--from", str(out), "--dataset", "synthetic", "--img-size", "24", "--steps", "2",
        "--batch-size", "16", "--set", "data.synthetic_size=64",
        "--device", "cpu", "--out", str(ft), "--no-progress", "--no-report", "--reset-head",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert name in r.stdout
    assert json.loads((ft / "config.json").read_text())["model"]["img_size"] == [24, 24]


def test_model_flag_moves_a_recipe_between_kinds():
    """`--model` on another kind's recipe: the ViT's options and the other CNNs' own options reset."""
    from vitkit.cli.train import model_overrides
    from vitkit.config import apply_overrides
    from vitkit.recipes import get_recipe

    sasa = apply_overrides(get_recipe("fashion-mnist-sasa"), ["model.sasa_window=5"])
    aa = apply_overrides(sasa, model_overrides("AA-ResNet-26")).model
    assert (aa.arch, aa.sasa_window, aa.num_heads, aa.img_size) == ("aa", 7, 8, (28, 28))
    plain = apply_overrides(sasa, model_overrides("ResNet-26")).model
    assert (plain.arch, plain.num_heads, plain.backbone) == ("resnet", 3, (1, 2, 4, 1))
    vit = apply_overrides(sasa, model_overrides("ViT-S/4")).model
    assert (vit.arch, vit.embed_dim, vit.sasa_window, vit.backbone) == ("vit", 384, 7, None)
    back = apply_overrides(get_recipe("fashion-mnist"), model_overrides("SASA-ResNet-26")).model
    assert (back.arch, back.pool, back.num_heads, back.in_chans) == ("sasa", "token", 8, 1)


def test_a_batch_norm_run_resumes_exactly(tmp_path):
    """Resuming a BN model restores its running statistics too: the same weights and buffers as an unbroken run."""
    import shutil

    from vitkit.convert.files import read_weights_file

    flags = ["--dataset", "synthetic", "--device", "cpu", "--batch-size", "16", "--model", "AA-ResNet-26"]
    flags += ["--set", "data.synthetic_size=64", "--set", "model.img_size=16", "--set", "train.compile=false"]
    flags += ["--steps", "6", "--checkpoint-every", "3", "--no-progress", "--no-report"]
    ref, run = tmp_path / "ref", tmp_path / "run"
    for out in (ref, run):
        r = run_vitkit("train", *flags, "--out", str(out))
        assert r.returncode == 0, r.stderr
    shutil.rmtree(run / "checkpoints" / "step-00000006")  # as if killed between steps 3 and 6
    (run / "model.safetensors").unlink()
    r = run_vitkit("train", *flags, "--resume", str(run))
    assert r.returncode == 0, r.stderr
    a, _ = read_weights_file(str(ref / "model.safetensors"))
    b, _ = read_weights_file(str(run / "model.safetensors"))
    assert a.keys() == b.keys() and any(k.endswith("running_var") for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs after resume"


def test_attention_stem_weights_fine_tune_to_grey_images_and_new_classes(tmp_path):
    """A SASA model with the attention stem loads into a 1-channel model with another head (was: an
    AttributeError on the stem's missing conv): its stem on a grey image equals the RGB stem on that image as
    R = G = B, and the new head starts at zero."""
    from vitkit.convert import load_pretrained, save_model_file

    rgb = create_model("SASA-ResNet-26", img_size=16, in_chans=3, num_classes=5, sasa_stem="attention").eval()
    perturb_(rgb, 0.1)
    save_model_file(str(tmp_path / "rgb.safetensors"), rgb)
    grey = create_model("SASA-ResNet-26", img_size=16, in_chans=1, num_classes=3, sasa_stem="attention")
    report = load_pretrained(grey, str(tmp_path / "rgb.safetensors"), reset_head=True)
    assert report.channels_adapted == (3, 1)
    x = torch.rand(2, 1, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(
            grey.eval().stem(x), rgb.stem(x.expand(-1, 3, -1, -1)), rtol=1e-5, atol=1e-5
        )
        assert grey(x).abs().max() == 0  # the zero head
