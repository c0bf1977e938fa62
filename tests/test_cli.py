"""The command-line interface: `vitkit models` and error handling."""

from __future__ import annotations

import json

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


def test_models_bad_size_is_one_line(capsys):
    assert main(["models", "--img-size", "30"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not divisible by the patch size" in err[0]


def test_missing_optional_package_is_one_line(capsys, monkeypatch):
    import vitkit.cli.models as models_cli

    def needs_a_missing_package(args):
        import timm_not_installed  # noqa: F401

    monkeypatch.setattr(models_cli, "cmd_models", needs_a_missing_package)
    assert main(["models"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["vitkit models: error: this needs timm_not_installed: pip install timm_not_installed"]
