"""Few-shot linear evaluation: the closed-form ridge solution, the K-shot draws, the frozen representation."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

import vitkit
from helpers import TINY_MODEL
from vitkit.data.datasets import ArrayDataset, make_synthetic
from vitkit.data.transforms import normalize, resize
from vitkit.eval.fewshot import (
    BIAS_FEATURE,
    class_orders,
    fewshot_evaluate,
    fewshot_indices,
    representations,
    ridge_fit,
    ridge_predict,
)


@pytest.mark.parametrize("n, d", [(40, 8), (6, 20)])  # more samples than features, and fewer (the dual form)
def test_ridge_fit_is_the_regularised_least_squares_solution(n, d):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=g, dtype=torch.float64) * 3 + 1
    y = torch.arange(n) % 3
    l2 = 2.5
    w, mean, std = ridge_fit(x, y, 3, l2)
    # the same problem as plain least squares: [A; sqrt(l2) I] w = [T; 0]
    a = torch.cat([(x - x.mean(0)) / (x.std(0, correction=0) + 1e-5), torch.full((n, 1), BIAS_FEATURE)], 1)
    t = 2.0 * torch.nn.functional.one_hot(y, 3).double() - 1.0
    stacked = torch.cat([a, l2**0.5 * torch.eye(d + 1, dtype=torch.float64)])
    want = torch.linalg.lstsq(stacked, torch.cat([t, torch.zeros(d + 1, 3, dtype=torch.float64)])).solution
    torch.testing.assert_close(w, want, rtol=1e-8, atol=1e-10)
    assert w.shape == (d + 1, 3) and mean.shape == std.shape == (d,)
    torch.testing.assert_close(ridge_predict(x, w, mean, std), (a @ want).argmax(-1), rtol=0, atol=0)


def test_ridge_fit_rejects_bad_input():
    x, y = torch.randn(4, 3), torch.arange(4) % 2
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="l2_reg must be a positive number"):
            ridge_fit(x, y, 2, bad)
    with pytest.raises(ValueError, match=r"labels \(n,\)"):
        ridge_fit(x, y[:3], 2)


def test_separable_features_are_classified_perfectly_from_one_shot():
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(200) % 10
    feats = 5.0 * torch.nn.functional.one_hot(labels, 16).float() + 0.1 * torch.randn(200, 16, generator=g)
    idx = fewshot_indices(class_orders(labels, 10, seed=0), 1)
    w, mean, std = ridge_fit(feats[idx], labels[idx], 10, 1.0)
    assert (ridge_predict(feats, w, mean, std) == labels).all()


def test_fewshot_draws_per_class_nested_seeded_and_checked():
    labels = torch.tensor([0] * 7 + [1] * 5 + [2] * 9)[torch.randperm(21)]
    orders = class_orders(labels, 3, seed=1)
    five = fewshot_indices(orders, 5)
    assert torch.bincount(labels[five], minlength=3).tolist() == [5, 5, 5]
    assert len(set(five.tolist())) == 15
    two = fewshot_indices(orders, 2)
    assert set(two.tolist()) <= set(five.tolist())  # a seed's 2-shot set is part of its 5-shot set
    assert torch.equal(fewshot_indices(class_orders(labels, 3, seed=1), 5), five)  # deterministic
    assert not torch.equal(fewshot_indices(class_orders(labels, 3, seed=2), 5), five)
    with pytest.raises(ValueError, match=r"6 training image\(s\) of every class; class 1 has 5"):
        fewshot_indices(orders, 6)
    with pytest.raises(ValueError, match="class 3 has 0"):
        fewshot_indices(class_orders(labels, 4, seed=0), 1)  # a class without samples
    with pytest.raises(ValueError, match=r"class 3 \('fox'\) has 0"):  # was: by number only (an empty folder)
        fewshot_indices(class_orders(labels, 4, seed=0), 1, ["cat", "dog", "emu", "fox"])


def _tiny(**kw):
    return vitkit.build_model(dataclasses.replace(TINY_MODEL, **kw)).eval()


def _transform(x: torch.Tensor) -> torch.Tensor:
    return normalize(resize(x.float(), (16, 16)), (0.5,), (0.5,))


@pytest.mark.parametrize("kw", [{}, {"representation_size": 24, "pool": "gap"}])
def test_representations_are_the_frozen_pre_logits(kw):
    model = _tiny(**kw).train()  # put back in training mode afterwards
    ds = make_synthetic(20, seed=0, split="train")
    idx = torch.tensor([3, 0, 17, 5, 9])
    feats = representations(model, ds, idx, _transform, batch_size=2)
    assert model.training
    model.eval()
    with torch.no_grad():
        x = _transform(ds.get_batch(idx)[0])
        want = model.forward_head(model.forward_features(x), pre_logits=True)
    assert feats.shape == (5, kw.get("representation_size", 32)) and feats.dtype == torch.float32
    torch.testing.assert_close(feats, want)
    colour = _tiny(in_chans=3, **kw)  # grey images are repeated to a colour model's channels
    with torch.no_grad():
        want = colour.forward_head(colour.forward_features(x.expand(-1, 3, -1, -1)), pre_logits=True)
    torch.testing.assert_close(representations(colour, ds, idx, _transform), want)


def test_representations_of_a_cnn():
    model = vitkit.build_model(
        vitkit.ModelConfig(
            name="ResNet-26",
            arch="resnet",
            backbone=(1, 2, 4, 1),
            img_size=(16, 16),
            in_chans=1,
            num_classes=10,
        )
    ).eval()
    ds = make_synthetic(6, seed=0, split="train")
    feats = representations(model, ds, torch.arange(6), _transform)
    with torch.no_grad():
        want = model.forward_head(model.forward_features(_transform(ds.images)), pre_logits=True)
    torch.testing.assert_close(feats, want)


def test_fewshot_evaluate_equals_the_computation_by_hand():
    model = _tiny()
    train = make_synthetic(120, seed=0, split="train")
    test = make_synthetic(40, seed=0, split="test")
    embedded = []
    res = fewshot_evaluate(
        model, train, test, _transform, num_classes=10, shots=(3, 1), seeds=2, l2_reg=4.0,
        test_limit=30, progress=embedded.append,
    )  # fmt: skip
    assert (
        list(res["shots"]) == [1, 3] and res["num_test"] == 30 and res["dim"] == 32 and res["l2_reg"] == 4.0
    )
    drawn = set()
    all_train = representations(model, train, torch.arange(len(train)), _transform)
    scored = torch.randperm(40, generator=torch.Generator().manual_seed(0))[:30].sort().values  # test_limit
    test_feats = representations(model, test, scored, _transform)
    for k in (1, 3):
        accs = []
        for seed in range(2):
            idx = fewshot_indices(class_orders(train.labels, 10, seed), k)
            drawn |= set(idx.tolist())
            w, mean, std = ridge_fit(all_train[idx], train.labels[idx], 10, 4.0)
            accs.append(
                float((ridge_predict(test_feats, w, mean, std) == test.labels[scored]).double().mean())
            )
        r = res["shots"][k]
        assert r["seeds"] == pytest.approx(accs, abs=1e-12)
        assert r["mean"] == pytest.approx(sum(accs) / 2) and r["std"] == pytest.approx(
            abs(accs[0] - accs[1]) / 2
        )
    assert sum(embedded) == len(drawn) + 30  # only the drawn training images are embedded, each once


def test_fewshot_evaluate_checks_its_arguments():
    model = _tiny()
    ds = ArrayDataset(torch.zeros(4, 1, 16, 16, dtype=torch.uint8), torch.tensor([0, 0, 1, 1]))
    kw = dict(num_classes=2)
    with pytest.raises(ValueError, match="shots must be positive"):
        fewshot_evaluate(model, ds, ds, _transform, shots=(0, 1), **kw)
    with pytest.raises(ValueError, match="seeds must be at least 1"):
        fewshot_evaluate(model, ds, ds, _transform, seeds=0, **kw)
    with pytest.raises(ValueError, match=r"3 training image\(s\) of every class; class 0 has 2"):
        fewshot_evaluate(model, ds, ds, _transform, shots=(1, 3), **kw)
    with pytest.raises(ValueError, match="channels"):
        representations(_tiny(in_chans=3), ArrayDataset(torch.zeros(2, 2, 16, 16, dtype=torch.uint8), ds.labels[:2]),
                        torch.arange(2), lambda x: x)  # fmt: skip


def test_fewshot_cli_on_pretrained_weights(tmp_path, capsys):
    timm = pytest.importorskip("timm")
    from safetensors.torch import save_file

    from vitkit.cli import main

    path = str(tmp_path / "timm.safetensors")
    save_file(
        timm.create_model("vit_tiny_patch16_224", img_size=16, patch_size=4, depth=2).state_dict(), path
    )
    assert main(["fewshot", path, "--no-progress"]) == 2
    assert "pass --dataset for pretrained weights" in capsys.readouterr().err
    args = [
        "fewshot",
        path,
        "--dataset",
        "synthetic",
        "--shots",
        "2",
        "--seeds",
        "1",
        "--json",
        "--no-progress",
    ]
    assert main(args) == 0  # a colour model on grey images: repeated to its channels
    res = json.loads(capsys.readouterr().out)
    assert res["dim"] == 192 and res["num_test"] == 512 and 0.0 <= res["shots"]["2"]["mean"] <= 1.0


def test_fewshot_of_a_bf16_model_and_a_test_set_in_class_order():
    model = _tiny().bfloat16()
    train = make_synthetic(60, seed=0, split="train")
    order = torch.argsort(train.labels, stable=True)  # a test split in class order, as an image folder's
    test = ArrayDataset(train.images[order], train.labels[order])
    seen = []
    res = fewshot_evaluate(model, train, test, _transform, num_classes=10, shots=(1,), seeds=1, test_limit=20,
                           progress=seen.append)  # fmt: skip
    assert res["num_test"] == 20 and 0.0 <= res["shots"][1]["mean"] <= 1.0
    picked = torch.randperm(60, generator=torch.Generator().manual_seed(0))[:20]
    assert (
        len(set(test.labels[picked].tolist())) > 5
    )  # drawn across the classes, not the first 20 (two classes)


def test_fewshot_refuses_to_redraw_a_runs_test_split_from_its_train_folder(tmp_path, capsys):
    """Was: `fewshot RUN --val-fraction 0.5` on a run trained with data.val_fraction=0.25 drew a test split from
    train/ that held 9 of the run's training images, scored without a word."""
    from PIL import Image

    from vitkit.cli import main

    for c in range(3):
        (tmp_path / "ds" / "train" / f"c{c}").mkdir(parents=True)
        for i in range(8):
            Image.new("L", (8, 8), 30 * c + i).save(tmp_path / "ds" / "train" / f"c{c}" / f"{i}.png")
    run = tmp_path / "run"
    tiny = ["--set", "model.embed_dim=16", "--set", "model.depth=1", "--set", "model.num_heads=1"]
    tiny += ["--set", "model.mlp_dim=16", "--set", "model.img_size=8", "--set", "model.patch_size=4"]
    train = ["train", "--dataset", "imagefolder", "--data-dir", str(tmp_path / "ds"), "--device", "cpu"]
    train += [
        "--steps",
        "1",
        "--batch-size",
        "8",
        "--set",
        "data.val_fraction=0.25",
        "--set",
        "train.compile=false",
    ]
    assert main([*train, *tiny, "--out", str(run), "--no-progress", "--no-report"]) == 0
    shots = ["fewshot", str(run), "--shots", "1", "--seeds", "1", "--no-progress"]
    assert main([*shots, "--val-fraction", "0.5"]) == 2
    err = capsys.readouterr().err
    assert "data.val_fraction=0.25 test split; --val-fraction 0.5 would draw a larger one from train/" in err
    assert main([*shots, "--val-fraction", "0.25"]) == 0  # the run's own split, as without the flag
    assert main([*shots, "--val-fraction", "0.125"]) == 0  # a part of it
