"""Accuracy intervals, McNemar's test and `vitkit compare`: the statistics against scipy, the command on runs."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from helpers import tiny_run
from vitkit.cli import main
from vitkit.cli.compare import compare_predictions
from vitkit.eval.metrics import mcnemar_exact, paired_difference, wilson_interval


@pytest.mark.parametrize(("k", "n"), [(9045, 10000), (0, 50), (50, 50), (7, 9), (1, 1)])
def test_wilson_interval_is_scipys(k, n):
    stats = pytest.importorskip("scipy.stats")
    ci = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    assert wilson_interval(k, n) == pytest.approx((ci.low, ci.high), abs=1e-6)


@pytest.mark.parametrize(("a", "b"), [(30, 50), (0, 7), (12, 12), (291, 644), (0, 5), (3, 0)])
def test_the_difference_interval_is_the_exact_conditional_one_and_agrees_with_mcnemar(a, b):
    stats = pytest.importorskip("scipy.stats")
    ci = stats.binomtest(b, a + b).proportion_ci(confidence_level=0.95, method="exact")
    m, n = a + b, 1000
    d, lo, hi = paired_difference(a, b, n)
    assert d == (b - a) / n
    assert (lo, hi) == pytest.approx((m / n * (2 * ci.low - 1), m / n * (2 * ci.high - 1)), abs=1e-9)
    assert (lo <= 0 <= hi) == (mcnemar_exact(a, b) >= 0.05)  # the interval excludes 0 when the test rejects


@pytest.mark.parametrize(("a", "b"), [(30, 50), (0, 7), (12, 12), (291, 644), (0, 0)])
def test_mcnemar_exact_is_the_binomial_test_of_the_discordant_pairs(a, b):
    stats = pytest.importorskip("scipy.stats")
    expected = stats.binomtest(a, a + b, 0.5).pvalue if a + b else 1.0
    assert mcnemar_exact(a, b) == pytest.approx(expected, rel=1e-9)
    assert mcnemar_exact(a, b) == mcnemar_exact(b, a)


def test_paired_difference_and_the_pair_counts():
    d, lo, hi = paired_difference(30, 50, 1000)
    assert d == pytest.approx(0.02) and lo < d < hi
    labels = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    a = torch.tensor([0, 1, 2, 3, 1, 1, 0, 0])  # right on 0-3 and 5
    b = torch.tensor([0, 2, 2, 3, 0, 1, 2, 1])  # right on 0, 2-6
    res = compare_predictions(labels, [a, b], ["a", "b"])
    pair = res["pairs"][0]
    assert (pair["both"], pair["only_a"], pair["only_b"], pair["neither"]) == (4, 1, 2, 1)
    assert [r["top1"] for r in res["runs"]] == [5 / 8, 6 / 8] and pair["diff"] == pytest.approx(1 / 8)
    assert pair["agree"] == 4 / 8 and pair["p_mcnemar"] == 1.0


def test_cli_compare_scores_runs_on_the_same_images(tmp_path, capsys):
    from vitkit.train.loop import train

    runs = []
    for epochs in (1, 2):
        cfg = tiny_run(epochs=epochs)
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, holdout=0.25))
        runs.append(str(tmp_path / f"run{epochs}"))
        train(cfg, runs[-1])
    other_seed = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, seed=1, epochs=1))
    train(other_seed, str(tmp_path / "seed1"))
    capsys.readouterr()
    assert main(["compare", *runs, "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    for path, r in zip(runs, res["runs"]):
        assert main(["eval", path, "--json"]) == 0
        got = json.loads(capsys.readouterr().out)
        assert r["top1"] == pytest.approx(got["top1"]) and r["top1_ci95"] == pytest.approx(got["top1_ci95"])
    pair = res["pairs"][0]
    assert pair["both"] + pair["only_a"] + pair["only_b"] + pair["neither"] == res["num_samples"] == 64
    assert main(["compare", *runs]) == 0
    out = capsys.readouterr().out
    assert "McNemar p = " in out and "B - A: " in out
    assert main(["compare", *runs, "--split", "val", "--json"]) == 0  # the same seed held out the same images
    assert 60 <= json.loads(capsys.readouterr().out)["num_samples"] <= 68  # 25% of each class
    assert (
        main(["compare", runs[0], str(tmp_path / "seed1")]) == 2
    )  # synthetic data: the seed draws the test set; the message names the setting that differs
    err = capsys.readouterr().err
    assert "would hold other images than" in err and "(train.seed 1, not 0)" in err


def test_every_help_text_prints(capsys):
    from vitkit.cli import build_parser

    for argv in [
        ["--help"],
        *[[name, "--help"] for name in build_parser()._subparsers._group_actions[0].choices],
    ]:
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 0, argv
    assert "compare" in capsys.readouterr().out


def test_interval_edges():
    assert wilson_interval(50, 50)[1] == 1.0 and wilson_interval(0, 50)[0] == 0.0
    for k, n in [(3, 3), (999, 1000), (1, 1)]:
        lo, hi = wilson_interval(k, n)
        assert lo <= k / n <= hi
    d, lo, hi = paired_difference(
        0, 5, 1000
    )  # few discordant pairs: an interval that does not claim too much
    assert lo <= 0 < d <= hi and mcnemar_exact(0, 5) > 0.05
    assert paired_difference(9, 0, 10)[1] >= -1.0
    d, lo, hi = paired_difference(0, 0, 10000)  # no disagreement: the bound on its rate
    assert d == 0 and lo == -hi and 0 < hi < 4 / 10000
    with pytest.raises(ValueError, match="at least one image"):
        paired_difference(0, 0, 0)


def test_compare_refuses_weights_without_a_dataset_and_runs_on_other_folders(tmp_path, capsys):
    from PIL import Image

    from vitkit.train.loop import train

    run = str(tmp_path / "run")
    train(tiny_run(epochs=1), run)
    assert main(["export", run, "--format", "safetensors", "--out", str(tmp_path / "w.safetensors")]) == 0
    capsys.readouterr()
    assert main(["compare", run, str(tmp_path / "w.safetensors")]) == 2
    assert "converted or exported weights, no dataset: pass --dataset" in capsys.readouterr().err
    assert main(["compare", run, str(tmp_path / "w.safetensors"), "--dataset", "synthetic", "--json"]) == 0
    pair = json.loads(capsys.readouterr().out)["pairs"][0]
    assert pair["agree"] == 1.0 and pair["p_mcnemar"] == 1.0  # the run and its own export
    runs = []
    for name in ("a", "b"):  # two image folders: other images
        for split in ("train", "val"):
            for c in ("x", "y"):
                folder = tmp_path / name / split / c
                folder.mkdir(parents=True)
                for i in range(16):
                    Image.new("L", (20, 20), 12 * i + (c == "y") * 20).save(folder / f"{i}.png")
        cfg = tiny_run(epochs=1)
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, dataset="imagefolder",
                                                                data_dir=str(tmp_path / name)))  # fmt: skip
        runs.append(str(tmp_path / f"run-{name}"))
        train(cfg, runs[-1])
    capsys.readouterr()
    assert main(["compare", *runs]) == 2
    err = capsys.readouterr().err
    assert "would hold other images than" in err and "(data.data_dir " in err
    # --data-dir names the folder every run is read from (runs moved, or trained elsewhere): it was refused
    assert main(["compare", *runs, "--data-dir", str(tmp_path / "a"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["num_samples"] == 32


def test_compare_on_val_accepts_runs_that_differ_in_subset_only(tmp_path, capsys):
    from vitkit.train.loop import train

    runs = []
    for subset in (0.5, 1.0):
        cfg = tiny_run(epochs=1)
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, holdout=0.25, subset=subset))
        runs.append(str(tmp_path / f"s{subset}"))
        train(cfg, runs[-1])
    capsys.readouterr()
    assert main(["compare", *runs, "--split", "val", "--json"]) == 0  # the val images come before the subset
    assert main(["compare", *runs, "--split", "train"]) == 2
