"""Export (ONNX under onnxruntime, safetensors), `vitkit convert` and `vitkit finetune` end to end."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch

import vitkit
from helpers import tiny_run
from vitkit.cli import main
from vitkit.convert import check_onnx, export_onnx, read_checkpoint


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A tiny ViT trained for one epoch on the synthetic dataset (16x16 grey, patch 4)."""
    from vitkit.train.loop import train

    out = tmp_path_factory.mktemp("export") / "run"
    train(tiny_run(epochs=1), str(out))
    return out


def test_onnx_dynamic_batch_matches_pytorch(tmp_path):
    pytest.importorskip("onnxruntime")
    model = vitkit.create_model(
        "ViT-Ti/16", img_size=(32, 48), embed_dim=32, depth=2, num_heads=2, mlp_dim=64
    )
    model.eval()
    path = export_onnx(model, str(tmp_path / "m.onnx"))
    diffs = check_onnx(path, model, (1, 7))
    assert set(diffs) == {1, 7} and max(diffs.values()) < 1e-4, diffs

    import onnx

    dims = onnx.load(path).graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [3, 32, 48]


def test_onnx_export_leaves_the_callers_model_as_it_was(tmp_path):
    """Was: export_onnx set the model given to eval mode and moved it to the CPU (a GPU model too)."""
    pytest.importorskip("onnxruntime")
    model = vitkit.create_model("ViT-Ti/16", img_size=32, embed_dim=32, depth=1, num_heads=2, mlp_dim=64)
    model.train()
    path = export_onnx(model, str(tmp_path / "t.onnx"))
    assert model.training
    assert max(check_onnx(path, model.eval(), (2,)).values()) < 1e-4  # the eval-mode function was exported


def test_a_dynamic_img_size_model_exports_at_its_size_with_a_warning(tmp_path, caplog):
    pytest.importorskip("onnxruntime")
    model = vitkit.create_model("ViT-Ti/16", img_size=32, embed_dim=32, depth=1, num_heads=2, mlp_dim=64,
                                dynamic_img_size=True).eval()  # fmt: skip
    with caplog.at_level("WARNING"):
        path = export_onnx(model, str(tmp_path / "d.onnx"))
    assert "exported at 32x32 only (the model's dynamic_img_size is not exported)" in caplog.text
    assert max(check_onnx(path, model, (2,)).values()) < 1e-4


def test_cli_export_onnx_at_new_size(run_dir, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    out = tmp_path / "m32.onnx"
    assert main(["export", str(run_dir), "--format", "onnx", "--img-size", "32", "--out", str(out)]) == 0
    line = capsys.readouterr().out
    assert "batch 1 and 7" in line and out.exists()
    import onnxruntime as ort

    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).normal(size=(7, 1, 32, 32)).astype(np.float32)
    ref = vitkit.model_from_source(run_dir, img_size=32)(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(sess.run(None, {"images": x})[0], ref, rtol=0, atol=1e-4)


def test_cli_export_refuses_an_opset_it_cannot_write_and_leaves_no_file(
    run_dir, tmp_path, capsys, monkeypatch
):
    """Was: opset 5 printed a traceback, wrote opset 18 and reported 5; opset 99 left a file onnxruntime refused."""
    pytest.importorskip("onnxruntime")
    import vitkit.convert as convert

    for opset, says in [
        (5, "could not convert the model to ONNX opset 5 (it stays at 18)"),
        (99, "knows opsets 1 to"),
    ]:
        out = tmp_path / f"m{opset}.onnx"
        assert main(["export", str(run_dir), "--opset", str(opset), "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert says in err and "Traceback" not in err and not out.exists(), err
        assert not list(tmp_path.glob(".tmp-*"))

    from vitkit.convert.export import OnnxLoadError

    def unloadable(path, *a, **kw):
        raise OnnxLoadError(f"{path}: onnxruntime cannot load it: InvalidGraph")

    monkeypatch.setattr(convert, "check_onnx", unloadable)
    out = tmp_path / "m.onnx"
    assert main(["export", str(run_dir), "--out", str(out)]) == 2
    assert "cannot load it" in capsys.readouterr().err and not out.exists()

    def no_runtime(path, *a, **kw):  # another failure of the check keeps the (good) file
        raise convert.ConversionError(
            "checking an ONNX export needs onnxruntime: pip install 'vitkit[export]'"
        )

    monkeypatch.setattr(convert, "check_onnx", no_runtime)
    assert main(["export", str(run_dir), "--out", str(out)]) == 2
    assert "needs onnxruntime" in capsys.readouterr().err and out.exists()


def test_cli_export_format_follows_the_out_name_and_refuses_a_mismatch(run_dir, tmp_path, capsys):
    assert main(["export", str(run_dir), "--out", str(tmp_path / "m.safetensors")]) == 0  # by the name
    assert read_checkpoint(str(tmp_path / "m.safetensors")).format == "vitkit"
    assert main(["export", str(run_dir), "--format", "safetensors", "--out", str(tmp_path / "m.onnx")]) == 2
    assert "--format safetensors with --out" in capsys.readouterr().err and not (tmp_path / "m.onnx").exists()


def test_cli_export_default_out_leaves_the_runs_weights(run_dir, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    before = (run / "model.safetensors").read_bytes()
    assert main(["export", str(run), "--format", "safetensors"]) == 0
    assert (run / "model.safetensors").read_bytes() == before
    assert read_checkpoint(str(run / "model-export.safetensors")).format == "vitkit"


def test_cli_export_never_writes_over_its_source_nor_a_checkpoint(run_dir, tmp_path, capsys, monkeypatch):
    """Was: `export vit.safetensors --format safetensors` named its output after the source and replaced it, and
    `--format timm --out RUN/checkpoints/best` replaced the checkpoint's weights (no config.json there to stop it)."""
    monkeypatch.chdir(tmp_path)
    assert main(["export", str(run_dir), "--format", "safetensors", "--out", "vit.safetensors"]) == 0
    source = (tmp_path / "vit.safetensors").read_bytes()
    assert (
        main(["export", "vit.safetensors", "--format", "safetensors"]) == 0
    )  # the default name: not the source
    assert (tmp_path / "vit.safetensors").read_bytes() == source
    assert read_checkpoint(str(tmp_path / "vit-vitkit.safetensors")).format == "vitkit"
    assert main(["export", str(run_dir), "--format", "timm", "--out", "t", "--no-check"]) == 0
    for src, fmt in (("vit.safetensors", "safetensors"), ("t", "timm")):
        assert main(["export", src, "--format", fmt, "--out", src, "--overwrite", "--no-check"]) == 2
        assert "is the source being exported" in capsys.readouterr().err
    assert (tmp_path / "vit.safetensors").read_bytes() == source
    ckpt = tmp_path / "checkpoints" / "best"  # a training checkpoint: its manifest vouches for its files
    ckpt.mkdir(parents=True)
    (ckpt / "manifest.json").write_text("{}")
    (ckpt / "model.safetensors").write_bytes(b"weights")
    for fmt, out in (("timm", ckpt), ("hf", ckpt), ("safetensors", ckpt / "model.safetensors")):
        assert main(["export", str(run_dir), "--format", fmt, "--out", str(out), "--overwrite"]) == 2
        assert "is a training checkpoint" in capsys.readouterr().err
    assert (ckpt / "model.safetensors").read_bytes() == b"weights" and sorted(os.listdir(ckpt)) == [
        "manifest.json",
        "model.safetensors",
    ]


def test_cli_export_never_writes_over_a_runs_files_nor_another_file_without_overwrite(
    run_dir, tmp_path, capsys
):
    """Was: `--out RUN/model.safetensors` replaced the run's weights (its summary's SHA-256 then refused them),
    `--out RUN/config.json` wrote ONNX over its config, and any other file was replaced silently."""
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    files = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    for name, fmt in (
        ("model.safetensors", "safetensors"),
        ("config.json", "onnx"),
        ("summary.json", "onnx"),
    ):
        for extra in ([], ["--overwrite"]):
            assert main(["export", str(run), "--format", fmt, "--out", str(run / name), *extra]) == 2
            assert "one of a run folder's own files" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == files
    other = tmp_path / "notes.safetensors"
    other.write_bytes(b"mine")
    assert main(["export", str(run), "--out", str(other)]) == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err and other.read_bytes() == b"mine"
    assert main(["export", str(run), "--out", str(other), "--overwrite"]) == 0
    assert read_checkpoint(str(other)).format == "vitkit"
    for _ in range(2):  # the default name is the export's own: replaced
        assert main(["export", str(run), "--format", "safetensors"]) == 0


def test_cli_export_safetensors_is_self_describing(run_dir, tmp_path, capsys):
    out = tmp_path / "m.safetensors"
    assert (
        main(["export", str(run_dir), "--format", "safetensors", "--img-size", "24", "--out", str(out)]) == 0
    )
    ckpt = read_checkpoint(out)
    assert ckpt.format == "vitkit" and ckpt.config.img_size == (24, 24) and "mean" in ckpt.meta
    model = vitkit.model_from_source(out)
    assert model.pos_embed.shape == (1, 1 + 36, 32)


def test_eval_reads_an_exported_files_own_config(run_dir, tmp_path, capsys):
    """`vitkit eval RUN/model-export-24.safetensors` builds the 24-px model its metadata describes."""
    from safetensors.torch import save_file

    from vitkit.cli.common import load_run

    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    assert main(["export", str(run), "--format", "safetensors", "--img-size", "24"]) == 0
    exported = run / "model-export-24.safetensors"
    loaded = load_run(str(exported))
    assert loaded.cfg.model.img_size == (24, 24) and loaded.model.pos_embed.shape == (1, 1 + 36, 32)
    capsys.readouterr()
    assert main(["eval", str(exported), "--device", "cpu", "--json"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["num_samples"] > 0 and 0.0 <= res["top1"] <= 1.0
    x = torch.randn(3, 1, 24, 24)
    with torch.no_grad():  # the run's model moved to 24 px gives the exported file's logits
        torch.testing.assert_close(loaded.model(x), vitkit.model_from_source(run_dir, img_size=24)(x))
    plain = {k: v.contiguous() for k, v in loaded.model.state_dict().items()}
    save_file(plain, str(run / "bare.safetensors"))  # 24-px weights without metadata: the run's 16-px config
    assert main(["eval", str(run / "bare.safetensors"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    # not one of the run's own weights nor an export: refused before reading it under the run's config
    assert (
        "bare.safetensors is in the run" in err and "not one of its weights" in err and "Traceback" not in err
    )


def test_eval_and_predict_read_an_exported_file_outside_its_run(run_dir, tmp_path, capsys):
    """A self-describing exported file moved out of its run: eval (with --dataset) and predict use its own config
    and preprocessing; an ONNX file, an image, a bare weights file or a folder without a run are named."""
    from PIL import Image

    out = tmp_path / "alone" / "m.safetensors"
    out.parent.mkdir()
    assert main(["export", str(run_dir), "--format", "safetensors", "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["eval", str(out), "--device", "cpu"]) == 2  # no run: the dataset must be named
    assert "pass --dataset" in capsys.readouterr().err
    assert main(["eval", str(out), "--dataset", "synthetic", "--device", "cpu", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["num_samples"] > 0
    from vitkit.cli.common import load_run

    alone, inside = load_run(str(out)), load_run(str(run_dir))
    assert alone.data["mean"] == inside.data["mean"] and alone.data["classes"] == inside.data["classes"]
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(alone.model(x), inside.model(x), rtol=0, atol=0)
    img = tmp_path / "x.png"
    Image.new("L", (16, 16), 90).save(img)
    assert main(["predict", str(out), str(img), "--json"]) == 0
    capsys.readouterr()
    (tmp_path / "m.onnx").write_bytes(b"onnx")
    (tmp_path / "nocfg").mkdir()
    shutil.copy(run_dir / "model.safetensors", tmp_path / "nocfg" / "model.safetensors")
    listed = tmp_path / "listed"
    shutil.copytree(run_dir, listed)
    (listed / "data.json").write_text("[1, 2]")
    for bad, says in [
        (listed, "data.json: expected a JSON object, got list"),
        (tmp_path / "m.onnx", "is an ONNX file"),
        (img, "x.png is not a weights file"),
        (tmp_path / "nocfg" / "model.safetensors", "is not a self-describing vitkit safetensors file"),
        (tmp_path / "nocfg", "nocfg is neither a run folder"),
    ]:
        assert main(["predict", str(bad), str(img)]) == 2
        err = capsys.readouterr().err
        assert says in err and "Traceback" not in err and "/config.json:" not in err, err


def test_every_reader_of_a_run_refuses_replaced_or_corrupt_weights(run_dir, tmp_path, capsys):
    """Was: finetune --from, convert and export read a replaced final model.safetensors that eval refused, and a
    checkpoint folder passed by hand was not checked against its manifest."""
    from safetensors.torch import load_file, save_file

    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    state = load_file(str(run / "model.safetensors"))
    state["head.bias"] += 1
    save_file(state, str(run / "model.safetensors"))
    ckpt = next((run / "checkpoints").glob("step-*"))
    raw = bytearray((ckpt / "model.safetensors").read_bytes())
    raw[-1] ^= 1  # one bit of the last weight
    (ckpt / "model.safetensors").write_bytes(bytes(raw))
    commands = [
        (["convert", str(run), "--out", str(tmp_path / "c")], "does not match the SHA-256"),
        (["export", str(run), "--out", str(tmp_path / "e.safetensors")], "does not match the SHA-256"),
        (["finetune", "--from", str(run), "--out", str(tmp_path / "f"), "--dataset", "synthetic", "--steps", "1"],
         "does not match the SHA-256"),
        (["eval", str(ckpt)], "SHA-256 differs from the manifest"),
        (["export", str(ckpt), "--out", str(tmp_path / "k.safetensors")], "SHA-256 differs from the manifest"),
    ]  # fmt: skip
    for args, says in commands:
        assert main(args) == 2, args
        err = capsys.readouterr().err
        assert says in err and "Traceback" not in err, (args, err)
    assert not (tmp_path / "e.safetensors").exists() and not (tmp_path / "k.safetensors").exists()


def test_eval_refuses_damaged_final_weights_and_warns_of_non_finite_ones(run_dir, tmp_path, capsys, caplog):
    """Was: a damaged final model.safetensors evaluated to 10% and loss nan without a word."""
    from safetensors.torch import load_file, save_file

    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    state = load_file(str(run / "model.safetensors"))
    state["head.bias"][0] = float("nan")
    save_file(state, str(run / "model.safetensors"))
    assert main(["eval", str(run), "--device", "cpu"]) == 2  # not the file training wrote: refused
    err = capsys.readouterr().err
    assert "model.safetensors does not match the SHA-256" in err and "checkpoints" in err
    summary = json.loads((run / "summary.json").read_text())
    del summary["weights_sha256"]  # a run from before the hash was recorded: loaded, with a warning
    (run / "summary.json").write_text(json.dumps(summary))
    assert main(["eval", str(run), "--device", "cpu"]) == 0
    assert "non-finite values (NaN or inf) in 1 tensors (head.bias)" in caplog.text


def test_cli_convert_npz_to_run_dir(tmp_path, capsys):
    from test_convert import flax_arrays, save_npz, timm_vit

    path = save_npz(tmp_path / "vit.npz", flax_arrays(), "opt/target/")
    out = tmp_path / "converted"
    assert main(["convert", path, "--out", str(out)]) == 0
    assert "(official)" in capsys.readouterr().out
    from vitkit.cli.common import load_run

    run = load_run(str(out))
    theirs = timm_vit()
    theirs.load_pretrained(path)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(run.model(x), theirs(x), rtol=0, atol=1e-5)
    assert json.loads((out / "data.json").read_text())["mean"] == [0.5, 0.5, 0.5]
    assert main(["convert", path, "--out", str(out)]) == 2  # refuses to overwrite
    capsys.readouterr()
    assert main(["eval", str(out), "--device", "cpu"]) == 2  # converted weights have no dataset of their own
    assert "pass --dataset" in capsys.readouterr().err


def test_cli_convert_a_fused_qkv_file_with_its_heads_at_another_size(tmp_path, capsys):
    """A timm file whose width is not the paper's needs --num-heads (named when missing); --img-size resamples as
    the Python API does; --json says what was converted."""
    from safetensors.torch import save_file

    import vitkit
    from test_convert import HEADS, P, randomize, timm_vit
    from vitkit.cli.common import load_run

    path = str(tmp_path / "timm.safetensors")
    save_file({k: v.contiguous() for k, v in randomize(timm_vit()).state_dict().items()}, path)
    out = tmp_path / "run"
    assert main(["convert", path, "--out", str(out)]) == 2
    assert "--num-heads" in capsys.readouterr().err and not out.exists()
    assert (
        main(
            [
                "convert",
                path,
                "--out",
                str(out),
                "--num-heads",
                str(HEADS),
                "--img-size",
                str(4 * P),
                "--json",
            ]
        )
        == 0
    )
    info = json.loads(capsys.readouterr().out)
    assert (info["format"], info["out"], info["source"]) == ("timm", str(out), path)
    run = load_run(str(out))
    assert tuple(run.model.cfg.img_size) == (4 * P, 4 * P) and run.model.cfg.num_heads == HEADS
    want = vitkit.create_model(pretrained=path, num_heads=HEADS, img_size=4 * P)
    x = torch.randn(2, 3, 4 * P, 4 * P)
    with torch.no_grad():
        torch.testing.assert_close(run.model(x), want(x), rtol=0, atol=0)


def test_cli_convert_over_a_run_replaces_its_outputs(run_dir, tmp_path, capsys):
    from test_convert import flax_arrays, save_npz

    path = save_npz(tmp_path / "vit.npz", flax_arrays(), "")
    out = tmp_path / "run"
    shutil.copytree(run_dir, out)
    assert (out / "checkpoints").is_dir() and (out / "metrics.jsonl").exists()
    assert main(["convert", path, "--out", str(out), "--overwrite"]) == 0
    assert not (out / "checkpoints").exists() and not (out / "metrics.jsonl").exists()
    assert json.loads((out / "config.json").read_text())["recipe"] == "converted"
    assert not [p.name for p in out.iterdir() if p.name.startswith(".tmp") or ".tmp-" in p.name]


def test_cli_convert_into_its_own_source_is_refused(run_dir, tmp_path, capsys):
    """Was: `convert RUN --out RUN --overwrite` replaced the training run's checkpoints, metrics and summary with
    a converted copy of it."""
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    before = sorted(p.relative_to(run).as_posix() for p in run.rglob("*"))
    for source in (run, run / "model.safetensors", next((run / "checkpoints").glob("step-*"))):
        assert main(["convert", str(source), "--out", str(run), "--overwrite"]) == 2
        assert "holds the checkpoint converted" in capsys.readouterr().err
    assert sorted(p.relative_to(run).as_posix() for p in run.rglob("*")) == before


def test_cli_errors_are_one_line(tmp_path, capsys):
    evil = tmp_path / "evil.pth"
    evil.write_bytes(b"\x80\x04\x95garbage")
    assert main(["convert", str(evil), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "evil.pth" in err[0]


def test_pretrained_json_names_the_resampling_each_kind_got():
    """Was: learn2d's tables (moved linearly per axis whatever --resample said) were recorded as --resample's
    choice, and an AA-ResNet's resampled relative tables as no resampling."""
    from vitkit.cli.finetune import resample_used
    from vitkit.config import ModelConfig
    from vitkit.convert.load import LoadReport

    moved = LoadReport(source="x", format="vitkit", resampled=((2, 2), (4, 4)))
    for posemb, want in (
        ("learn", "bicubic"),
        ("learn2d", "linear, each axis's table"),
        ("sincos2d", "sincos2d at patch centres"),
    ):
        assert resample_used(ModelConfig(posemb=posemb), "bicubic", moved) == want
    aa = LoadReport(source="x", format="vitkit", relative_resampled=["layer1.0.conv2.rel_h"])
    assert resample_used(ModelConfig(), "official", aa) == "linear, the relative position tables"
    assert resample_used(ModelConfig(), "official", LoadReport(source="x", format="vitkit")) is None


def test_cli_finetune_at_higher_resolution(run_dir, tmp_path, capsys):
    def finetune(out, *extra):
        args = [
            "finetune",
            "--from",
            str(run_dir),
            "--dataset",
            "synthetic",
            "--img-size",
            "32",
            "--steps",
            "6",
        ]
        args += ["--batch-size", "32", "--device", "cpu", "--out", str(out), "--no-progress", "--json"]
        args += ["--set", "data.synthetic_size=256", "--set", "optim.warmup_steps=2", *extra]
        assert main(args) == 0
        return json.loads(capsys.readouterr().out)

    summary = finetune(tmp_path / "ft")
    assert (tmp_path / "ft" / "report.html").stat().st_size > 10_000  # as `vitkit train` writes it
    summary = finetune(
        tmp_path / "ft", "--overwrite", "--no-report"
    )  # a fresh fine-tune over the first keeps its provenance
    assert json.loads((tmp_path / "ft" / "pretrained.json").read_text())["from"] == str(run_dir)
    assert summary["steps"] == 6 and summary["recipe"] == "finetune-small"
    assert summary["pretrained"]["img_size"] == [32, 32] and not summary["pretrained"]["head_reset"]
    assert summary["pretrained"]["resample"] == "official"  # the learned table moved by the official zoom
    cfg = json.loads((tmp_path / "ft" / "config.json").read_text())
    assert cfg["model"]["img_size"] == [32, 32] and cfg["optim"]["name"] == "sgd"
    assert vitkit.model_from_source(tmp_path / "ft").pos_embed.shape == (1, 1 + 64, 32)
    shutil.rmtree(tmp_path / "ft" / "checkpoints")  # resuming needs its checkpoint: the weights are not there
    assert main(["train", "--resume", str(tmp_path / "ft"), "--no-progress"]) == 2
    assert (
        "no valid checkpoint, and starting from scratch would lose what pretrained.json"
        in capsys.readouterr().err
    )
    assert finetune(tmp_path / "ft2", "--reset-head", "--no-report")["pretrained"][
        "head_reset"
    ]  # a new zero head when asked
    finetune(
        tmp_path / "ft3", "--layer-decay", "0.7", "--no-report"
    )  # layer-wise decay: one group pair per layer
    assert json.loads((tmp_path / "ft3" / "config.json").read_text())["optim"]["layer_decay"] == 0.7
    from vitkit.train.checkpoint import latest_valid

    ckpt = latest_valid(str(tmp_path / "ft3" / "checkpoints"))
    state = torch.load(os.path.join(ckpt, "state.pt"), weights_only=True)
    scales = sorted({g["lr_scale"] for g in state["optimizer"]["param_groups"]})
    assert scales == pytest.approx([0.7**k for k in range(4)][::-1])  # depth 2: embeddings, 2 blocks, head


def test_transfer_resolution_bench_runs(run_dir, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "bench" / "transfer_resolution.py"
    cmd = [
        sys.executable,
        str(script),
        str(run_dir),
        "--img-size",
        "32",
        "--steps",
        "2",
        "--batch-size",
        "32",
    ]
    cmd += ["--device", "cpu", "--out", str(tmp_path / "ft"), "--json", str(tmp_path / "r.json")]
    r = subprocess.run(
        cmd, capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1")
    )
    assert r.returncode in (0, 1), r.stderr  # 1: the acceptance checks fail on a tiny synthetic run
    assert "after vitkit finetune (2 steps" in r.stdout
    res = json.loads((tmp_path / "r.json").read_text())
    assert res["moved"]["img_size"] == [32, 32] and res["native"]["img_size"] == [16, 16]


def test_a_name_that_does_not_describe_the_checkpoint_says_how(run_dir):
    """Was: 'image size 16x16 is not divisible by the patch size 16' for a 4-px-patch, width-32 run."""
    from vitkit.convert import ConversionError

    with pytest.raises(
        ConversionError, match=r"holds .*, not 'ViT-B/16': embed_dim 32 vs 768, depth 2 vs 12"
    ):
        vitkit.create_model("ViT-B/16", pretrained=str(run_dir))


def test_an_exported_file_reads_images_at_its_runs_native_size(run_dir, tmp_path, capsys):
    """Was: the safetensors export kept mean, std and classes but not native_size, so predict on it read an image
    straight at the model's size where the run reads it at its dataset's size and resizes (fashion-mnist-gpu: 28
    -> 56 px): other probabilities from the same weights. A bad native_size in a file's metadata is named."""
    from PIL import Image
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    data = json.loads((run / "data.json").read_text())
    (run / "data.json").write_text(
        json.dumps({**data, "native_size": [8, 8]})
    )  # images read at 8 px, then 16
    out = tmp_path / "alone" / "m.safetensors"
    out.parent.mkdir()
    assert main(["export", str(run), "--format", "safetensors", "--out", str(out)]) == 0
    img = tmp_path / "noise.png"
    Image.fromarray((np.random.default_rng(0).random((16, 16)) * 255).astype(np.uint8), "L").save(img)
    capsys.readouterr()
    got = {}
    for source in (run, out):
        assert main(["predict", str(source), str(img), "--json", "--topk", "3"]) == 0
        got[source] = json.loads(capsys.readouterr().out)[0]["predictions"]
    assert got[run] == got[out]
    with safe_open(str(out), framework="pt") as f:
        meta = dict(f.metadata())
    bad = tmp_path / "bad.safetensors"
    preprocess = {**json.loads(meta["preprocess"]), "native_size": [0, 8]}
    save_file(load_file(str(out)), str(bad), {**meta, "preprocess": json.dumps(preprocess)})
    assert main(["predict", str(bad), str(img)]) == 2
    err = capsys.readouterr().err
    assert "bad.safetensors's metadata 'preprocess': 'native_size' must be [height, width]" in err, err


def test_a_converted_model_exported_at_another_size_reads_images_at_that_size(tmp_path, capsys):
    """Was: a converted run recorded its model's size as the data's native_size, and an export at another size
    kept it: predict read a photo at 32 px, then upsampled it to 48 (a 64x96 model: cropped 2:3, then squashed),
    where the same weights converted at 48 px read it at 48. Converted weights have no dataset: no native_size."""
    from PIL import Image
    from safetensors import safe_open
    from safetensors.torch import save_file

    timm = pytest.importorskip("timm")
    t = timm.create_model("vit_tiny_patch16_224", num_classes=4, img_size=32, depth=2, patch_size=8)
    save_file({k: v.contiguous() for k, v in t.state_dict().items()}, str(tmp_path / "t.safetensors"))
    assert main(["convert", str(tmp_path / "t.safetensors"), "--out", str(tmp_path / "vt")]) == 0
    data = json.loads((tmp_path / "vt" / "data.json").read_text())
    (tmp_path / "vt" / "data.json").write_text(json.dumps(data | {"native_size": [32, 32]}))  # as older ones
    export = tmp_path / "vt48.safetensors"
    assert (
        main(
            [
                "export",
                str(tmp_path / "vt"),
                "--format",
                "safetensors",
                "--img-size",
                "48",
                "--out",
                str(export),
            ]
        )
        == 0
    )
    with safe_open(str(export), framework="pt") as f:
        assert "native_size" not in json.loads(f.metadata()["preprocess"])
    assert (
        main(
            ["convert", str(tmp_path / "t.safetensors"), "--img-size", "48", "--out", str(tmp_path / "vt48")]
        )
        == 0
    )
    assert "native_size" not in json.loads((tmp_path / "vt48" / "data.json").read_text())
    img = tmp_path / "big.png"
    Image.fromarray((np.random.default_rng(0).random((90, 70, 3)) * 255).astype(np.uint8)).save(img)
    capsys.readouterr()
    got = []
    for source in (export, tmp_path / "vt48"):
        assert main(["predict", str(source), str(img), "--json", "--topk", "4"]) == 0
        got.append(json.loads(capsys.readouterr().out)[0]["predictions"])
    assert got[0] == got[1]


def test_export_and_fast_paths_of_bf16_dynamic_and_unloadable_models(tmp_path, monkeypatch):
    """Was: a bf16 model could not be exported (an fp32 example: a long TorchExportError); the fast path of a
    dynamic_img_size model exported it at its own size whatever the example's (onnxruntime: "Got: 24 Expected:
    16"); a file onnxruntime cannot load raised the plain ConversionError, so `vitkit export` left it behind;
    fast_inference(dtype="bf16") on the compile path ran in fp32 unless the caller added autocast."""
    pytest.importorskip("onnxruntime")
    from vitkit.convert.export import OnnxLoadError
    from vitkit.perf.fast import InferenceAutocast, fast_inference

    small = dict(img_size=16, in_chans=1, embed_dim=32, depth=1, num_heads=2, mlp_dim=64, num_classes=3)
    model = vitkit.create_model("ViT-Ti/4", **small).eval()
    bf16 = vitkit.create_model("ViT-Ti/4", **small).eval().to(torch.bfloat16)
    path = export_onnx(bf16, str(tmp_path / "b.onnx"))
    assert bf16.patch_embed.proj.weight.dtype == torch.bfloat16  # the caller's model as it was
    assert max(check_onnx(path, bf16.float(), (2,)).values()) < 1e-4
    dynamic = vitkit.create_model("ViT-Ti/4", **small, dynamic_img_size=True).eval()
    x = torch.randn(3, 1, 24, 24)
    runner, _ = fast_inference(dynamic, x, method="onnx")
    torch.testing.assert_close(torch.as_tensor(runner(x)), dynamic(x), atol=1e-4, rtol=0)
    (tmp_path / "junk.onnx").write_bytes(b"not an onnx file")
    with pytest.raises(OnnxLoadError, match=r"junk\.onnx: onnxruntime .* cannot load it"):
        check_onnx(str(tmp_path / "junk.onnx"), model)
    monkeypatch.setattr(torch, "compile", lambda m, **kw: m)  # the compile path's runner, without compiling
    runner, info = fast_inference(model, torch.randn(2, 1, 16, 16), dtype="bf16", method="compile")
    assert isinstance(runner, InferenceAutocast) and info["handles_dtype"] and not runner.training
    assert runner(torch.randn(2, 1, 16, 16)).dtype == torch.bfloat16
