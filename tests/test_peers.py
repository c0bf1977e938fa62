"""Export to timm and transformers folders: each peer loads the folder with its own code and computes vitkit's
logits; vitkit reads the folders back."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import vitkit
from vitkit.cli import main
from vitkit.config import ModelConfig
from vitkit.convert import ConversionError, model_from_source, read_checkpoint
from vitkit.convert.peers import check_peer, hf_export, load_peer, save_peer_folder, timm_export
from vitkit.models import build_model

CLASSES = ["t-shirt", "trouser", "bag"]


def _model(**kw) -> torch.nn.Module:
    """A tiny ViT with every parameter drawn at std 0.2 (no zero head or unit norms to hide a wrong mapping)."""
    base = dict(name="t", img_size=(16, 24), patch_size=4, in_chans=1, num_classes=3, embed_dim=32, depth=2,
                num_heads=2, mlp_dim=64)  # fmt: skip
    torch.manual_seed(0)
    model = build_model(ModelConfig(**{**base, **kw})).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    return model


TIMM_CASES = {
    "token-learn": {},
    "gap-sincos2d": dict(pool="gap", posemb="sincos2d"),
    "token-learn2d-rgb-square": dict(posemb="learn2d", in_chans=3, img_size=(16, 16)),
    "none-tanh-no-qkv-bias": dict(posemb="none", mlp_act="gelu_tanh", qkv_bias=False),
    "token-sincos2d-odd-mlp": dict(posemb="sincos2d", mlp_dim=50),
}


@pytest.mark.parametrize("case", TIMM_CASES)
def test_timm_loads_the_export_and_computes_the_same_logits(case, tmp_path):
    pytest.importorskip("timm")
    model = _model(**TIMM_CASES[case])
    save_peer_folder(str(tmp_path), "timm", model, {"classes": CLASSES})
    assert check_peer(str(tmp_path), "timm", model) < 1e-5
    peer = load_peer(str(tmp_path), "timm")
    c = model.cfg
    assert peer.pretrained_cfg["label_names"] == CLASSES
    assert tuple(peer.pretrained_cfg["input_size"]) == (c.in_chans, *c.img_size)
    assert list(peer.pretrained_cfg["mean"]) == list(model.pretrained_cfg["mean"])
    assert peer.global_pool == ("token" if c.pool == "token" else "avg")
    assert sum(p.numel() for p in peer.parameters()) >= sum(p.numel() for p in model.parameters())


def test_a_dynamic_size_timm_export_resamples_as_vitkit_at_another_size(tmp_path):
    pytest.importorskip("timm")
    model = _model(dynamic_img_size=True)
    save_peer_folder(str(tmp_path), "timm", model)
    peer = load_peer(str(tmp_path), "timm")
    x = torch.randn(2, 1, 20, 32)  # another grid (5 x 8): both resample the table bicubically
    with torch.no_grad():
        assert torch.allclose(peer(x), model(x), atol=1e-5)


HF_CASES = {
    "learn": {},
    "learn2d-rgb-square": dict(posemb="learn2d", in_chans=3, img_size=(16, 16)),
    "sincos2d-tanh": dict(posemb="sincos2d", mlp_act="gelu_tanh"),
    "none-no-qkv-bias-eps12": dict(posemb="none", qkv_bias=False, norm_eps=1e-12),
}


@pytest.mark.parametrize("case", HF_CASES)
def test_transformers_loads_the_export_and_computes_the_same_logits(case, tmp_path):
    pytest.importorskip("transformers")
    model = _model(**HF_CASES[case])
    save_peer_folder(str(tmp_path), "hf", model, {"classes": CLASSES})
    assert check_peer(str(tmp_path), "hf", model) < 1e-5
    peer = load_peer(str(tmp_path), "hf")
    assert [peer.config.id2label[i] for i in range(3)] == CLASSES
    assert peer.config.layer_norm_eps == model.cfg.norm_eps


# token-learn: a 4x6 grid and the class token's row are 25 = 5^2 rows, which a count alone would take for a 5x5
# grid without one; token-sincos2d: 24 rows without a class-token row (timm's no_embed_class)
@pytest.mark.parametrize(("fmt", "kw"), [("timm", TIMM_CASES["gap-sincos2d"]), ("hf", HF_CASES["sincos2d-tanh"]),
                                         ("timm", TIMM_CASES["none-tanh-no-qkv-bias"]),
                                         ("timm", TIMM_CASES["token-learn"]),
                                         ("timm", TIMM_CASES["token-sincos2d-odd-mlp"])])  # fmt: skip
def test_vitkit_reads_its_exports_back(fmt, kw, tmp_path):
    model = _model(**kw)
    save_peer_folder(str(tmp_path), fmt, model, {"classes": CLASSES, "mean": [0.3], "std": [0.4]})
    ckpt = read_checkpoint(str(tmp_path))
    assert ckpt.format == fmt and ckpt.meta["classes"] == CLASSES and ckpt.meta["mean"] == [0.3]
    back = model_from_source(ckpt)
    assert back.cfg.mlp_act == model.cfg.mlp_act and back.cfg.pool == model.cfg.pool
    x = torch.randn(3, 1, 16, 24)
    with torch.no_grad():
        assert torch.allclose(back(x), model(x), atol=1e-5)


def test_what_a_peer_cannot_compute_is_refused_with_the_reason(tmp_path, caplog):
    cases = [
        ("timm", _model(posemb="relative"), "1-D relative attention"),
        ("timm", _model(representation_size=16), "no pre-logits layer"),
        ("hf", _model(pool="gap"), "class token only (this model: GAP); --format timm keeps GAP"),
        ("hf", _model(num_classes=0), "no head (num_classes=0)"),
        ("timm", vitkit.create_model("BiT-R26x1", img_size=32, num_classes=3), "not a ViT"),
        ("hf", _model(backbone=(1,), img_size=(32, 32), patch_size=2), "hybrid"),
    ]
    for fmt, model, why in cases:
        with pytest.raises(ConversionError, match="cannot export to") as e:
            save_peer_folder(str(tmp_path / "x"), fmt, model)
        assert why in str(e.value)
    assert not (tmp_path / "x").exists()  # nothing written
    with caplog.at_level("WARNING"):
        timm_export(_model(norm_eps=1e-5))
    assert "eps 1e-6, this model with 1e-05" in caplog.text


def test_the_configs_say_what_the_peers_need(tmp_path):
    model = _model(posemb="learn2d", dynamic_img_size=True)
    config, state = timm_export(model, {"classes": CLASSES})
    args = config["model_args"]
    assert args["no_embed_class"] and args["fc_norm"] is False and args["dynamic_img_size"]
    assert state["pos_embed"].shape == (1, 4 * 6, 32) and "pos_embed_row" not in state
    assert config["pretrained_cfg"]["fixed_input_size"] is False
    assert json.loads(json.dumps(config)) == config  # plain JSON
    config, processor, state = hf_export(_model(img_size=(16, 16), in_chans=3))
    assert config["image_size"] == 16 and config["id2label"]["2"] == "LABEL_2"
    assert processor["image_processor_type"] == "BitImageProcessor" and processor["do_convert_rgb"] is True
    assert state["vit.embeddings.position_embeddings"].shape == (1, 17, 32)
    _, processor, _ = hf_export(_model())
    assert processor["image_processor_type"] == "ViTImageProcessor"  # non-square: resized, not cropped
    assert processor["size"] == {"height": 16, "width": 24}


def test_the_transformers_processor_preprocesses_as_vitkit_predict(tmp_path):
    pytest.importorskip("transformers")
    from PIL import Image
    from transformers import AutoImageProcessor

    from vitkit.data.imagefolder import load_image
    from vitkit.data.transforms import normalize

    model = _model(img_size=(16, 16), in_chans=3)
    save_peer_folder(str(tmp_path), "hf", model, {"mean": [0.4, 0.5, 0.6], "std": [0.2, 0.3, 0.25]})
    rng = np.random.default_rng(0)
    processor = AutoImageProcessor.from_pretrained(str(tmp_path), backend="pil")
    for shape in ((32, 48, 3), (33, 47, 3), (47, 33, 4)):  # exact and fractional scales, portrait RGBA
        path = tmp_path / "photo.png"
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(path)
        with Image.open(path) as im:
            theirs = processor(im, return_tensors="pt")["pixel_values"]
        ours = normalize(load_image(str(path), (16, 16), 3)[None].float(), (0.4, 0.5, 0.6), (0.2, 0.3, 0.25))
        assert theirs.shape == ours.shape == (1, 3, 16, 16)
        if shape[2] == 3:  # (vitkit lays an RGBA image on white, transformers drops the alpha)
            assert torch.allclose(theirs, ours, atol=1e-5), shape


def test_timm_preprocesses_as_vitkit_predict(tmp_path):
    pytest.importorskip("timm")
    import timm.data
    from PIL import Image

    from vitkit.data.imagefolder import load_image
    from vitkit.data.transforms import normalize

    model = _model(img_size=(16, 16), in_chans=3)
    save_peer_folder(str(tmp_path), "timm", model, {"mean": [0.4, 0.5, 0.6], "std": [0.2, 0.3, 0.25]})
    peer = load_peer(str(tmp_path), "timm")
    tf = timm.data.create_transform(**timm.data.resolve_data_config({}, model=peer))
    rng = np.random.default_rng(1)
    for shape in ((33, 47, 3), (47, 33, 3)):
        path = tmp_path / "photo.png"
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(path)
        with Image.open(path) as im:
            theirs = tf(im.convert("RGB"))[None]
        ours = normalize(load_image(str(path), (16, 16), 3)[None].float(), (0.4, 0.5, 0.6), (0.2, 0.3, 0.25))
        assert torch.allclose(theirs, ours, atol=1e-5), shape


def test_a_non_square_transformers_export_takes_any_image_mode(tmp_path, caplog):
    pytest.importorskip("transformers")
    from PIL import Image
    from transformers import AutoImageProcessor

    with caplog.at_level("WARNING"):
        save_peer_folder(str(tmp_path), "hf", _model(in_chans=3))  # 16x24
    assert "the aspect ratio is not kept" in caplog.text
    processor = AutoImageProcessor.from_pretrained(str(tmp_path))
    for mode in ("RGBA", "L", "RGB"):
        x = processor(Image.new(mode, (30, 20)), return_tensors="pt")["pixel_values"]
        assert x.shape == (1, 3, 16, 24), mode


def test_crop_pct_of_the_weights_reaches_the_transformers_processor():
    model = _model(img_size=(16, 16), in_chans=3)
    model.preprocess = {"crop_pct": 0.875, "interpolation": "bicubic"}
    _, processor, _ = hf_export(model)
    timm_config, _ = timm_export(model)
    assert processor["size"] == {"shortest_edge": 18} and processor["resample"] == 3  # floor(16 / 0.875)
    assert timm_config["pretrained_cfg"]["crop_pct"] == 0.875


def test_cli_exports_a_run_to_both_peers(tmp_path, capsys):
    pytest.importorskip("timm")
    pytest.importorskip("transformers")
    from helpers import tiny_run
    from vitkit.train.loop import train

    run = tmp_path / "run"
    train(tiny_run(epochs=1), str(run))
    capsys.readouterr()
    _bench_scores_the_run_in_both_peers(run)
    assert main(["export", str(run), "--format", "timm"]) == 0
    out = capsys.readouterr().out
    assert "timm vs vitkit max |diff|" in out and "local-dir:" in out
    folder = run / "model-export-timm"
    assert json.loads((folder / "config.json").read_text())["pretrained_cfg"]["label_names"][0] == "class0"
    hf = tmp_path / "hf"
    assert main(["export", str(run), "--format", "hf", "--out", str(hf)]) == 0
    assert "transformers vs vitkit max |diff|" in capsys.readouterr().out
    assert main(["export", str(run), "--format", "hf", "--out", str(hf)]) == 2  # it holds an export
    assert "pass --overwrite" in capsys.readouterr().err
    assert main(["export", str(run), "--format", "hf", "--out", str(hf), "--overwrite", "--no-check"]) == 0
    assert main(["export", str(run), "--format", "timm", "--out", str(run), "--overwrite"]) == 2
    assert "is the source being exported" in capsys.readouterr().err
    (tmp_path / "f").write_text("x")
    assert main(["export", str(run), "--format", "timm", "--out", str(tmp_path / "f")]) == 2
    assert "is a file; --format timm writes a folder" in capsys.readouterr().err


def _bench_scores_the_run_in_both_peers(run) -> None:
    """bench/peer_export.py: each peer, with its own preprocessing, predicts as vitkit."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "bench" / "peer_export.py"
    r = subprocess.run([sys.executable, str(script), str(run), "--limit", "40", "--json"], capture_output=True,
                       text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))  # fmt: skip
    assert r.returncode == 0, r.stderr
    rows = {row["library"]: row for row in json.loads(r.stdout)["rows"]}
    assert set(rows) == {"vitkit", "timm", "transformers"}
    for lib in ("timm", "transformers"):
        assert rows[lib]["agree"] == 1.0 and rows[lib]["top1"] == rows["vitkit"]["top1"], rows
        assert rows[lib]["max_logit_diff"] < 1e-4


def test_predict_on_converted_timm_weights_preprocesses_and_scores_as_timm(tmp_path, capsys):
    pytest.importorskip("timm")
    import timm.data
    from PIL import Image

    model = _model(img_size=(16, 16), in_chans=3)
    model.preprocess = {"crop_pct": 0.875, "interpolation": "bicubic", "mean": [0.4, 0.5, 0.6],
                        "std": [0.2, 0.3, 0.25], "classes": CLASSES}  # fmt: skip
    save_peer_folder(str(tmp_path / "hub"), "timm", model)  # as a timm hub folder with ImageNet-style crop
    assert main(["convert", str(tmp_path / "hub"), "--out", str(tmp_path / "run")]) == 0
    data = json.loads((tmp_path / "run" / "data.json").read_text())
    assert (data["crop_pct"], data["interpolation"]) == (0.875, "bicubic")
    rng = np.random.default_rng(2)
    paths = []
    for i, shape in enumerate(((33, 47, 3), (50, 31, 3))):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(paths[-1])
    capsys.readouterr()
    assert main(["predict", str(tmp_path / "run"), *paths, "--topk", "3", "--json"]) == 0
    ours = json.loads(capsys.readouterr().out)
    peer = load_peer(str(tmp_path / "hub"), "timm")
    tf = timm.data.create_transform(**timm.data.resolve_data_config({}, model=peer))
    with torch.no_grad():
        probs = peer(torch.stack([tf(Image.open(p).convert("RGB")) for p in paths])).softmax(-1)
    for got, p in zip(ours, probs):
        assert [d["class"] for d in got["predictions"]] == [CLASSES[i] for i in p.argsort(descending=True)]
        assert [d["prob"] for d in got["predictions"]] == pytest.approx(
            p.sort(descending=True).values.tolist(), abs=1e-5
        )


def test_a_runs_image_settings_are_checked_and_a_hub_configs_crop_too(tmp_path, capsys):
    from PIL import Image

    model = _model(img_size=(16, 16), in_chans=3)
    save_peer_folder(str(tmp_path / "hub"), "timm", model)
    assert main(["convert", str(tmp_path / "hub"), "--out", str(tmp_path / "run")]) == 0
    Image.new("RGB", (20, 20)).save(tmp_path / "x.png")
    data_json = tmp_path / "run" / "data.json"
    for bad, says in (([0.9], "crop_pct=[0.9] must be a number in (0, 1]"), (0, "crop_pct=0 must be a number"),
                      ("lanczos3", None)):  # fmt: skip
        data = json.loads(data_json.read_text())
        data["crop_pct"], data["interpolation"] = (bad, "bilinear") if says else (1.0, bad)
        data_json.write_text(json.dumps(data))
        capsys.readouterr()
        assert main(["predict", str(tmp_path / "run"), str(tmp_path / "x.png")]) == 2
        err = capsys.readouterr().err
        assert "data.json: " in err and (says or "interpolation='lanczos3' must be one of") in err, err
    config = json.loads((tmp_path / "hub" / "config.json").read_text())
    config["pretrained_cfg"]["crop_pct"] = 1.2
    (tmp_path / "hub" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConversionError, match=r"crop_pct=1\.2 must lie in \(0, 1\]"):
        read_checkpoint(str(tmp_path / "hub"))
