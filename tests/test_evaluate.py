"""evaluate(): every metric it returns against a sample-by-sample reference, over uneven batches."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vitkit.data.datasets import ArrayDataset
from vitkit.eval.evaluate import evaluate

K = 8  # more classes than top-5 covers, so top-5 is not always right


class Pixels(nn.Module):
    """A fixed linear classifier over the pixels."""

    def __init__(self, size: int = 4):
        super().__init__()
        self.fc = nn.Linear(size * size, K)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


def _reference(logits: torch.Tensor, labels: torch.Tensor) -> dict:
    """The metrics one sample at a time: rank of the label, loss, and a confusion matrix of Python counts."""
    top1 = top5 = 0
    loss = 0.0
    conf = [[0] * K for _ in range(K)]
    for z, y in zip(logits.tolist(), labels.tolist()):
        rank = sum(v > z[y] for v in z)  # classes scored above the label (no ties in random floats)
        top1 += rank == 0
        top5 += rank < 5
        loss += math.log(sum(math.exp(v) for v in z)) - z[y]
        conf[y][max(range(K), key=lambda c: z[c])] += 1
    n = len(labels)
    per_class = [conf[c][c] / sum(conf[c]) if sum(conf[c]) else None for c in range(K)]
    return {"top1": top1 / n, "top5": top5 / n, "loss": loss / n, "confusion": conf, "per_class": per_class}


@pytest.mark.parametrize("batch_size", [7, 50, 64])
def test_evaluate_matches_a_sample_by_sample_reference(batch_size):
    """top-1, top-5, loss, the confusion matrix (rows true, columns predicted) and per-class recall, with a
    class that has no test image (its recall None), over batches that do not divide the set."""
    torch.manual_seed(0)
    model = Pixels()
    g = torch.Generator().manual_seed(3)
    images = torch.randint(0, 256, (50, 1, 4, 4), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, K - 1, (50,), generator=g)  # class K-1 never appears
    data = ArrayDataset(images, labels)

    def transform(x: torch.Tensor) -> torch.Tensor:
        return x.float() / 64 - 2

    res = evaluate(model, data, transform, num_classes=K, device=torch.device("cpu"), batch_size=batch_size)
    with torch.no_grad():
        logits = model(transform(images)).double()
    ref = _reference(logits, labels)
    assert 0 < ref["top1"] < ref["top5"] < 1  # the reference tells the metrics apart
    assert res["num_samples"] == 50
    assert res["top1"] == pytest.approx(ref["top1"], abs=1e-12)
    assert res["top5"] == pytest.approx(ref["top5"], abs=1e-12)
    assert res["loss"] == pytest.approx(ref["loss"], rel=1e-6)
    assert res["loss"] == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-6)
    assert res["confusion"] == ref["confusion"]
    assert res["per_class"][K - 1] is None
    assert res["per_class"] == pytest.approx(ref["per_class"], abs=1e-12)


class Zeros(nn.Module):
    """Every logit 0 (a zero-initialised head): every class tied."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros(x.shape[0], 4)


def test_tied_logits_give_one_top1_everywhere():
    """Was: top-1 from topk (the last tied index on the CPU), the confusion matrix and TTA's counts from argmax
    (the first): a zero head scored 18.9% top-1 with 27.0% on the confusion's diagonal, and TTA "lost" 8 points
    while its gain read 0.0."""
    from vitkit.eval.metrics import topk_correct

    logits, labels = torch.tensor([[1.0, 1.0, 0.0], [0.0, 2.0, 2.0]]), torch.tensor([1, 2])
    got = topk_correct(logits, labels, (1, 2))
    assert (int(got[1]), int(got[2])) == (0, 2)  # argmax: classes 0 and 1; both labels in the top 2
    g = torch.Generator().manual_seed(0)
    data = ArrayDataset(torch.randint(0, 256, (37, 1, 4, 4), dtype=torch.uint8, generator=g),
                        torch.randint(0, 4, (37,), generator=g))  # fmt: skip
    for tta in ("none", "hflip"):
        res = evaluate(Zeros(), data, lambda x: x.float(), num_classes=4, device=torch.device("cpu"),
                       batch_size=8, tta=tta)  # fmt: skip
        diagonal = sum(res["confusion"][c][c] for c in range(4)) / 37
        assert res["top1"] == pytest.approx(diagonal, abs=1e-12) == (data.labels == 0).sum().item() / 37
        if tta == "hflip":
            assert res["top1"] == res["top1_no_tta"] and res["tta_gain"]["diff"] == 0.0


def test_top5_of_five_classes_or_fewer_and_an_empty_dataset(tmp_path):
    """Was: `vitkit eval` printed "top-5 100.00%" for a 3-class run (every label is in the top 5), and evaluate()
    on an empty dataset returned top-1 0.0 as if it were a result."""
    from vitkit.eval.metrics import top5_text

    assert top5_text(1.0, 3) == "n/a (3 classes)" and top5_text(0.875, 10) == "87.50%"
    empty = ArrayDataset(torch.zeros(0, 1, 4, 4, dtype=torch.uint8), torch.zeros(0, dtype=torch.long))
    with pytest.raises(ValueError, match="evaluate: the dataset holds no images"):
        evaluate(torch.nn.Flatten(), empty, lambda x: x.float(), num_classes=3, device=torch.device("cpu"))


def test_scoring_an_image_folders_test_split_decodes_none_of_its_training_images(
    tmp_path, monkeypatch, capsys
):
    """Was: eval, compare, fewshot and inspect decoded all of train/ to score test/ (time, memory; and a corrupt
    training image stopped them). Now train/ is listed and read per batch: fewshot decodes only its shots."""
    import dataclasses

    from PIL import Image

    from helpers import tiny_run
    from vitkit.cli import main
    from vitkit.data import imagefolder
    from vitkit.train.loop import train

    for split, n in (("train", 12), ("test", 3)):
        for c in ("x", "y"):
            (tmp_path / "ds" / split / c).mkdir(parents=True)
            for i in range(n):
                Image.new("L", (8, 8), 20 * i + 100 * (c == "y")).save(
                    tmp_path / "ds" / split / c / f"{i}.png"
                )
    cfg = tiny_run(steps=1, batch_size=8)
    cfg = dataclasses.replace(
        cfg, data=dataclasses.replace(cfg.data, dataset="imagefolder", data_dir=str(tmp_path / "ds"))
    )
    runs = [str(tmp_path / "a"), str(tmp_path / "b")]
    for run in runs:
        train(cfg, run)
    (tmp_path / "ds" / "train" / "x" / "0.png").write_bytes(b"not an image any more")
    decoded = []
    real = imagefolder.load_image
    monkeypatch.setattr(
        imagefolder, "load_image", lambda path, *a, **kw: decoded.append(path) or real(path, *a, **kw)
    )
    for argv, most in (
        (["eval", runs[0]], 6),
        (["compare", *runs], 6),
        (["inspect", runs[0], "--num-images", "2", "--out", str(tmp_path / "insp")], 6),
        (["fewshot", runs[0], "--shots", "1", "--seeds", "1", "--no-progress"], 6 + 2),
    ):
        decoded.clear()
        assert main(argv) == 0, capsys.readouterr().err
        assert 0 < len(decoded) <= most and sum("/train/" in p for p in decoded) <= most - 6, (argv, decoded)
