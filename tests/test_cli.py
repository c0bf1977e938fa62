"""The command-line interface: `vitkit models` and error handling."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from vitkit.cli import main


def test_models_table(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "ViT-B/16" in out and "86,567,656" in out and "17.56" in out


def test_models_json(capsys):
    assert main(["models", "--json"]) == 0
    rows = {r["model"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["ViT-L/16"]["params"] == 304_326_632
    assert abs(rows["ViT-B/16"]["gmacs"] - 17.56) < 0.01


def test_models_at_a_size_leave_out_the_variants_it_does_not_fit(capsys, caplog):
    assert main(["models", "--img-size", "384", "--json"]) == 0
    rows = {r["model"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["ViT-B/16"]["img_size"] == [384, 384] and "ViT-H/14" not in rows and "BiT-R50x1" in rows
    assert "not at 384 px (its patches do not divide it): " in caplog.text and "ViT-H/14" in caplog.text
    for bad in ("0", "-5"):
        with pytest.raises(SystemExit):
            main(["models", "--img-size", bad])
        assert "must be at least 1" in capsys.readouterr().err


def test_missing_optional_package_is_one_line(capsys, monkeypatch):
    import vitkit.cli.models as models_cli

    def needs_a_missing_package(args):
        import timm_not_installed  # noqa: F401

    monkeypatch.setattr(models_cli, "cmd_models", needs_a_missing_package)
    assert main(["models"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["vitkit models: error: this needs timm_not_installed: pip install timm_not_installed"]


@pytest.mark.parametrize("text", ["0x16", "16x", "16x16x3", "big"])
def test_an_image_size_is_n_or_hxw(text, capsys):
    from vitkit.cli import build_parser
    from vitkit.cli.common import image_size
    from vitkit.cli.train import resolve_config

    assert image_size("224") == 224 and image_size("224x160") == (224, 160)
    assert image_size("32X48") == (32, 48)
    # a non-square size reaches the config (train's --img-size took one integer)
    args = build_parser().parse_args(["train", "--img-size", "16x24", "--model", "ViT-Ti/4"])
    assert resolve_config(args).model.img_size == (16, 24)
    for command in (["convert", "SRC", "--out", "OUT"], ["train"], ["bench"], ["finetune", "--from", "SRC"]):
        with pytest.raises(SystemExit):
            main([*command, "--img-size", text])
        assert "argument --img-size" in capsys.readouterr().err


@pytest.mark.parametrize("command", [["train"], ["bench"], ["bench", "--recipe", "fashion-mnist"]])
def test_an_empty_model_name_is_refused(command, capsys):
    """Was: --model "" was taken as no --model (the recipe's model, or ViT-S/16) and ran."""
    assert main([*command, "--model", ""]) == 2
    assert "unknown model ''" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # nor is --recipe "" (it benchmarked ViT-S/16)
        main(["bench", "--recipe", ""])
    assert "argument --recipe: invalid choice: ''" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args",
    [
        ["bench", "--batch-size", "0"],
        ["bench", "--repeats", "0"],
        ["bench", "--warmup", "-1"],
        ["eval", "RUN", "--batch-size", "0"],
        ["inspect", "RUN", "--num-images", "0"],
        ["inspect", "RUN", "--k", "0"],
        ["inspect", "RUN", "--show", "0"],
        ["train", "--img-size", "-28"],
        ["finetune", "--from", "RUN", "--dataset", "synthetic", "--threads", "0"],
        ["export", "RUN", "--img-size", "0"],
    ],
)
def test_sizes_and_counts_below_their_minimum_are_refused_by_name(args, capsys):
    """Was: a batch of 0 silently became 32, --k 0 became 1, --repeats 0 failed deep inside."""
    with pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code == 2
    err = capsys.readouterr().err
    flag = next(a for a in args if a.startswith("--") and a not in ("--from", "--dataset"))
    assert f"argument {flag}" in err and "must be at least" in err


@pytest.mark.parametrize("value", ["1.5", "1", "-0.1", "half"])
def test_a_discard_ratio_outside_0_1_is_refused_by_name_before_any_work(value, capsys):
    """Was: refused by rollout after the model and the test set were loaded, naming `discard_ratio`."""
    with pytest.raises(SystemExit) as e:
        main(["inspect", "RUN", "--discard-ratio", value])
    assert e.value.code == 2
    assert "argument --discard-ratio" in capsys.readouterr().err


def test_version_verbose_after_the_command_and_unknown_options_named_by_the_command(capsys):
    from vitkit import __version__

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"vitkit {__version__}"
    assert main(["models", "-v", "--json"]) == 0
    capsys.readouterr()
    for argv in (["models", "--bogus"], ["--bogus", "models"]):
        with pytest.raises(SystemExit):
            main(argv)
        err = capsys.readouterr().err
        assert "usage: vitkit models" in err and "unrecognized arguments: --bogus" in err
    for flag in ("--steps", "--epochs"):  # 0 no longer means "the recipe's length"
        with pytest.raises(SystemExit):
            main(["train", flag, "0"])
        assert "0 must be at least 1" in capsys.readouterr().err


def test_train_model_name_is_checked_at_the_runs_image_size():
    import argparse

    from vitkit.cli.train import resolve_config

    base = dict(recipe=None, dataset=None, model="ViT-S/5", set=None, steps=None, epochs=None, compile=False)
    cfg = resolve_config(argparse.Namespace(**base, img_size=30))
    assert (cfg.model.patch_size, cfg.model.embed_dim, cfg.model.img_size) == (5, 384, (30, 30))
    with pytest.raises(ValueError, match="28x28 is not divisible by the patch size 5"):
        resolve_config(argparse.Namespace(**base, img_size=None))  # the recipe's 28 px, not 224


def test_wrong_kinds_of_paths_are_named(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text("{}")
    assert main(["eval", str(tmp_path / "run" / "config.json")]) == 2
    assert f"not a weights file: pass its folder ({tmp_path / 'run'})" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path / "nothing")]) == 2
    assert "no such folder" in capsys.readouterr().err
    gz = tmp_path / "train-images-idx3-ubyte.gz"
    gz.write_bytes(b"x")
    assert main(["train", "--data-dir", str(gz), "--steps", "1", "--out", str(tmp_path / "o")]) == 2
    assert (
        f"is a file; pass the folder that holds the dataset's files ({tmp_path}?)" in capsys.readouterr().err
    )
    (tmp_path / "imgs" / "train" / "cat").mkdir(parents=True)
    args = [
        "train",
        "--dataset",
        "imagefolder",
        "--data-dir",
        str(tmp_path / "imgs" / "train"),
        "--steps",
        "1",
    ]
    assert main([*args, "--out", str(tmp_path / "o")]) == 2
    assert f"did you mean --data-dir {tmp_path / 'imgs'}?" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "m.pt")]) == 2
    assert "export writes ONNX (.onnx) or safetensors (.safetensors), not .pt" in capsys.readouterr().err


def test_a_missing_weights_file_is_not_looked_up_on_the_hub():
    from vitkit.convert.hub import is_hub_id

    assert not is_hub_id("ViT-B/16-weights.npz") and not is_hub_id("runs/model.safetensors")
    assert is_hub_id("google/vit-base-patch16-224") and is_hub_id("timm/vit_base_patch16_224.augreg_in21k")


@pytest.mark.parametrize(
    "args",
    [
        ["bench", "--model", "ViT-Ti/16", "--device", "gpu"],
        ["eval", "RUN", "--device", "mps"],
        ["predict", "RUN", "x.png", "--device", "cuda0"],
        ["report", "RUN", "--device", "GPU"],
    ],
)
def test_a_device_typo_is_one_line_naming_it(args, tmp_path, capsys):
    """Was: a traceback from torch.device ("Expected one of cpu, cuda, ... at start of device string: gpu") in
    every command but train and finetune."""
    from helpers import tiny_run
    from vitkit.train.loop import train

    run = tmp_path / "run"
    if "RUN" in args:
        train(tiny_run(steps=1), str(run))
    args = [str(run) if a == "RUN" else a for a in args]
    assert main(args) == 2
    assert (
        f"device {args[args.index('--device') + 1]!r} is not auto, cpu, cuda or cuda:N"
        in capsys.readouterr().err
    )


EXIT = """
import atexit, sys
import vitkit.cli
atexit.register(lambda: print("TEARDOWN", flush=True))
if sys.argv[1:] == ["boom"]:  # a failure main() does not turn into a message
    def main():
        raise RuntimeError("boom")
    vitkit.cli.main = main
sys.argv = ["vitkit", *sys.argv[1:]]
vitkit.cli.console()
"""


@pytest.mark.parametrize("world", ["1", "2", ""])
@pytest.mark.parametrize(
    ("args", "code", "says"),
    [
        (["models"], 0, "ViT-B/16"),
        (["eval", "/no/such/run"], 2, "/no/such/run does not exist"),
        (["--version"], 0, "vitkit "),
        (["models", "--nonsense"], 2, "unrecognized arguments: --nonsense"),
        (["boom"], 1, "RuntimeError: boom"),
    ],
)
def test_a_torchrun_worker_exits_without_the_interpreters_teardown(world, args, code, says, tmp_path):
    """A gloo worker thread that asks for the GIL while the interpreter shuts down aborts a finished torchrun
    run (SIGABRT): under torchrun the program ends with its status and what it printed (a traceback for a
    failure main() does not report), and no teardown; an unreadable WORLD_SIZE is one process."""
    env = dict(os.environ, WORLD_SIZE=world, RANK="0", LOCAL_RANK="0")
    r = subprocess.run(
        [sys.executable, "-c", EXIT, *args], capture_output=True, text=True, env=env, timeout=120
    )
    assert r.returncode == code, r.stderr[-2000:]
    assert ("TEARDOWN" in r.stdout) == (world != "2")
    assert says in r.stdout + r.stderr, r.stdout[-500:] + r.stderr[-500:]
