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
from vitkit.train.loop import train


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
    was_right = m(x).argmax(-1) == ds.labels
    gain = res["tta_gain"]
    assert (gain["gained"], gain["lost"]) == (int((hits & ~was_right).sum()), int((was_right & ~hits).sum()))
    assert gain["diff"] == pytest.approx(res["top1"] - res["top1_no_tta"])
    assert gain["diff_ci95"][0] <= gain["diff"] <= gain["diff_ci95"][1] and 0 < gain["p_mcnemar"] <= 1


def test_the_tta_counters_are_summed_across_ranks():
    m, ds = Counting(), _data()
    res = evaluate(m, ds, _float, num_classes=5, device=torch.device("cpu"), batch_size=16, tta="hflip")
    twice = evaluate(
        m,
        ds,
        _float,
        num_classes=5,
        device=torch.device("cpu"),
        batch_size=16,
        tta="hflip",
        reduce=lambda t: 2 * t,
    )  # fmt: skip  (two ranks that saw the same images)
    assert twice["num_samples"] == 2 * len(ds) and twice["top1_no_tta"] == res["top1_no_tta"]
    assert twice["tta_gain"]["gained"] == 2 * res["tta_gain"]["gained"]
    assert twice["tta_gain"]["lost"] == 2 * res["tta_gain"]["lost"]


class OneBuffer(Counting):
    """Writes every output into the same tensor, as a CUDA-graph replay does."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        if not hasattr(self, "buf") or self.buf.shape != out.shape:
            self.buf = torch.empty_like(out)
        return self.buf.copy_(out)


def test_the_first_forward_survives_the_second():
    m, x = OneBuffer(), _float(_data().images[:8])
    with torch.no_grad():
        plain, avg = tta_logits(m, x, "hflip")
        assert torch.equal(plain, m.fc(x.flatten(1)))
        assert torch.allclose(avg, (m.fc(x.flatten(1)) + m.fc(x.flip(-1).flatten(1))) / 2)


def test_a_rank_without_a_batch_runs_as_many_forwards_as_the_others():
    m, ds = Counting(), _data(40)  # 3 batches of 16 over 2 ranks: rank 1 has one, then a dummy round
    evaluate(m, ds, _float, num_classes=5, device=torch.device("cpu"), batch_size=16, rank=1, world=2,
             tta="hflip")  # fmt: skip
    assert m.calls == 4


def test_ema_runs_record_both_and_tta_without_flips_in_training_warns(tmp_path, caplog):
    cfg = tiny_run(epochs=1, ema_decay=0.9, eval_tta="hflip")  # synthetic data, data.hflip off
    with caplog.at_level("WARNING"):
        summary = train(cfg, str(tmp_path / "run"))
    assert "train.eval_tta=hflip without data.hflip" in caplog.text
    rec = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()][-1]
    assert rec["split"] == "test" and {"top1_no_tta", "ema_top1_no_tta"} <= set(rec)
    assert summary["weights"] == "ema" and summary["test_top1_no_tta"] == rec["ema_top1_no_tta"]
    gain = summary["tta_gain"]
    assert gain["diff"] == pytest.approx(summary["test_top1"] - summary["test_top1_no_tta"])


def test_the_curves_name_the_tta():
    from vitkit.inspect.plots import plot_training_curves

    recs = [
        {"step": s, "split": "test", "top1": 0.5 + s / 100, "top1_no_tta": 0.5, "loss": 1.0} for s in (1, 2)
    ]
    labels = plot_training_curves(recs).axes[1].get_legend_handles_labels()[1]
    assert labels == ["test (TTA)", "test (no TTA)"]
    plain = plot_training_curves([{k: v for k, v in r.items() if k != "top1_no_tta"} for r in recs])
    assert plain.axes[1].get_legend_handles_labels()[1] == ["test"]


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
    text = capsys.readouterr().out
    assert f"hflip TTA: {summary['tta_gain']['diff']:+.2%} " in text
    assert f"over {summary['test_top1_no_tta']:.2%} without" in text
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
    assert res["tta_gain"] == summary["tta_gain"]
    assert main(["eval", str(out), "--device", "cpu"]) == 0
    assert f"hflip TTA: {summary['tta_gain']['diff']:+.2%} [" in capsys.readouterr().out
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
    text = capsys.readouterr().out
    assert "(hflip TTA)" in text and "scored with different TTA" in text
    _predict_is_mirror_invariant_with_tta(out, tmp_path, capsys)
    ft = ["finetune", "--from", str(out), "--dataset", "synthetic", "--steps", "1", "--batch-size", "16",
          "--set", "data.synthetic_size=64", "--set", "train.eval_tta=hflip", "--out", str(tmp_path / "ft")]  # fmt: skip
    assert main([*ft, "--no-progress", "--no-report"]) == 0
    done = json.loads((tmp_path / "ft" / "summary.json").read_text())
    text = capsys.readouterr().out
    assert "with hflip TTA after 1 steps" in text and f"over {done['test_top1_no_tta']:.2%} without" in text
    assert main(["report", str(out), "--num-images", "2"]) == 0
    html = (out / "report.html").read_text()
    assert f"(hflip TTA; top-1 {summary['test_top1_no_tta']:.2%} without)" in html
    assert "without the run&#x27;s hflip TTA" in html or "without the run's hflip TTA" in html


def _predict_is_mirror_invariant_with_tta(run, tmp_path, capsys) -> None:
    """vitkit predict with the run's hflip TTA: an image and its mirror image get the same probabilities (one
    forward alone does not)."""
    from PIL import Image

    g = torch.Generator().manual_seed(3)
    pixels = torch.randint(0, 256, (16, 16), dtype=torch.uint8, generator=g).numpy()  # the model's size
    Image.fromarray(pixels).save(tmp_path / "a.png")
    Image.fromarray(pixels[:, ::-1].copy()).save(tmp_path / "b.png")

    def probs(*flags: str) -> list[list[float]]:
        args = [
            "predict",
            str(run),
            str(tmp_path / "a.png"),
            str(tmp_path / "b.png"),
            "--json",
            "--topk",
            "10",
        ]
        assert main([*args, *flags]) == 0
        res = json.loads(capsys.readouterr().out)
        return [[p["prob"] for p in sorted(r["predictions"], key=lambda p: p["index"])] for r in res]

    a, b = probs()
    assert a == pytest.approx(b, abs=1e-6)
    a, b = probs("--tta", "none")
    assert a != pytest.approx(b, abs=1e-6)
