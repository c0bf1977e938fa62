"""The BiT ResNet-v2 baseline: every registered variant, timm parity, weights (timm files, official .npz), CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import vitkit
from helpers import check_cnn_trains, run_vitkit
from vitkit.convert import ConversionError, read_checkpoint
from vitkit.models import build_model, count_params, create_model, forward_macs, list_models, model_config
from vitkit.models.bit import BiTResNet

BIT = [n for n in list_models() if n.startswith("BiT-")]
# timm's resnetv2_<depth>x<width>_bit parameter counts (1000 classes)
TIMM_COUNTS = {"BiT-R50x1": 25_549_352, "BiT-R101x3": 387_934_888, "BiT-R152x4": 936_533_224}


def timm_bit(cfg):
    """timm's ResNetV2 as its resnetv2_*_bit models are built (the dev-only oracle)."""
    from vitkit.perf.benchmark import timm_twin

    return timm_twin(cfg)


@pytest.mark.parametrize("name,expected", TIMM_COUNTS.items())
def test_param_counts_match_timm(name, expected):
    model = create_model(name, device="meta")
    assert isinstance(model, BiTResNet)
    assert sum(p.numel() for p in model.parameters()) == expected == count_params(model.cfg)


@pytest.mark.parametrize("name", [n for n in BIT if n in ("BiT-R26x1", "BiT-R50x1")])
def test_registered_bit_tiny_trains(name):
    model = create_model(name, img_size=32, num_classes=5, in_chans=3, drop_rate=0.1, drop_path_rate=0.1)
    assert sum(p.numel() for p in model.parameters()) == count_params(model.cfg)
    check_cnn_trains(model, torch.randn(2, 3, 32, 32), 5)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 45, 61)).shape == (1, 5)  # a CNN: any size


@pytest.mark.parametrize(
    "name,kw",
    [("BiT-R26x1", dict(img_size=48, in_chans=1, num_classes=7)), ("BiT-R50x1", dict(img_size=40))],
)
def test_timm_parity(name, kw):
    ours = create_model(name, drop_path_rate=0.2, **kw)
    with torch.no_grad():  # every parameter away from its init, so that a swapped norm or conv shows
        for p in ours.parameters():
            p.add_(0.1 * torch.randn_like(p))
    theirs = timm_bit(ours.cfg)
    theirs.load_state_dict(ours.state_dict(), strict=True)  # the same names and shapes
    ours_dp = [b.drop_path.p for b in ours.blocks]
    theirs_dp = [getattr(b.drop_path, "drop_prob", 0.0) for s in theirs.stages for b in s.blocks]
    assert ours_dp == pytest.approx(theirs_dp)
    x = torch.randn(3, ours.cfg.in_chans, *ours.cfg.img_size)
    with torch.no_grad():
        a, b = ours.eval()(x), theirs.eval()(x)
        assert a.abs().max() > 1.0  # logits of a size that tests the sums
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
        feats = ours.forward_features(x)
        torch.testing.assert_close(
            ours.forward_head(feats, pre_logits=True), theirs.forward_head(feats, True)
        )


def test_forward_macs_count_every_conv():
    from torch.utils.flop_counter import FlopCounterMode

    for size in (32, 45):
        cfg = model_config("BiT-R26x1", img_size=size, num_classes=10)
        model = build_model(cfg).eval()
        with FlopCounterMode(display=False) as fc, torch.no_grad():
            model(torch.randn(1, 3, size, size))
        assert fc.get_total_flops() == 2 * forward_macs(cfg)


def test_models_command_lists_bit(capsys):
    from vitkit.cli import main

    assert main(["models", "--json"]) == 0
    rows = {r["model"]: r for r in json.loads(capsys.readouterr().out)}
    r50 = rows["BiT-R50x1"]
    assert (r50["arch"], r50["params"], r50["width"], r50["depth"], r50["heads"]) == (
        "bit",
        25_549_352,
        2048,
        50,
        None,
    )
    assert abs(r50["gmacs"] - 4.09) < 0.01


def test_cnn_has_no_tokens_and_vit_options_are_refused():
    cfg = model_config("BiT-R26x1", img_size=28)
    with pytest.raises(ValueError, match="no tokens"):
        _ = cfg.num_tokens
    with pytest.raises(ValueError, match=r"model\.pool='gap' is a ViT option"):
        model_config("BiT-R26x1", pool="gap")
    with pytest.raises(ValueError, match="that model is 'BiT-R26x2'"):
        vitkit.ModelConfig(name="BiT-R26x1", arch="bit", backbone=(2, 2, 2, 2), width_factor=2)
    with pytest.raises(ValueError, match="that model is 'BiT-R50x1'"):
        vitkit.ModelConfig(name="ViT-fmnist/4", arch="bit", backbone=(3, 4, 6, 3))


def test_batchnorm_resnet_is_not_taken_for_bit():
    from vitkit.convert.bit import from_bit_state

    state = create_model("BiT-R26x1", img_size=32).state_dict()
    state["stages.0.blocks.0.norm1.running_mean"] = torch.zeros(64)
    with pytest.raises(ConversionError, match="BatchNorm"):
        from_bit_state(state, "resnetv2_50.safetensors")
    del state["stages.0.blocks.0.norm1.running_mean"]
    del state["stages.1.blocks.1.conv1.weight"], state["stages.1.blocks.1.norm1.weight"]
    state = {k: v for k, v in state.items() if not k.startswith("stages.1.blocks.0.")}
    with pytest.raises(ConversionError, match=r"stage 1's blocks are \[1\]"):
        from_bit_state(state, "gappy.safetensors")


def test_export_onnx_and_fast_path(tmp_path):
    pytest.importorskip("onnxruntime")
    from vitkit.convert import check_onnx, export_onnx
    from vitkit.perf.fast import fast_inference

    model = create_model("BiT-R26x1", img_size=32, in_chans=1, num_classes=10).eval()
    path = export_onnx(model, str(tmp_path / "bit.onnx"))
    assert max(check_onnx(path, model, (1, 3)).values()) < 1e-4
    x = torch.randn(2, 1, 32, 32)
    fast, info = fast_inference(
        model, x
    )  # auto on the CPU: fp32 ONNX for a CNN (int8 is for matrix products)
    assert (info["method"], info["dtype"]) == ("onnx", "fp32")
    with torch.no_grad():
        torch.testing.assert_close(fast(x), model(x), rtol=0, atol=1e-4)


def test_wrong_kind_and_bad_stored_configs_name_the_file(tmp_path):
    from safetensors.torch import save_file

    from vitkit.config import to_dict

    path = tmp_path / "bit.safetensors"
    save_file(create_model("BiT-R26x1", img_size=32).state_dict(), str(path))
    with pytest.raises(ConversionError, match=r"bit\.safetensors holds a BIT .*'ViT-S/16' is a VIT"):
        vitkit.create_model("ViT-S/16", pretrained=str(path))
    cfg = to_dict(model_config("BiT-R26x1"))
    cfg["pool"] = "gap"  # a ViT option in a BiT's stored config
    bad = tmp_path / "bad.safetensors"
    save_file({"x": torch.zeros(1)}, str(bad), metadata={"format": "vitkit", "config": json.dumps(cfg)})
    with pytest.raises(
        ValueError, match=r"bad\.safetensors metadata 'config': model\.pool='gap' is a ViT option"
    ):
        read_checkpoint(str(bad))


def test_bad_configs_are_named():
    with pytest.raises(ValueError, match="depth one of 26, 50, 101, 152"):
        model_config("BiT-R34x1")
    with pytest.raises(ValueError, match=r"model\.backbone"):
        vitkit.ModelConfig(arch="bit")
    with pytest.raises(ValueError, match="width_factor"):
        vitkit.ModelConfig(width_factor=2)
    with pytest.raises(ValueError, match=r"model\.arch='resnet'"):
        vitkit.ModelConfig(arch="resnet")
    with pytest.raises(ValueError, match="fixes width_factor"):
        model_config("BiT-R50x1", width_factor=2)
    with pytest.raises(ValueError, match=r"expected images of shape \(B, 1, H, W\)"):
        create_model("BiT-R26x1", in_chans=1, img_size=32)(torch.randn(1, 3, 32, 32))


def official_arrays(model: torch.nn.Module) -> dict[str, np.ndarray]:
    """A BiT model's weights under the official .npz names and layouts (kernels HWIO)."""
    sd = {k: v.detach() for k, v in model.state_dict().items()}
    hwio = lambda w: w.permute(2, 3, 1, 0).numpy() if w.ndim == 4 else w.numpy()  # noqa: E731
    out = {
        "resnet/root_block/standardized_conv2d/kernel": hwio(sd["stem.conv.weight"]),
        "resnet/group_norm/gamma": hwio(sd["norm.weight"]),
        "resnet/group_norm/beta": hwio(sd["norm.bias"]),
        "resnet/head/conv2d/kernel": hwio(sd["head.fc.weight"]),
        "resnet/head/conv2d/bias": hwio(sd["head.fc.bias"]),
    }
    for i, stage in enumerate(model.stages):
        for j, _ in enumerate(stage.blocks):
            src, dst = f"resnet/block{i + 1}/unit{j + 1:02d}/", f"stages.{i}.blocks.{j}."
            for n, part in enumerate("abc", start=1):
                out[f"{src}{part}/standardized_conv2d/kernel"] = hwio(sd[f"{dst}conv{n}.weight"])
                out[f"{src}{part}/group_norm/gamma"] = hwio(sd[f"{dst}norm{n}.weight"])
                out[f"{src}{part}/group_norm/beta"] = hwio(sd[f"{dst}norm{n}.bias"])
            if f"{dst}downsample.conv.weight" in sd:
                out[f"{src}a/proj/standardized_conv2d/kernel"] = hwio(sd[f"{dst}downsample.conv.weight"])
    return out


def test_official_npz_loads_as_timm_reads_it(tmp_path):
    src = create_model("BiT-R26x1", img_size=32, in_chans=3, num_classes=6).eval()
    with torch.no_grad():
        for p in src.parameters():  # non-trivial norms and head
            p.add_(0.1 * torch.randn_like(p))
    path = tmp_path / "BiT-M-R26x1.npz"
    np.savez(path, **official_arrays(src))
    oracle = timm_bit(src.cfg).eval()
    oracle.load_pretrained(str(path))  # timm's own reader of the official files
    model = vitkit.create_model(pretrained=str(path))
    assert model.cfg.name == "BiT-R26x1" and model.cfg.num_classes == 6
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), oracle(x), rtol=0, atol=1e-5)
        torch.testing.assert_close(model(x), src(x), rtol=0, atol=1e-5)
    arrays = official_arrays(src)
    del arrays["resnet/block2/unit01/b/group_norm/gamma"]
    np.savez(tmp_path / "broken.npz", **arrays)
    with pytest.raises(ConversionError, match="block2/unit01/b/group_norm/gamma"):
        read_checkpoint(str(tmp_path / "broken.npz"))


def test_timm_file_head_reset_and_grey_input(tmp_path):
    from safetensors.torch import save_file

    theirs = timm_bit(model_config("BiT-R26x1", num_classes=4)).eval()
    path = tmp_path / "resnetv2_26x1_bit.safetensors"
    save_file({f"module.{k}": v for k, v in theirs.state_dict().items()}, str(path))  # a DDP-saved file
    ckpt = read_checkpoint(str(path))
    assert (ckpt.format, ckpt.config.arch, ckpt.config.backbone) == ("timm", "bit", (2, 2, 2, 2))
    assert ckpt.meta["mean"] == [0.5] * 3
    model = vitkit.create_model(pretrained=str(path))
    x = torch.randn(2, 3, 40, 40)
    with torch.no_grad():
        torch.testing.assert_close(model(x), theirs(x), rtol=0, atol=1e-5)
    grey = vitkit.create_model(pretrained=str(path), in_chans=1, num_classes=3)
    assert grey.head.fc.weight.abs().sum() == 0 and grey.cfg.head_init == "zero"
    w = theirs.stem.conv.weight.detach()
    torch.testing.assert_close(grey.stem.conv.weight.detach(), w.sum(1, keepdim=True))
    with pytest.raises(ConversionError, match=r"head\.fc\.weight"):
        vitkit.convert.load_pretrained(create_model("BiT-R26x1", num_classes=3), ckpt, reset_head=False)


def test_benchmark_compares_with_timm():
    from vitkit.perf.benchmark import run_benchmark

    cfg = model_config("BiT-R26x1", img_size=32, num_classes=10)
    res = run_benchmark(cfg, batch_size=2, compare="timm", warmup=1, repeats=1, min_seconds=0.01)
    assert res["max_logit_diff_vs_timm"] <= 1e-5
    assert res["vitkit_img_s"] > 0 and res["timm_img_s"] > 0
    assert res["gflops_per_image"] == pytest.approx(2 * forward_macs(cfg) / 1e9)


def test_cli_trains_evaluates_and_reports_a_bit_run(tmp_path):
    out = tmp_path / "run"
    flags = ["--dataset", "synthetic", "--device", "cpu", "--batch-size", "32", "--model", "BiT-R26x1"]
    flags += [
        "--set",
        "data.synthetic_size=128",
        "--set",
        "model.img_size=16",
        "--set",
        "train.compile=false",
    ]
    r = run_vitkit("train", *flags, "--epochs", "1", "--out", str(out), "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "BiT-R26x1" in r.stdout
    config = json.loads((out / "config.json").read_text())["model"]
    assert (config["arch"], config["backbone"], config["width_factor"]) == ("bit", [2, 2, 2, 2], 1)
    html = (out / "report.html").read_text()
    assert "Training curves" in html and "BiT ResNet-v2" in html
    r = run_vitkit("eval", str(out), "--json", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert json.loads(r.stdout)["top1"] == pytest.approx(summary["test_top1"])
    r = run_vitkit("inspect", str(out))
    assert r.returncode == 2 and "is a ResNet" in r.stderr and "Traceback" not in r.stderr
    from PIL import Image

    Image.new("L", (20, 24), 128).save(tmp_path / "grey.png")
    r = run_vitkit("predict", str(out), str(tmp_path / "grey.png"), "--topk", "2", "--json")
    assert r.returncode == 0, r.stderr
    assert len(json.loads(r.stdout)[0]["predictions"]) == 2
    ft = tmp_path / "ft"  # fine-tuned from the run at another size, with a new head
    r = run_vitkit(
        "finetune", "--from", str(out), "--dataset", "synthetic", "--img-size", "24", "--steps", "2",
        "--batch-size", "16", "--set", "data.synthetic_size=64",
        "--device", "cpu", "--out", str(ft), "--no-progress", "--no-report", "--reset-head",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "BiT-R26x1" in r.stdout and "new zero-initialised head" in r.stdout
    hr = tmp_path / "hyperrule"  # BiT's fine-tuning rule: its size rule applied, the command's flags winning
    r = run_vitkit(
        "finetune", "--recipe", "bit-hyperrule", "--from", str(out), "--dataset", "synthetic", "--img-size", "24",
        "--steps", "2", "--batch-size", "16", "--micro-batch-size", "8", "--set", "data.synthetic_size=64",
        "--set", "optim.warmup_steps=1",
        "--device", "cpu", "--out", str(hr), "--no-progress", "--no-report",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    config = json.loads((hr / "config.json").read_text())
    assert config["recipe"] == "bit-hyperrule" and config["train"]["steps"] == 2
    assert (config["optim"]["schedule"], config["optim"]["warmup_steps"]) == ("step", 1)
    opt, data = config["optim"], config["data"]  # the rule for under 20k images at 24 px (<= 128: 160 -> 128)
    assert opt["decay_at"] == [0.4, 0.6, 0.8] and data["mixup_alpha"] == 0
    assert data["rrc_scale_min"] == pytest.approx(0.64) and data["rrc_ratio"] == [1, 1]


def test_compiling_bit_on_the_cpu_warns(monkeypatch, caplog):
    import dataclasses

    from helpers import tiny_run
    from vitkit.data.datasets import load_dataset
    from vitkit.train import distributed as D
    from vitkit.train.loop import resolve_for_data
    from vitkit.train.trainer import Trainer

    monkeypatch.setattr(Trainer, "_compiled", lambda self, module: module)  # the warning, not the compilation
    cfg = tiny_run(compile=True)
    cfg = dataclasses.replace(cfg, model=model_config("BiT-R26x1", img_size=16, num_classes=10))
    splits = load_dataset(cfg.data, seed=0)
    with caplog.at_level("WARNING"):
        Trainer(resolve_for_data(cfg, splits), None, splits, D.DistInfo(), torch.device("cpu"))
    assert any("--set train.compile=false" in r.getMessage() for r in caplog.records)
