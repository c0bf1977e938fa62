"""The command-line interface: `vitkit models` and error handling."""

from __future__ import annotations

import json

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
