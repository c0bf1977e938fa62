"""Flip test-time augmentation: the averaged logits, evaluate's metrics with it, and the run/CLI plumbing."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers import TINY_FLAGS, tiny_run
from vitkit.cli import main
from vitkit.config import TrainConfig, apply_overrides
from vitkit.data.datasets import ArrayDataset
from vitkit.eval.evaluate import evaluate, predict_labels
from vitkit.eval.tta import tta_logits


class Counting(nn.Module):
    """A linear classifier over the pixels (not mirror-symmetric), counting its forwards."""

    def __init__(self, size: int = 6, classes: int = 5):
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(size * size, classes)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.fc(x.flatten(1))


def _data(n: int = 40, size: int = 6, classes: int = 5) -> ArrayDataset:
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (n, 1, size, size), dtype=torch.uint8, generator=g)
    return ArrayDataset(images, torch.randint(0, classes, (n,), generator=g))


def _float(x: torch.Tensor) -> torch.Tensor:
    return x.float() / 255 - 0.5


def test_hflip_averages_the_logits_of_the_image_and_its_mirror_image():
    m, x = Counting(), _float(_data().images[:8])
    plain, avg = tta_logits(m, x, "hflip")
    assert m.calls == 2
    assert torch.equal(plain, m.fc(x.flatten(1)))
    assert torch.allclose(avg, (m.fc(x.flatten(1)) + m.fc(x.flip(-1).flatten(1))) / 2)
    assert not torch.allclose(avg, plain)  # the model is not mirror-symmetric: the test sees the flip
    same, also = tta_logits(m, x, "none")
    assert same is also and m.calls == 3
    with pytest.raises(ValueError, match=r"tta='vflip'.*none, hflip"):
        tta_logits(m, x, "vflip")


def test_evaluate_with_hflip_scores_the_averaged_logits_and_keeps_the_plain_top1():
    m, ds = Counting(), _data()
    res = evaluate(m, ds, _float, num_classes=5, device=torch.device("cpu"), batch_size=16, tta="hflip")
    plain = evaluate(m, ds, _float, num_classes=5, device=torch.device("cpu"), batch_size=16)
    x = _float(ds.images)
    with torch.no_grad():
        avg = (m(x) + m(x.flip(-1))) / 2
    hits = avg.argmax(-1) == ds.labels
    assert res["top1"] == int(hits.sum()) / len(ds) and res["tta"] == "hflip"
    assert res["loss"] == pytest.approx(F.cross_entropy(avg, ds.labels).item(), rel=1e-6)
    assert res["top1_no_tta"] == plain["top1"] != res["top1"]
    assert sum(map(sum, res["confusion"])) == len(ds) and "tta" not in plain
    assert torch.equal(predict_labels(m, ds, _float, device=torch.device("cpu"), tta="hflip"), avg.argmax(-1))


def test_a_rank_without_a_batch_runs_as_many_forwards_as_the_others():
    m, ds = Counting(), _data(40)  # 3 batches of 16 over 2 ranks: rank 1 has one, then a dummy round
    evaluate(m, ds, _float, num_classes=5, device=torch.device("cpu"), batch_size=16, rank=1, world=2,
             tta="hflip")  # fmt: skip
    assert m.calls == 4


def test_the_config_names_a_bad_tta():
    with pytest.raises(ValueError, match=r"train.eval_tta='flip'"):
        TrainConfig(eval_tta="flip")
    assert apply_overrides(tiny_run(), ["train.eval_tta=hflip"]).train.eval_tta == "hflip"


def test_a_run_with_eval_tta_records_both_and_eval_compare_reproduce_them(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", *TINY_FLAGS, "--epochs", "1", "--set", "train.eval_tta=hflip", "--out", str(out)]
    assert main([*args, "--no-progress", "--no-report"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["tta"] == "hflip" and 0 <= summary["test_top1_no_tta"] <= 1
    assert f"hflip TTA; {summary['test_top1_no_tta']:.2%} without" in capsys.readouterr().out
    evals = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in evals if r.get("split") == "test"]
    assert evals and all("top1_no_tta" in r for r in evals)
    assert evals[-1]["top1"] == summary["test_top1"]

    def eval_json(*flags: str) -> dict:
        assert main(["eval", str(out), "--json", "--device", "cpu", *flags]) == 0
        return json.loads(capsys.readouterr().out)

    res = eval_json()  # the run's own TTA by default: its summary's top-1
    assert res["tta"] == "hflip" and res["top1"] == pytest.approx(summary["test_top1"])
    assert res["top1_no_tta"] == pytest.approx(summary["test_top1_no_tta"])
    res = eval_json("--tta", "none")
    assert res["tta"] == "none" and res["top1"] == pytest.approx(summary["test_top1_no_tta"])

    plain = tmp_path / "plain"
    assert main([*args[:-4], "--out", str(plain), "--no-progress", "--no-report"]) == 0
    capsys.readouterr()
    assert main(["compare", str(out), str(plain), "--device", "cpu", "--json"]) == 0
    runs = json.loads(capsys.readouterr().out)["runs"]
    assert [r["tta"] for r in runs] == ["hflip", "none"]
    assert runs[0]["top1"] == pytest.approx(summary["test_top1"])
    assert main(["compare", str(out), str(plain), "--device", "cpu", "--tta", "none"]) == 0
    text = capsys.readouterr().out
    assert "TTA" not in text
    assert main(["compare", str(out), str(plain), "--device", "cpu"]) == 0
    assert "(hflip TTA)" in capsys.readouterr().out
    ft = ["finetune", "--from", str(out), "--dataset", "synthetic", "--steps", "1", "--batch-size", "16",
          "--set", "data.synthetic_size=64", "--set", "train.eval_tta=hflip", "--out", str(tmp_path / "ft")]  # fmt: skip
    assert main([*ft, "--no-progress", "--no-report"]) == 0
    done = json.loads((tmp_path / "ft" / "summary.json").read_text())
    assert (
        f"(hflip TTA; top-1 {done['test_top1_no_tta']:.2%} without) after 1 steps" in capsys.readouterr().out
    )
    assert main(["report", str(out), "--num-images", "2"]) == 0
    assert (
        f"(hflip TTA; top-1 {summary['test_top1_no_tta']:.2%} without)" in (out / "report.html").read_text()
    )
