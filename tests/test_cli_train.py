"""CLI: train/eval/predict end to end on tiny data, and one-line errors for user mistakes."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import shutil

import numpy as np
import pytest
import torch

from helpers import TINY_FLAGS, run_vitkit
from vitkit.cli import main


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    r = run_vitkit("train", *TINY_FLAGS, "--epochs", "3", "--out", str(out), "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "test top-1" in r.stdout
    return out


def test_eval_json(run_dir):
    r = run_vitkit("eval", str(run_dir), "--json", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert {"top1", "top5", "loss", "num_samples"} <= set(res)
    assert res["num_samples"] == 128
    summary = json.loads((run_dir / "summary.json").read_text())
    assert res["top1"] == pytest.approx(summary["test_top1"])


def test_eval_and_predict_fast_score_as_the_model(run_dir, tmp_path, capsys, caplog):
    """--fast on the CPU is int8 ONNX Runtime: eval's top-1 within 3 of 128 images of the fp32 model's, and
    predict's top class the same as without it."""
    assert main(["eval", str(run_dir), "--json", "--device", "cpu"]) == 0
    plain = json.loads(capsys.readouterr().out)
    with caplog.at_level("INFO"):
        assert main(["eval", str(run_dir), "--json", "--device", "cpu", "--fast"]) == 0
    fast = json.loads(capsys.readouterr().out)
    assert "fast inference path: onnx-int8" in caplog.text and fast["fast"] is True
    assert fast["num_samples"] == plain["num_samples"] == 128
    assert abs(fast["top1"] - plain["top1"]) <= 3 / 128
    # int8 quantises each call's activations with their own range: eval feeds it one image at a time, so its
    # score does not depend on --batch-size (it did)
    assert main(["eval", str(run_dir), "--json", "--device", "cpu", "--fast", "--batch-size", "5"]) == 0
    small = json.loads(capsys.readouterr().out)
    assert (small["top1"], small["loss"]) == (fast["top1"], pytest.approx(fast["loss"], abs=1e-6))
    _png(tmp_path / "x.png", "L")
    tops = []
    for extra in ([], ["--fast"]):
        assert (
            main(["predict", str(run_dir), str(tmp_path / "x.png"), "--json", "--device", "cpu", *extra]) == 0
        )
        tops.append(json.loads(capsys.readouterr().out)[0]["predictions"][0])
    assert tops[0]["index"] == tops[1]["index"] and tops[1]["prob"] == pytest.approx(
        tops[0]["prob"], abs=0.05
    )


def test_eval_of_a_one_channel_model_on_an_image_folder(run_dir, tmp_path, capsys):
    """Was: 'the model takes 1-channel images, dataset imagefolder has 3': folders were always decoded as RGB."""
    from PIL import Image

    for split in ("train", "val"):
        for c in range(10):
            (tmp_path / "ds" / split / f"c{c}").mkdir(parents=True)
            Image.new("RGB", (20, 20), (25 * c, 100, 0)).save(tmp_path / "ds" / split / f"c{c}" / "0.png")
    args = ["eval", str(run_dir), "--dataset", "imagefolder", "--data-dir", str(tmp_path / "ds"), "--json"]
    assert main([*args, "--device", "cpu"]) == 0
    assert json.loads(capsys.readouterr().out)["num_samples"] == 10


def test_eval_checkpoint_folder(run_dir):
    """checkpoints/best scores what the run recorded for it (best on the test split: no val split here)."""
    r = run_vitkit("eval", str(run_dir / "checkpoints" / "best"), "--json", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["best_on"] == "test"
    assert json.loads(r.stdout)["top1"] == pytest.approx(summary["best_test_top1"], abs=1e-12)


def _png(path, mode, size=(16, 16)):
    from PIL import Image

    Image.new("RGB", size, (120, 30, 200)).convert(mode).save(path)


def test_predict_any_mode_and_bad_file(run_dir, tmp_path):
    paths = []
    for mode in ("L", "RGB", "RGBA", "P"):
        p = tmp_path / f"img_{mode}.png"
        _png(p, mode, (20, 24))
        paths.append(str(p))
    r = run_vitkit("predict", str(run_dir), *paths, "--topk", "3", "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert len(res) == 4 and len(res[0]["predictions"]) == 3
    # the grey image is one shade, whatever the resize: the run's model on that shade, normalised by data.json
    from PIL import Image

    import vitkit

    shade = Image.open(paths[0]).getpixel((0, 0)) / 255
    data = json.loads((run_dir / "data.json").read_text())
    model = vitkit.create_model(pretrained=str(run_dir))
    x = torch.full((1, 1, *model.cfg.img_size), (shade - data["mean"][0]) / data["std"][0])
    with torch.no_grad():
        top = model(x).softmax(-1)[0].topk(3)
    got = res[0]["predictions"]
    assert [p["index"] for p in got] == top.indices.tolist()
    assert [p["class"] for p in got] == [data["classes"][i] for i in top.indices.tolist()]
    assert [p["prob"] for p in got] == pytest.approx(top.values.tolist(), abs=1e-5)
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 nope")
    r = run_vitkit("predict", str(run_dir), str(bad))
    assert r.returncode == 2 and "broken.jpg" in r.stderr and "Traceback" not in r.stderr


def test_predict_on_a_run_without_its_data_json_says_what_it_falls_back_to(run_dir, tmp_path, capsys, caplog):
    """Was: without data.json predict used mean/std 0.5 and class numbers without a word."""
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    (run / "data.json").unlink()
    _png(tmp_path / "x.png", "L")
    with caplog.at_level("WARNING"):
        assert main(["predict", str(run), str(tmp_path / "x.png")]) == 0
    assert (
        "data.json is missing: the run's normalisation (mean, std) and class names are unknown" in caplog.text
    )


@pytest.mark.parametrize(
    "args,message",
    [
        (["train", "--dataset", "imagenet"], "unknown dataset 'imagenet'"),
        (["train", "--set", "model.widht=3"], "unknown config key 'model.widht'"),
        (["train", "--set", "train.epochs=many"], "expected an integer"),
        (["train", "--set", "nokey"], "not of the form key=value"),
        (["train", "--model", "ViT-Q/4"], "unknown model 'ViT-Q/4'"),
        (["eval", "/nonexistent/run"], "does not exist"),
    ],
)
def test_user_errors_are_one_line(capsys, args, message):
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_missing_data_is_one_line(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("VITKIT_DATA", str(tmp_path))
    import vitkit.data.datasets as ds

    monkeypatch.setattr(ds, "DEBIAN_DIRS", {"fashion-mnist": str(tmp_path / "debian")})
    assert main(["train", "--data-dir", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not found" in err[0] and str(tmp_path / "nowhere") in err[0]
    assert "VITKIT_OFFLINE" in err[0] and "dataset-fashion-mnist" in err[0]


def test_unreadable_checkpoint(capsys, tmp_path, run_dir):
    bad = tmp_path / "badrun"
    shutil.copytree(run_dir, bad)
    (bad / "model.safetensors").write_bytes(b"garbage")  # a run's final file damaged: the checkpoints named
    assert main(["eval", str(bad), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "model.safetensors does not match the SHA-256" in err and "are verified copies" in err
    loose = tmp_path / "loose.safetensors"  # outside a run: not a vitkit file
    loose.write_bytes(b"garbage")
    assert main(["eval", str(loose), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "loose.safetensors is not in a run folder" in err and "not a self-describing" in err


def _own_copy(run_dir, tmp_path):
    """A copy of the module's run for a test that writes to it (or would, if a refusal broke)."""
    shutil.copytree(run_dir, tmp_path / "run")
    return tmp_path / "run"


def test_out_holding_a_run_is_not_overwritten(capsys, run_dir, tmp_path):
    run_dir = _own_copy(run_dir, tmp_path)
    assert main(["train", "--dataset", "synthetic", "--out", str(run_dir)]) == 2
    assert "--resume" in capsys.readouterr().err


def test_a_torchrun_restart_does_not_resume_a_run_another_command_made(
    capsys, run_dir, monkeypatch, tmp_path
):
    """Was: rank 0 refused the folder holding a run, torchrun restarted the job, and the restart resumed (and
    lengthened) the finished run in it."""
    from safetensors.torch import load_file

    run_dir = _own_copy(run_dir, tmp_path)
    weights = (run_dir / "model.safetensors").read_bytes()
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    flags = [*TINY_FLAGS, "--no-progress", "--no-report", "--out", str(run_dir)]
    assert main(["train", *flags, "--epochs", "5"]) == 2
    err = capsys.readouterr().err
    assert "torchrun restarted the job, but" in err and "train.epochs: 3 in the run, 5 now" in err
    assert (run_dir / "model.safetensors").read_bytes() == weights
    before = load_file(str(run_dir / "model.safetensors"))
    assert main(["train", *flags, "--epochs", "3"]) == 0  # the command that made it: a restart resumes it
    after = load_file(str(run_dir / "model.safetensors"))  # finished: evaluated again, the same weights
    assert all(torch.equal(v, after[k]) for k, v in before.items())
    # keys the dataset sets whatever the command said do not make it another run
    assert main(["train", *flags, "--epochs", "3", "--set", "model.num_classes=1000"]) == 0
    # was: a key the command does not name matched any run (the command was applied on top of the run's config)
    other_run = tmp_path / "hflip-off"
    shutil.copytree(run_dir, other_run)
    config = json.loads((other_run / "config.json").read_text())
    config["data"]["hflip"] = not config["data"]["hflip"]
    (other_run / "config.json").write_text(json.dumps(config))
    there = [*TINY_FLAGS, "--no-progress", "--no-report", "--out", str(other_run), "--epochs", "3"]
    assert main(["train", *there]) == 2
    assert "torchrun restarted the job, but" in capsys.readouterr().err
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    other = [*TINY_FLAGS, "--no-progress", "--no-report", "--out", str(copy), "--epochs", "1", "--overwrite"]
    assert (
        main(["train", *other]) == 0
    )  # another run, --overwrite: a restart starts afresh as the first try would
    assert json.loads((copy / "summary.json").read_text())["epochs"] == 1


@pytest.mark.parametrize(
    ("flags", "match"),
    [
        (["--set", "train.fewshot_every=1", "--set", "train.fewshot_datasets=nope"], "nope"),
        (["--set", "optim.eps=-1"], r"optim\.eps=-1\.0 must be positive"),
        (["--set", "train.eval_batch_size=0"], r"train\.eval_batch_size=0 must be positive"),
    ],
    ids=["fewshot-dataset", "eps", "eval-batch-size"],
)
def test_overwrite_leaves_the_run_whole_when_a_setting_is_refused(capsys, run_dir, tmp_path, flags, match):
    """Was: --overwrite cleared the old run before the optimizer and the few-shot data were built (a refused
    setting left config.json and data.json alone), and eval_batch_size=0 failed after training."""
    import re

    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    before = sorted(p.relative_to(run).as_posix() for p in run.rglob("*"))
    assert main(["train", *TINY_FLAGS, "--out", str(run), "--overwrite", "--no-report", *flags]) == 2
    assert re.search(match, capsys.readouterr().err)
    assert sorted(p.relative_to(run).as_posix() for p in run.rglob("*")) == before


def test_finetune_into_its_own_source_is_refused(capsys, run_dir, tmp_path):
    """Was: --overwrite deleted the run fine-tuned from before reading it (a kill then lost the weights)."""
    run_dir = _own_copy(run_dir, tmp_path)
    for source in (run_dir, run_dir / "model.safetensors", run_dir / "checkpoints" / "best"):
        args = [
            "finetune",
            "--from",
            str(source),
            "--out",
            str(run_dir),
            "--overwrite",
            "--dataset",
            "synthetic",
        ]
        assert main(args) == 2
        assert "holds the checkpoint fine-tuned from" in capsys.readouterr().err
    assert (run_dir / "model.safetensors").exists() and (run_dir / "checkpoints").is_dir()
    exp = tmp_path / "exp"  # a source in a sub-folder that is not one of the run's outputs is kept: allowed
    shutil.copytree(run_dir, exp / "pre")
    args = [
        "finetune",
        "--from",
        str(exp / "pre"),
        "--out",
        str(exp),
        "--dataset",
        "synthetic",
        "--steps",
        "1",
    ]
    assert (
        main([*args, "--batch-size", "16", "--set", "data.synthetic_size=64", "--no-progress", "--no-report"])
        == 0
    )
    assert (exp / "pre" / "model.safetensors").exists() and (exp / "model.safetensors").exists()


def test_edited_run_files_are_named_not_tracebacks(capsys, run_dir, tmp_path):
    """Was: an edited config.json gave a size-mismatch traceback on resume; a data.json whose classes do not
    fit the model an IndexError or TypeError in predict."""
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    cfg = json.loads((run / "config.json").read_text())
    cfg["model"]["embed_dim"] = 48
    (run / "config.json").write_text(json.dumps(cfg))
    assert main(["train", "--resume", str(run), "--epochs", "4", "--no-progress", "--no-report"]) == 2
    assert "does not fit the model of the run's config.json" in capsys.readouterr().err
    shutil.rmtree(run)
    shutil.copytree(run_dir, run)
    _png(tmp_path / "x.png", "L")
    data = json.loads((run / "data.json").read_text())
    for bad in (["a"], 5):
        (run / "data.json").write_text(json.dumps({**data, "classes": bad}))
        assert main(["predict", str(run), str(tmp_path / "x.png")]) == 2
        assert "'classes' must list the model's 10 class names" in capsys.readouterr().err
    # was: native_size [0, 5] a ZeroDivisionError, a zero std or a NaN mean a `nan%` prediction, a bad crop_mode
    # an error that did not name data.json
    for key, bad, says in (
        ("native_size", [0, 5], "'native_size' must be [height, width] in pixels"),
        ("native_size", "ab", "'native_size' must be [height, width] in pixels"),
        ("std", [0], "'std' must give one positive number per input channel"),
        ("mean", [float("nan")], "'mean' must give one finite number per input channel"),
        ("crop_mode", "diagonal", "crop_mode"),
    ):
        (run / "data.json").write_text(json.dumps({**data, key: bad}))
        for cmd in ("predict", "eval"):
            args = [cmd, str(run), str(tmp_path / "x.png")] if cmd == "predict" else [cmd, str(run)]
            assert main(args) == 2
            err = capsys.readouterr().err
            assert "data.json" in err and says in err, (key, bad, cmd, err)


def test_a_dataset_must_fit_the_run_it_scores(caplog):
    """Was: eval checked the class count only: an image folder with a class renamed since training was scored
    against shifted labels without a word, and a 3-channel dataset for a 1-channel model failed on the image
    shape naming neither."""
    from types import SimpleNamespace as NS

    from vitkit.cli.common import UserError
    from vitkit.cli.rundata import check_dataset_fits

    run = NS(
        cfg=NS(model=NS(num_classes=3, in_chans=1), data=NS(data_dir=None)), data={"classes": ["a", "b", "c"]}
    )
    splits = lambda classes, chans=1: NS(num_classes=len(classes), in_chans=chans, classes=classes)  # noqa: E731
    check_dataset_fits(run, splits(["a", "b", "c"]), "imagefolder", "RUN", own=True)
    with pytest.raises(UserError, match="RUN: the model has 3 classes, dataset imagefolder 2"):
        check_dataset_fits(run, splits(["a", "b"]), "imagefolder", "RUN", own=True)
    with pytest.raises(UserError, match="RUN: the model takes 1-channel images, dataset imagefolder has 3"):
        check_dataset_fits(run, splits(["a", "b", "c"], 3), "imagefolder", "RUN", own=True)
    with pytest.raises(UserError, match=r"class 1 is 'x', the run's data\.json says 'b'"):
        check_dataset_fits(run, splits(["a", "x", "c"]), "imagefolder", "RUN", own=True)
    with caplog.at_level(
        logging.WARNING, logger="vitkit"
    ):  # another dataset of the same size: said, not refused
        check_dataset_fits(run, splits(["a", "x", "c"]), "cifar10", "RUN", own=False)
    assert "class 1 is 'x', the run's data.json says 'b'" in caplog.text


def test_small_mistakes_get_their_own_messages(capsys, run_dir, tmp_path):
    """Was: `[Errno 17] File exists`, a temporary file's name, a micro-batch of -4 called a divisor of the batch,
    --checkpoint-every -1 answered about log_every, --resume with --overwrite silently resumed."""
    (tmp_path / "file").write_text("x")
    cases = [
        (
            ["convert", str(run_dir), "--out", str(tmp_path / "file")],
            "is a file; convert writes a run folder",
        ),
        (["export", str(run_dir), "--out", str(tmp_path)], "is a folder; export writes one file"),
        (["train", "--micro-batch-size", "-4"], "argument --micro-batch-size: -4 must be at least 0"),
        (["train", "--checkpoint-every", "-1"], "argument --checkpoint-every: -1 must be at least 0"),
        (["train", "--resume", str(run_dir), "--overwrite"], "give one of them"),
    ]
    for args, message in cases:
        with pytest.raises(SystemExit) if "-1" in args or "-4" in args else contextlib.nullcontext():
            assert main(args) == 2
        assert message in capsys.readouterr().err, args


def test_fewshot_of_a_run(run_dir):
    r = run_vitkit("fewshot", str(run_dir), "--shots", "2", "1", "--seeds", "2", "--json", "--no-progress")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["dataset"] == "synthetic" and res["num_test"] == 128 and res["dim"] == 32
    assert list(res["shots"]) == ["1", "2"] and len(res["shots"]["2"]["seeds"]) == 2
    assert all(0.0 <= a <= 1.0 for r in res["shots"].values() for a in r["seeds"])
    r = run_vitkit(
        "fewshot", str(run_dir), "--shots", "5", "--seeds", "1", "--test-limit", "10", "--no-progress"
    )
    assert r.returncode == 0, r.stderr
    assert "pre-logits of width 32" in r.stdout and "10 test images" in r.stdout
    # was: with stderr not a terminal (a log of 2>&1), the bar and the table's header shared a line
    r = run_vitkit("fewshot", str(run_dir), "--shots", "5", "--seeds", "1", "--test-limit", "10")
    assert r.returncode == 0 and "embedding" not in r.stderr, r.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["--shots", "1000"], "1000 training image(s) of every class; class 0 ('class0') has"),
        (["--l2-reg", "0"], "must be a positive number"),
        (["--shots", "0"], "0 must be at least 1"),
    ],
)
def test_fewshot_errors(run_dir, args, message):
    r = run_vitkit("fewshot", str(run_dir), "--no-progress", *args)
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr


def test_predict_refuses_a_headless_or_four_channel_model_and_answers_each_image_alone(
    run_dir, tmp_path, capsys
):
    """Was: a model without a head (num_classes=0) printed empty predictions and exit 0, a 4-channel one failed
    with a traceback, and with --fast (int8: each batch's activations quantised with their own range) an image's
    probabilities depended on the images beside it."""
    from PIL import Image

    import vitkit
    from vitkit.convert.runs import save_model_file

    img = tmp_path / "x.png"
    _png(img, "RGB")
    for kw, says in [
        ({"in_chans": 3, "num_classes": 0}, "the model has no classification head (num_classes=0"),
        (
            {"in_chans": 4, "num_classes": 3},
            "the model takes 4-channel images; image files give 1 (L) or 3 (RGB)",
        ),
    ]:
        path = tmp_path / f"m{kw['in_chans']}-{kw['num_classes']}.safetensors"
        save_model_file(str(path), vitkit.create_model("ViT-Ti/4", img_size=16, **kw))
        assert main(["predict", str(path), str(img)]) == 2
        err = capsys.readouterr().err
        assert says in err and path.name in err and "Traceback" not in err, err
    rng = np.random.default_rng(0)
    paths = []
    # unlike ranges: one image's range would set the other's quantisation
    for i, scale in enumerate((40, 255)):
        p = tmp_path / f"noise{i}.png"
        Image.fromarray((rng.random((16, 16)) * scale).astype(np.uint8), "L").save(p)
        paths.append(str(p))
    answers = []
    for group in ([paths[0]], paths):
        assert main(["predict", str(run_dir), *group, "--json", "--fast", "--topk", "3"]) == 0
        answers.append(json.loads(capsys.readouterr().out)[0]["predictions"])
    assert answers[0] == answers[1]


def test_a_relative_data_dir_is_recorded_absolute(tmp_path, monkeypatch, capsys):
    """Was: `--data-dir data` went into config.json as given, so eval or fewshot run from another folder read
    whatever `data` was there (another image folder with the same class names: scored on it without a word)."""
    from test_data import write_folder

    write_folder(str(tmp_path / "data"), "train", n=4)
    write_folder(str(tmp_path / "data"), "val", n=2)
    monkeypatch.chdir(tmp_path)
    args = [
        "train",
        *TINY_FLAGS,
        "--dataset",
        "imagefolder",
        "--data-dir",
        "data",
        "--steps",
        "1",
        "--batch-size",
        "4",
    ]
    assert main([*args, "--out", "run", "--no-progress", "--no-report"]) == 0
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["data"]["data_dir"] == str(tmp_path / "data")
    ft = ["finetune", "--from", "run", "--dataset", "imagefolder", "--data-dir", "data", "--steps", "1"]
    ft += ["--batch-size", "4", "--device", "cpu", "--out", "ft", "--no-progress", "--no-report"]
    assert main(ft) == 0  # fine-tuning writes its config through the same path
    capsys.readouterr()
    assert main([*args, "--out", "vf", "--no-progress", "--set", "data.val_fraction=0.2"]) == 2
    assert "has its own val/ folder" in capsys.readouterr().err  # was ignored; training refuses it
    assert json.loads((tmp_path / "ft" / "config.json").read_text())["data"]["data_dir"] == str(
        tmp_path / "data"
    )


def test_model_names_epochs_and_checkpoint_cadence_from_set_and_flags(tmp_path, capsys):
    """Was: --model was checked against the recipe's image size, not --set model.img_size's; --set train.epochs did
    nothing under a recipe that sets steps; --checkpoint-every 0 (once per epoch) was refused."""
    import argparse

    from vitkit.cli.train import resolve_config

    def args(*flags):
        ns = argparse.Namespace(
            model=None, recipe=None, set=[], epochs=None, steps=None, compile=False, img_size=None
        )
        for k, v in flags:
            setattr(ns, k, v)
        return ns

    cfg = resolve_config(args(("model", "ViT-B/16"), ("set", ["model.img_size=224x160"])))
    assert cfg.model.img_size == (224, 160) and cfg.model.name == "ViT-B/16"
    cfg = resolve_config(args(("recipe", "finetune-small"), ("set", ["train.epochs=1"])))
    assert (cfg.train.epochs, cfg.train.steps) == (1, 0)
    cfg = resolve_config(args(("recipe", "finetune-small"), ("set", ["train.epochs=1", "train.steps=7"])))
    assert cfg.train.steps == 7
    run = tmp_path / "r"
    assert (
        main(
            [
                "train",
                *TINY_FLAGS,
                "--steps",
                "1",
                "--checkpoint-every",
                "0",
                "--out",
                str(run),
                "--no-report",
            ]
        )
        == 0
    )
    assert json.loads((run / "config.json").read_text())["train"]["checkpoint_every"] == 0


def test_finetune_replaces_a_head_for_other_classes_and_keeps_the_checkpoints_statistics(
    run_dir, tmp_path, capsys, caplog
):
    """Was: a head for as many classes as the dataset's was kept whatever they were (the paper's new zero head
    only when the counts differed); an RGB dataset from a 1-channel checkpoint was normalised with its own
    statistics, not the checkpoint's (finetune and fewshot disagreed); --set train.epochs was ignored; fewshot
    refused a 1-channel model on an image folder."""
    from PIL import Image

    for split in ("train", "val"):
        for c in range(10):
            (tmp_path / "ds" / split / f"kind{c}").mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (16, 16), (25 * c, 9 * i, 0)).save(
                    tmp_path / "ds" / split / f"kind{c}" / f"{i}.png"
                )
    src = json.loads((run_dir / "data.json").read_text())
    ft = ["finetune", "--from", str(run_dir), "--dataset", "imagefolder", "--data-dir", str(tmp_path / "ds")]
    ft += ["--batch-size", "4", "--device", "cpu", "--no-progress", "--no-report", "--set", "train.epochs=1"]
    with caplog.at_level("INFO"):
        assert main([*ft, "--out", str(tmp_path / "ft")]) == 0
    assert "new zero-initialised head: the checkpoint's 10 classes are not the dataset's" in caplog.text
    assert json.loads((tmp_path / "ft" / "pretrained.json").read_text())["head_reset"] is True
    data = json.loads((tmp_path / "ft" / "data.json").read_text())
    assert data["mean"] == pytest.approx(src["mean"] * 3) and data["std"] == pytest.approx(src["std"] * 3)
    assert json.loads((tmp_path / "ft" / "summary.json").read_text())["steps"] == 5  # 1 epoch of 20 images
    capsys.readouterr()
    shots = ["fewshot", str(run_dir), "--dataset", "imagefolder", "--data-dir", str(tmp_path / "ds")]
    assert main([*shots, "--shots", "1", "--json", "--no-progress"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["dataset"] == "imagefolder" and res["num_test"] == 20


def test_a_converted_head_without_class_names_is_kept_and_digits_are_names(tmp_path, caplog):
    """Was: a converted run wrote "0", "1", ... as its class names, so fine-tuning from the run reset a head that
    fine-tuning from its file kept; reading numbers as placeholders instead would have kept MNIST's digit head on
    another dataset. Now a conversion writes only its source's names, and only LABEL_0, ... are placeholders."""
    from safetensors.torch import save_file

    from vitkit.cli.finetune import _named
    from vitkit.models import create_model

    assert _named(["LABEL_0", "LABEL_1"]) is None and _named(None) is None
    assert _named(["0", "1", "2"]) == ["0", "1", "2"] and _named(["cat", "dog"]) == ["cat", "dog"]
    m = create_model("ViT-Ti/4", img_size=16, in_chans=1, num_classes=10, embed_dim=32, depth=1, num_heads=2)
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(tmp_path / "bare.safetensors"))
    flags = ["--num-heads", "2"]
    assert main(["convert", str(tmp_path / "bare.safetensors"), "--out", str(tmp_path / "conv"), *flags]) == 0
    assert "classes" not in json.loads((tmp_path / "conv" / "data.json").read_text())
    ft = [
        "finetune",
        "--from",
        str(tmp_path / "conv"),
        "--dataset",
        "synthetic",
        "--steps",
        "1",
        "--batch-size",
        "8",
    ]
    with caplog.at_level("WARNING"):
        assert (
            main([*ft, "--device", "cpu", "--out", str(tmp_path / "ft"), "--no-progress", "--no-report"]) == 0
        )
    assert "the checkpoint's head is kept" in caplog.text
    assert json.loads((tmp_path / "ft" / "pretrained.json").read_text())["head_reset"] is False


def test_training_without_out_says_nothing_is_saved(caplog, tmp_path, monkeypatch):
    """Was: `vitkit train` without --out trained (12 minutes for the default recipe) and kept nothing, silently."""
    monkeypatch.chdir(tmp_path)
    with caplog.at_level("WARNING"):
        assert main(["train", *TINY_FLAGS, "--steps", "1", "--no-progress"]) == 0
    assert "no --out: the trained weights, checkpoints and report are not saved" in caplog.text
    assert list(tmp_path.iterdir()) == []


def test_eval_and_fewshot_on_another_dataset_leave_the_runs_holdout_and_subset(tmp_path, capsys):
    """Was: `eval RUN --dataset imagefolder` and `fewshot` kept the run's data.holdout and data.subset: "data.holdout
    =0.1: holds out 0 of the 10 training images", or shots drawn from half of the other dataset."""
    from PIL import Image

    for split in ("train", "val"):
        for c in range(10):
            (tmp_path / "ds" / split / f"c{c}").mkdir(parents=True)
            Image.new("RGB", (16, 16), (25 * c, 100, 0)).save(tmp_path / "ds" / split / f"c{c}" / "0.png")
    out = str(tmp_path / "run")
    held = ["--set", "data.holdout=0.1", "--set", "data.subset=0.5"]
    assert (
        main(["train", *TINY_FLAGS, *held, "--steps", "1", "--out", out, "--no-progress", "--no-report"]) == 0
    )
    capsys.readouterr()
    other = ["--dataset", "imagefolder", "--data-dir", str(tmp_path / "ds"), "--json"]
    assert main(["eval", out, *other, "--device", "cpu"]) == 0
    assert json.loads(capsys.readouterr().out)["num_samples"] == 10
    assert main(["fewshot", out, *other, "--shots", "1", "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out)["num_test"] == 10


def test_empty_paths_flag_texts_and_recipe_keys(tmp_path, capsys):
    """Was: `--out ""` (an unset $RUN) trained and kept nothing without a word, `--resume ""` started afresh;
    `--data-dir none` searched the usual places (flag values went through --set's parser); `--set recipe=X`
    relabelled a run; `--set optim.warmup_fraction=F` did nothing on a recipe with warmup steps."""
    from vitkit.cli.train import resolve_config

    for flag in ("--out", "--resume", "--data-dir"):
        with pytest.raises(SystemExit) as e:
            main(["train", *TINY_FLAGS, "--steps", "1", flag, ""])
        assert e.value.code == 2
        assert f"argument {flag}: an empty path (an unset shell variable?)" in capsys.readouterr().err
    assert main(["train", "--dataset", "fashion-mnist", "--data-dir", "none", "--steps", "1"]) == 2
    assert "dataset 'fashion-mnist' not found. Looked in: the data folder none" in capsys.readouterr().err
    assert main(["train", *TINY_FLAGS, "--set", "recipe=fashion-mnist-gpu", "--steps", "1"]) == 2
    assert "--set recipe: not a setting (--recipe NAME chooses a recipe)" in capsys.readouterr().err
    args = argparse.Namespace(**dict.fromkeys(("model", "img_size", "epochs", "steps", "compile")))
    args.recipe, args.set = "paper-finetune", ["optim.warmup_fraction=0.2"]
    optim = resolve_config(args).optim
    assert (optim.warmup_steps, optim.warmup_fraction) == (0, 0.2)
    args.set.append("optim.warmup_steps=7")  # both given: as given
    assert resolve_config(args).optim.warmup_steps == 7


def test_readme_walkthrough_fixes(tmp_path, capsys):
    """Was: `--model ViT-96x1/7 --set model.num_heads=3` failed (the name was parsed before --set gave its heads);
    train's summary line printed top-5 with the recipe's class count, not the dataset's ("n/a (5 classes)" for a
    10-class model); a train-only folder beside validation/ said "set data.val_fraction" without naming what it
    had not read; `eval google/vit-...` said "does not exist"."""
    from PIL import Image

    from vitkit.cli.train import resolve_config

    args = argparse.Namespace(**dict.fromkeys(("img_size", "epochs", "steps", "compile")))
    args.recipe, args.model, args.set = None, "ViT-96x1/7", ["model.num_heads=3", "model.img_size=28"]
    m = resolve_config(args).model
    assert (m.embed_dim, m.depth, m.num_heads, m.patch_size) == (96, 1, 3, 7)
    assert main(["train", *TINY_FLAGS, "--set", "model.num_classes=5", "--steps", "1", "--no-report"]) == 0
    line = capsys.readouterr().out
    assert "top-5 " in line and "n/a" not in line  # the dataset's 10 classes
    for split in ("train", "validation"):
        (tmp_path / "ds" / split / "a").mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / "ds" / split / "a" / "0.png")
    assert (
        main(["train", "--dataset", "imagefolder", "--data-dir", str(tmp_path / "ds"), "--steps", "1"]) == 2
    )
    assert "has no test/ or val/ folder (validation/ not read: name the evaluation folder test/ or val/)" in (
        capsys.readouterr().err
    )
    assert main(["eval", "google/vit-base-patch16-224"]) == 2
    assert (
        "is a hub id: eval and predict read runs; `vitkit convert google/vit-base-patch16-224 --out RUN`"
        in (capsys.readouterr().err)
    )


def test_finetune_names_where_a_size_came_from_and_records_its_source_in_full(
    run_dir, tmp_path, capsys, monkeypatch
):
    """Was: paper-finetune's default 384 px on patch-7 weights "image size 384x384 is not divisible by the patch
    size 7" (a size never typed); a non-square timm file told "pass the model's img_size" (finetune's --img-size
    is the new size); pretrained.json kept --from as typed (a relative path)."""
    from vitkit.convert import save_model_file
    from vitkit.models import create_model

    m = create_model("ViT-Ti/7", img_size=14, in_chans=1, num_classes=10, embed_dim=32, depth=1, num_heads=2)
    save_model_file(str(tmp_path / "p7.safetensors"), m)
    ft = [
        "finetune",
        "--dataset",
        "synthetic",
        "--device",
        "cpu",
        "--no-progress",
        "--no-report",
        "--steps",
        "1",
    ]
    assert main([*ft, "--from", str(tmp_path / "p7.safetensors"), "--recipe", "paper-finetune"]) == 2
    err = capsys.readouterr().err
    assert (
        "the paper-finetune recipe fine-tunes at 384x384 by default" in err and "--img-size (e.g. 385)" in err
    )
    timm = pytest.importorskip("timm")
    t = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=(16, 24), patch_size=8, embed_dim=32, depth=1,
        num_heads=2, class_token=False, global_pool="avg", fc_norm=False, num_classes=10,
    )  # fmt: skip
    torch.save(t.state_dict(), tmp_path / "ns.pth")
    ns = ["--from", str(tmp_path / "ns.pth"), "--num-heads", "2", "--img-size", "32"]
    assert main([*ft, *ns, "--out", str(tmp_path / "ns")]) == 2
    assert "For finetune: convert it at its own size first" in capsys.readouterr().err
    monkeypatch.chdir(run_dir.parent)
    assert main([*ft, "--from", run_dir.name, "--out", str(tmp_path / "ft")]) == 0
    assert json.loads((tmp_path / "ft" / "pretrained.json").read_text())["from"] == str(run_dir)
