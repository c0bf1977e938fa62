"""Inspecting ViT: analytic checks of the four analyses, the figures, `vitkit inspect|report`, the HTML report."""

from __future__ import annotations

import itertools
import json
import math
import os
import shutil
import subprocess
import sys
import types

import pytest
import torch

from helpers import TINY_FLAGS, tiny_run
from vitkit.cli import main
from vitkit.inspect import (
    analyse,
    attention_maps,
    attention_rollout,
    embedding_pca,
    filter_pca,
    mean_attention_distance,
    posemb_similarity,
    rollout_matrix,
    similarity_by_distance,
)
from vitkit.models import create_model

FILES = ("embedding_pca.png", "posemb_similarity.png", "attention_distance.png", "attention_rollout.png",
         "inspect.json", "report.html")  # fmt: skip
CHROMIUM = "/usr/bin/chromium"


def _tiny(**kw):
    opts = dict(img_size=16, in_chans=1, num_classes=5, depth=3, embed_dim=32, num_heads=4, mlp_dim=32)
    opts.update(kw)
    return create_model("ViT-Ti/4", **opts).eval()


def _mean_pairwise_distance(gh: int, gw: int, patch: int) -> float:
    cells = list(itertools.product(range(gh), range(gw)))
    total = sum(math.dist(a, b) for a in cells for b in cells)
    return patch * total / len(cells) ** 2


# ----------------------------------------------------------------------------- mean attention distance


@pytest.mark.parametrize("grid,prefix", [((4, 4), 1), ((3, 5), 1), ((4, 4), 0)])
def test_uniform_attention_distance_is_mean_pairwise_distance(grid, prefix):
    gh, gw = grid
    n = prefix + gh * gw
    attn = torch.full((2, 3, n, n), 1.0 / n)
    d = mean_attention_distance(attn, grid, patch_size=16, num_prefix_tokens=prefix)
    assert d.shape == (3,)
    torch.testing.assert_close(d, torch.full((3,), _mean_pairwise_distance(gh, gw, 16)), rtol=1e-5, atol=1e-4)


def test_identity_attention_distance_is_zero():
    attn = torch.eye(17).expand(2, 3, 17, 17)
    assert mean_attention_distance(attn, 4, 16).abs().max() < 1e-6


def test_attention_distance_matches_a_loop_and_ignores_the_class_token():
    torch.manual_seed(1)
    g, p = 3, 8
    attn = torch.randn(2, 2, 1 + g * g, 1 + g * g).softmax(-1)
    ref = torch.zeros(2)
    for h in range(2):
        vals = []
        for b in range(2):
            for q in range(g * g):
                row = attn[b, h, 1 + q, 1:]
                row = row / row.sum()
                qy, qx = divmod(q, g)
                vals.append(sum(row[k] * p * math.dist((qy, qx), divmod(k, g)) for k in range(g * g)))
        ref[h] = sum(vals) / len(vals)
    torch.testing.assert_close(mean_attention_distance(attn, g, p), ref, rtol=1e-5, atol=1e-5)
    shifted = attn.clone()
    shifted[:, :, 0] = torch.eye(1 + g * g)[0]  # the class token's own row does not count
    torch.testing.assert_close(mean_attention_distance(shifted, g, p), ref, rtol=1e-5, atol=1e-5)


def test_attention_distance_shape_error_names_the_shapes():
    with pytest.raises(ValueError, match=r"\(B, heads, 17, 17\)"):
        mean_attention_distance(torch.ones(1, 1, 10, 10), 4, 16)


# ----------------------------------------------------------------------------- rollout


def test_rollout_of_identity_is_identity():
    n = 1 + 9
    attns = [torch.eye(n).expand(2, 3, n, n) for _ in range(4)]
    r = rollout_matrix(attns)
    torch.testing.assert_close(r, torch.eye(n).expand(2, n, n))
    assert (r.argmax(-1) == torch.arange(n)).all()  # each token maps to itself
    assert attention_rollout(attns).abs().max() == 0  # the class token takes nothing from the patches
    gap = attention_rollout([torch.eye(9).expand(2, 3, 9, 9)], num_prefix_tokens=0)
    torch.testing.assert_close(gap, torch.full((2, 3, 3), 1 / 9))  # each patch row maps to itself only


def test_rollout_of_one_uniform_layer():
    n = 1 + 16
    r = attention_rollout([torch.full((1, 2, n, n), 1 / n)], grid_size=(4, 4))
    assert r.shape == (1, 4, 4)
    torch.testing.assert_close(r, torch.full((1, 4, 4), 0.5 / n))  # 0.5 * A + 0.5 * I, class token row


@pytest.mark.parametrize("fusion", ["mean", "max", "min"])
def test_rollout_rows_are_distributions(fusion):
    attns = [torch.randn(2, 4, 10, 10).softmax(-1) for _ in range(3)]
    for ratio in (0.0, 0.5, 0.9):
        r = rollout_matrix(attns, fusion, ratio)
        assert (r >= 0).all()
        torch.testing.assert_close(r.sum(-1), torch.ones(2, 10))
    with pytest.raises(ValueError, match="head_fusion='median'"):
        rollout_matrix(attns, "median")


def test_rollout_discards_the_weakest_links_but_never_the_diagonal():
    """discard_ratio=0.34 of 9 weights drops 3: the three weakest off-diagonal ones (0.1, 0.15, 0.2), not the
    diagonal; then 0.5 A + 0.5 I and rows renormalised, worked out by hand."""
    a = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.6, 0.3], [0.15, 0.35, 0.5]])
    kept = torch.tensor([[0.75, 0.15, 0.0], [0.0, 0.8, 0.15], [0.0, 0.175, 0.75]])  # 0.5 A' + 0.5 I
    want = kept / kept.sum(-1, keepdim=True)
    got = rollout_matrix([a[None, None]], "mean", discard_ratio=0.34)[0]
    torch.testing.assert_close(got, want)
    assert not torch.allclose(got, rollout_matrix([a[None, None]], "mean")[0])
    diagonal_low = torch.tensor(
        [[0.05, 0.5, 0.45], [0.4, 0.1, 0.5], [0.3, 0.6, 0.1]]
    )  # the diagonal is weakest
    kept = torch.tensor([[0.525, 0.25, 0.0], [0.0, 0.55, 0.25], [0.0, 0.3, 0.55]])  # 0.3, 0.4, 0.45 dropped
    got = rollout_matrix([diagonal_low[None, None]], "mean", discard_ratio=0.34)[0]
    torch.testing.assert_close(got, kept / kept.sum(-1, keepdim=True))


def test_rollout_head_fusion_differs():
    a = torch.zeros(1, 2, 3, 3)
    a[0, 0] = torch.eye(3)
    a[0, 1] = torch.eye(3)[[1, 2, 0]]  # a permutation
    mx, mn = rollout_matrix([a], "max"), rollout_matrix([a], "min")
    torch.testing.assert_close(mn, torch.eye(3)[None])  # min over heads is 0 off nothing: identity remains
    assert mx[0, 0, 1] > 0 and mx[0, 0, 2] == 0


# ----------------------------------------------------------------------------- embeddings


def test_sincos_posemb_similarity_peaks_at_self_and_falls_with_distance():
    g = 6
    model = _tiny(img_size=4 * g, posemb="sincos2d", embed_dim=64)
    sim = posemb_similarity(model)
    assert sim.shape == (g, g, g, g)
    flat = sim.reshape(g * g, g * g)
    torch.testing.assert_close(flat.diagonal(), torch.ones(g * g))
    assert (flat.argmax(dim=1) == torch.arange(g * g)).all()
    assert ((flat - torch.eye(g * g)).amax(dim=1) < 0.9999).all()  # the peak is unique
    for i, j in itertools.product(range(g), range(g)):  # falls along rows and columns near the patch
        for line, c in ((sim[i, j, i], j), (sim[i, j, :, j], i)):
            assert (line[c + 1 : c + 4].diff() < 0).all() and (line[max(c - 3, 0) : c].diff() > 0).all()
    # and overall: nearer pairs are more similar (sin-cos aliasing makes the far tail slightly non-monotone)
    dist, mean_sim = zip(*similarity_by_distance(sim))
    dist, mean_sim = torch.tensor(dist), torch.tensor(mean_sim)
    assert torch.corrcoef(torch.stack([dist, mean_sim]))[0, 1] < -0.9
    near = [float(mean_sim[(dist > r - 1) & (dist <= r)].mean()) for r in range(1, 5)]
    assert mean_sim[0] == pytest.approx(1.0) and all(a > b for a, b in itertools.pairwise(near)), near


@pytest.mark.parametrize("posemb,pool", [("learn", "token"), ("learn", "gap"), ("learn2d", "token")])
def test_posemb_similarity_of_learned_kinds(posemb, pool):
    model = _tiny(posemb=posemb, pool=pool)
    sim = posemb_similarity(model)
    assert sim.shape == (4, 4, 4, 4)
    torch.testing.assert_close(sim.reshape(16, 16).diagonal(), torch.ones(16))
    with pytest.raises(ValueError, match="no position embedding"):
        posemb_similarity(_tiny(posemb="none"))


def test_pca_components_orthonormal_and_ordered():
    model = _tiny(embed_dim=64, in_chans=3)
    comps, ratio = embedding_pca(model, k=28, return_variance=True)
    assert comps.shape == (28, 3, 4, 4) and ratio.shape == (28,)
    flat = comps.reshape(28, -1).double()
    torch.testing.assert_close(flat @ flat.T, torch.eye(28, dtype=torch.float64), atol=1e-5, rtol=0)
    assert (ratio.diff() <= 1e-7).all() and 0 < ratio.sum() <= 1 + 1e-6
    w = model.patch_embed.proj.weight.detach().double().reshape(64, -1)
    w = w - w.mean(0)
    proj_var = (w @ flat.T).pow(2).sum(0)  # variance captured by each component
    torch.testing.assert_close((proj_var / w.pow(2).sum()).float(), ratio, atol=1e-5, rtol=1e-4)
    assert (proj_var.diff() <= 1e-9).all()
    assert torch.equal(embedding_pca(model, k=28), comps)  # deterministic signs


def test_filter_pca_recovers_a_known_direction():
    torch.manual_seed(0)
    direction = torch.randn(12).double()
    direction /= direction.norm()
    w = torch.randn(200, 1) * 10 * direction + 0.01 * torch.randn(200, 12)
    comps, ratio = filter_pca(w.float().reshape(200, 3, 2, 2), k=3)
    assert abs(float(comps[0].reshape(-1).double() @ direction)) > 0.999 and ratio[0] > 0.99
    assert filter_pca(w.float().reshape(200, 3, 2, 2), k=50)[0].shape[0] == 12  # k capped at the rank


# ----------------------------------------------------------------------------- on models


def test_attention_maps_and_analyse_on_a_model():
    model = _tiny().train()
    x = torch.randn(5, 1, 16, 16)
    attns = attention_maps(model, x)
    assert model.training  # mode restored
    assert len(attns) == 3 and attns[0].shape == (5, 4, 17, 17)
    torch.testing.assert_close(attns[0].sum(-1), torch.ones(5, 4, 17))
    a = analyse(model, x, k=8, batch_size=2)
    assert a.distances.shape == (3, 4) and a.rollout.shape == (5, 4, 4) and a.probs.shape == (5, 5)
    max_px = math.dist((0, 0), (3, 3)) * 4
    assert (a.distances >= 0).all() and (a.distances <= max_px).all()
    whole = torch.stack([mean_attention_distance(t, 4, 4) for t in attns])
    torch.testing.assert_close(a.distances, whole, rtol=1e-4, atol=1e-4)  # batching does not change it
    # a layer at a time (each layer's attention freed before the next) gives what all the layers' maps give
    torch.testing.assert_close(a.rollout, attention_rollout(attns, grid_size=4), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(a.probs, model.eval()(x).softmax(-1), rtol=1e-5, atol=1e-6)
    model.train()
    js = a.to_json()
    json.dumps(js)
    assert len(js["mean_attention_distance"]["per_layer_per_head"]) == 3
    gap = analyse(_tiny(pool="gap", posemb="none"), x, k=4)
    assert gap.posemb_sim is None and gap.rollout.shape == (5, 4, 4)


def test_plots_return_figures():
    from matplotlib.figure import Figure

    from vitkit.inspect import plots

    model = _tiny(in_chans=3)
    imgs = torch.randint(0, 256, (3, 3, 16, 16), dtype=torch.uint8)
    a = analyse(model, imgs.float() / 255, k=6)
    figs = [
        plots.plot_embedding_pca(a.pca, a.pca_variance),
        plots.plot_posemb_similarity(a.posemb_sim),
        plots.plot_attention_distance(a.distances),
        plots.plot_attention_rollout(imgs, a.rollout, ["a", "b", "c"]),
        plots.plot_predictions(
            imgs, a.rollout, a.probs, ["c0", "c1", "c2", "c3", "c4"], torch.tensor([0, 1, 2])
        ),
        plots.plot_confusion([[3, 1], [0, 4]], ["x", "y"]),
        plots.plot_training_curves(
            [
                {"step": 1, "loss": 2.0, "lr": 0.1, "train_top1": 0.2},
                {"step": 1, "split": "test", "top1": 0.3, "loss": 1.9},
            ]
        ),
        plots.plot_message("nothing"),
    ]
    for fig in figs:
        assert isinstance(fig, Figure)
        png = plots.figure_png(fig, dpi=40)
        assert png.startswith(b"\x89PNG")


# ----------------------------------------------------------------------------- CLI and report


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from vitkit.train.loop import train

    out = tmp_path_factory.mktemp("inspect") / "run"
    train(tiny_run(epochs=3), str(out))
    return out


def test_inspect_run_writes_all_files(run_dir, tmp_path, capsys):
    out = tmp_path / "insp"
    assert main(["inspect", str(run_dir), "--out", str(out), "--num-images", "12", "--show", "4"]) == 0
    for name in FILES:
        assert (out / name).stat().st_size > 0, name
    js = json.loads((out / "inspect.json").read_text())
    assert js["num_images"] == 12 and "test images of synthetic" in js["images"]
    per = js["mean_attention_distance"]["per_layer_per_head"]
    assert len(per) == 2 and len(per[0]) == 2  # tiny run: depth 2, 2 heads
    uniform = js["mean_attention_distance"]["uniform_attention"]
    assert uniform == pytest.approx(_mean_pairwise_distance(4, 4, 4), abs=1e-3)
    assert len(js["embedding_pca"]["explained_variance_ratio"]) == 16  # 1x4x4 filters: rank 16 < 28
    assert js["posemb_similarity"]["by_distance"][0]["mean_cosine"] == pytest.approx(1.0)
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 7  # curves, confusion, predictions + the four figures
    assert "http://" not in html and "https://" not in html


def test_inspect_image_files(run_dir, tmp_path, caplog):
    from PIL import Image

    paths = []
    for i, mode in enumerate(("L", "RGB")):
        p = tmp_path / f"in{i}.png"
        Image.new(mode, (20, 24), 90 + 60 * i).save(p)
        paths.append(str(p))
    out = tmp_path / "files"
    rollout = ["--head-fusion", "max", "--discard-ratio", "0.5"]
    with caplog.at_level("WARNING"):
        assert (
            main(["inspect", str(run_dir), "--images", *paths, "--out", str(out), *rollout, "--k", "99"]) == 0
        )
    assert "--k 99: the patch-embedding filters have 16 principal components" in caplog.text  # 1x4x4 filters
    js = json.loads((out / "inspect.json").read_text())
    assert js["num_images"] == 2 and js["images"] == "2 image file(s)"
    assert (js["head_fusion"], js["discard_ratio"]) == ("max", 0.5)
    assert all((out / name).exists() for name in FILES)
    html = (out / "report.html").read_text()  # the user's images are not called test images
    assert "Predictions on the given images" in html and "Test predictions" not in html


def test_report_and_inspect_never_write_over_a_runs_files(run_dir, tmp_path, capsys):
    """Was: `report --out RUN/config.json` wrote HTML over the run's config (and the weights likewise), and
    `inspect --out OTHER_RUN` replaced that run's report.html; every other file was replaced without asking."""
    files = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    err = lambda: capsys.readouterr().err  # noqa: E731
    for name in ("config.json", "model.safetensors", "summary.json"):
        assert main(["report", str(run_dir), "--out", str(run_dir / name), "--overwrite"]) == 2
        assert "one of a run folder's own files" in err()
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "manifest.json").write_text("{}")
    assert main(["report", str(run_dir), "--out", str(ckpt / "report.html"), "--overwrite"]) == 2
    assert "is a training checkpoint" in err()
    assert main(["report", str(run_dir), "--out", str(tmp_path)]) == 2
    assert "is a folder; give a file name" in err()
    mine = tmp_path / "mine.html"
    mine.write_text("mine")
    assert main(["report", str(run_dir), "--out", str(mine)]) == 2
    assert "already exists; pass --overwrite" in err() and mine.read_text() == "mine"
    for target, says in ((run_dir, "is a vitkit run folder"), (ckpt, "is a training checkpoint")):
        assert main(["inspect", str(run_dir), "--out", str(target), "--overwrite"]) == 2
        assert says in err()
    earlier = tmp_path / "insp"
    earlier.mkdir()
    (earlier / "inspect.json").write_text("{}")
    assert main(["inspect", str(run_dir), "--out", str(earlier)]) == 2
    assert "already holds inspect.json; pass --overwrite" in err()
    assert main(["inspect", str(run_dir), "--out", str(mine)]) == 2
    assert "is a file; vitkit inspect writes a folder" in err()
    assert {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()} == files
    assert main(["report", str(run_dir), "--out", str(mine), "--overwrite", "--num-images", "4"]) == 0
    assert mine.stat().st_size > 10_000


def test_report_command_and_noise_fallback(run_dir, tmp_path, capsys):
    assert main(["report", str(run_dir), "--num-images", "8"]) == 0
    assert (run_dir / "report.html").stat().st_size > 10_000
    broken = tmp_path / "run"  # a run whose dataset cannot be loaded: noise images, still a report
    shutil.copytree(run_dir, broken)
    cfg = json.loads((broken / "config.json").read_text())
    cfg["data"]["dataset"] = "imagefolder"
    cfg["data"]["data_dir"] = str(tmp_path / "missing")
    (broken / "config.json").write_text(json.dumps(cfg))
    assert main(["report", str(broken), "--num-images", "4"]) == 0
    html = (broken / "report.html").read_text()
    assert "uniform-noise" in html and html.count("data:image/png;base64,") == 6  # no prediction grid
    assert main(["report", str(tmp_path / "nothing")]) == 2
    assert "not a run folder" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("file", "content", "says"),
    [
        ("summary.json", [1, 2], r"summary\.json: expected a JSON object, got list"),
        ("summary.json", {"test_top1": "x"}, r"summary\.json: 'test_top1' must be a number, got 'x'"),
        ("config.json", {}, r"config\.json: missing the section\(s\) model, data, optim, train"),
        ("summary.json", {"tta": "hflip"}, r"summary\.json: 'test_top1_no_tta' must be a number, got None"),
        (
            "summary.json",
            {"confusion": [["a", "b"], ["c", "d"]]},
            r"summary\.json: 'confusion' must be a square",
        ),
        (
            "summary.json",
            {"confusion": [[1, 0], [0, 1]]},
            r"summary\.json: a 2x2 confusion matrix for 10 classes",
        ),
    ],
    ids=[
        "summary-list",
        "summary-string",
        "config-empty",
        "tta-without-plain",
        "confusion-strings",
        "confusion-size",
    ],
)
def test_report_names_a_broken_run_file(run_dir, tmp_path, capsys, file, content, says):
    """Was: a list in summary.json was a TypeError traceback, a string top-1 "Unknown format code '%'" naming no
    file, and an empty config.json "not a run folder"; a TTA summary without its plain top-1 "error:
    test_top1_no_tta", a confusion matrix of strings a float() error naming no file, one of another size a
    silent report."""
    import re

    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    path = run / file
    data = json.loads(path.read_text())
    if isinstance(content, dict) and content:
        data.update(content)
    else:
        data = content
    path.write_text(json.dumps(data))
    assert main(["report", str(run), "--num-images", "4"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.search(says, err[0]), err


@pytest.mark.parametrize(
    ("line", "says"),
    [
        ("[1, 2]", r"metrics\.jsonl:2: expected a JSON object, got list"),
        ('{"step": 3, "loss": "abc"}', r"metrics\.jsonl:2: 'loss' must be a number, got 'abc'"),
        ('{"loss": 0.5}', r"metrics\.jsonl:2: no 'step'"),
        ('{"step": 3, "split": 7}', r"metrics\.jsonl:2: 'split' must be a split's name, got 7"),
    ],
    ids=["list", "string-loss", "no-step", "split-number"],
)
def test_report_names_a_broken_metrics_line(run_dir, tmp_path, capsys, line, says):
    """Was: a list line an AttributeError traceback, a string loss a TypeError one, a record without a step
    "error: step" naming nothing."""
    import re

    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    lines = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text("\n".join([lines[0], line, *lines[1:]]) + "\n")
    assert main(["report", str(run), "--num-images", "4"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.search(says, err[0]), err


def test_json_that_is_not_utf8_is_named(run_dir, tmp_path, capsys):
    """Was: "'utf-8' codec can't decode byte 0xff" with no file named, from eval, report, inspect and export."""
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    for name in ("summary.json", "config.json"):
        path = run / name
        good = path.read_bytes()
        path.write_bytes(b'{"a": "\xff"}')
        for cmd in (
            ["report", str(run)],
            ["eval", str(run)],
            ["export", str(run), "--out", str(tmp_path / "x.onnx")],
        ):
            assert main(cmd) == 2
            err = capsys.readouterr().err
            assert name in err and "utf-8" in err, (cmd, err)
        path.write_bytes(good)


def test_inspect_source_without_converter(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "vitkit.convert", types.ModuleType("vitkit.convert"))
    assert main(["inspect", "ViT-B/16-nonexistent", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model_from_source" in err[0] and "not a run folder" in err[0]


def test_inspect_source_through_converter(monkeypatch, tmp_path):
    fake = types.ModuleType("vitkit.convert")
    fake.model_from_source = lambda source: _tiny(in_chans=3, num_classes=0)
    monkeypatch.setitem(sys.modules, "vitkit.convert", fake)
    out = tmp_path / "src"
    assert main(["inspect", "fake:tiny", "--out", str(out), "--num-images", "3"]) == 0
    assert all((out / name).exists() for name in FILES)
    assert "noise" in json.loads((out / "inspect.json").read_text())["images"]


def test_train_writes_report(tmp_path):
    out = tmp_path / "run"
    assert main(["train", *TINY_FLAGS, "--epochs", "1", "--out", str(out), "--no-progress"]) == 0
    assert (out / "report.html").exists()
    out2 = tmp_path / "run2"
    assert (
        main(["train", *TINY_FLAGS, "--steps", "2", "--out", str(out2), "--no-progress", "--no-report"]) == 0
    )
    assert not (out2 / "report.html").exists()


def test_train_survives_a_failing_report(tmp_path, monkeypatch, caplog):
    import vitkit.cli.inspect as ci

    def boom(*a, **k):
        raise RuntimeError("plotting exploded")

    monkeypatch.setattr(ci, "report_for_run", boom)
    out = tmp_path / "run"
    assert main(["train", *TINY_FLAGS, "--steps", "2", "--out", str(out), "--no-progress"]) == 0
    assert (out / "model.safetensors").exists() and not (out / "report.html").exists()
    assert "plotting exploded" in caplog.text


# ----------------------------------------------------------------------------- the browser


def _chromium(profile, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-dev-shm-usage", f"--user-data-dir={profile}", *args]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} absent: apt-get install chromium")
def test_report_renders_in_headless_chromium(run_dir, tmp_path):
    import numpy as np
    from PIL import Image

    report = run_dir / "report.html"
    if not report.exists():
        assert main(["report", str(run_dir), "--num-images", "8"]) == 0
    url = report.resolve().as_uri()
    r = _chromium(tmp_path / "p1", "--dump-dom", "--virtual-time-budget=5000", url)
    assert r.returncode == 0, r.stderr[-2000:]
    dom = r.stdout
    import re

    total = re.search(r'data-img-total="(\d+)"', dom)
    broken = re.search(r'data-img-broken="(\d+)"', dom)
    assert total and broken, "the page's load handler did not run: " + dom[:500]
    assert int(total.group(1)) == dom.count("<img ") == 7
    assert int(broken.group(1)) == 0, "broken images in report.html"
    shot = tmp_path / "shot.png"
    r = _chromium(tmp_path / "p2", f"--screenshot={shot}", "--window-size=1200,2000", "--hide-scrollbars",
                  "--virtual-time-budget=5000", url)  # fmt: skip
    assert r.returncode == 0 and shot.exists(), r.stderr[-2000:]
    px = np.asarray(Image.open(shot).convert("L"), dtype=np.float64)
    assert px.shape == (2000, 1200)
    assert px.std() > 20 and (px < 128).mean() > 0.01  # not blank: text and figures drawn


def test_run_paths_are_told_from_model_folders(run_dir, tmp_path):
    from vitkit.cli.subjects import is_run_path

    assert is_run_path(str(run_dir)) and is_run_path(str(run_dir / "model.safetensors"))
    assert is_run_path(str(run_dir / "checkpoints" / "best"))
    hf = tmp_path / "hf"  # a Hugging Face folder also holds config.json + model.safetensors
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"model_type": "vit", "hidden_size": 32}))
    (hf / "model.safetensors").write_bytes(b"")
    assert not is_run_path(str(hf)) and not is_run_path(str(tmp_path / "nothing"))


def test_a_model_folder_is_analysed_with_its_own_mean_and_std(tmp_path, capsys):
    """Was: a timm folder (or hub id, or exported file) was normalised with 0.5/0.5, whatever its weights took
    (DeiT: ImageNet's mean and std); `vitkit report` on one complained of unknown config keys."""
    timm = pytest.importorskip("timm")
    from vitkit.cli.subjects import load_subject

    t = timm.create_model(
        "deit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, embed_dim=32, depth=1,
        num_heads=2, num_classes=5,
    )  # fmt: skip
    timm.models.save_for_hf(t, str(tmp_path / "deit"), safe_serialization=True)
    subject = load_subject(str(tmp_path / "deit"))
    assert subject.mean == pytest.approx(t.pretrained_cfg["mean"]) and subject.mean != (0.5, 0.5, 0.5)
    assert subject.std == pytest.approx(t.pretrained_cfg["std"]) and subject.run is None
    assert main(["report", str(tmp_path / "deit")]) == 2
    assert "holds a model (timm or transformers weights), not a vitkit run" in capsys.readouterr().err


def test_a_checkpoints_report_and_inspection_keep_the_final_weights_ones(run_dir, tmp_path, capsys):
    """Was: `report RUN/checkpoints/best` replaced RUN/report.html (the final weights') without a word, and
    neither output said which weights it analysed."""
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    assert main(["report", str(run), "--num-images", "4"]) == 0
    final = (run / "report.html").read_bytes()
    assert main(["report", str(run / "checkpoints" / "best"), "--num-images", "4"]) == 0
    assert (run / "report.html").read_bytes() == final
    html = (run / "report-best.html").read_text()
    assert "weights analysed" in html and os.path.join("checkpoints", "best", "model.safetensors") in html
    assert "(of the run&#x27;s final weights)" in html or "(of the run's final weights)" in html
    assert main(["inspect", str(run / "checkpoints" / "best"), "--num-images", "4"]) == 0
    js = json.loads((run / "inspect-best" / "inspect.json").read_text())
    assert (
        js["weights"].endswith(os.path.join("best", "model.safetensors")) and not (run / "inspect").exists()
    )


def test_image_files_are_read_as_predict_reads_them(run_dir, tmp_path):
    """Was: --images were read at the model's size, not at the run's native size then resized as predict and
    training do; a 4-channel model failed with a traceback; a folder's first (single-class) images were analysed."""
    from PIL import Image

    from vitkit.cli.common import UserError
    from vitkit.cli.subjects import Subject, file_inputs, load_subject, sample_inputs
    from vitkit.data.imagefolder import load_image
    from vitkit.data.transforms import resize

    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    data = json.loads((run / "data.json").read_text())
    (run / "data.json").write_text(json.dumps(data | {"native_size": [8, 8]}))
    img = tmp_path / "x.png"
    Image.fromarray((torch.arange(24 * 20) % 251).to(torch.uint8).reshape(24, 20).numpy()).save(img)
    got = file_inputs(load_subject(str(run)), [str(img)]).images
    want = resize(load_image(str(img), (8, 8), 1)[None].float(), (16, 16)).round().clamp(0, 255)
    assert torch.equal(got.float(), want)
    four = Subject(_tiny(in_chans=4), "four", (0.5,) * 4, (0.5,) * 4, [])
    with pytest.raises(UserError, match=r"takes 4-channel images; image files give 1 \(L\) or 3 \(RGB\)"):
        file_inputs(four, [str(img)])
    inputs = sample_inputs(load_subject(str(run_dir)), 12)
    assert len(set(inputs.labels.tolist())) > 1 and "drawn at random" in inputs.description


def test_pca_stops_at_the_rank_of_the_centred_filters():
    """Was: min(D, C*P*P) components, the last of D a zero-variance direction drawn as a component."""
    model = _tiny(embed_dim=8, num_heads=2)  # 8 filters of 1x4x4: centred, they span 7 dimensions
    comps, ratio = embedding_pca(model, k=28, return_variance=True)
    assert comps.shape[0] == 7 and float(ratio.min()) > 0


def test_inspect_writes_all_of_its_files_or_none_and_checks_its_default_folder_first(
    run_dir, tmp_path, capsys
):
    """Was: a report that could not be built (a broken summary.json) failed after the PNGs and inspect.json
    were written (listing a report.html never made); a default folder that is a file failed after the analysis
    with "[Errno 17] File exists"; `--out RUN/inspect` (the default named) asked for --overwrite."""
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    summary = json.loads((run / "summary.json").read_text())
    (run / "summary.json").write_text(json.dumps(summary | {"confusion": [[1, 0], [0, 1]]}))
    assert main(["inspect", str(run), "--num-images", "2"]) == 2
    assert "2x2 confusion matrix" in capsys.readouterr().err
    assert not (run / "inspect").exists()
    (run / "summary.json").write_text(json.dumps(summary))
    (run / "inspect").write_text("x")
    assert main(["inspect", str(run), "--num-images", "2"]) == 2
    assert f"{run / 'inspect'} is a file; vitkit inspect writes a folder" in capsys.readouterr().err
    (run / "inspect").unlink()
    (run / "inspect").mkdir()
    (run / "inspect" / "report.html").mkdir()  # a folder in the way of the last file: nothing written
    assert main(["inspect", str(run), "--num-images", "2"]) == 2
    assert "a folder is in the way of the file to write" in capsys.readouterr().err
    assert [p.name for p in (run / "inspect").iterdir()] == ["report.html"]
    (run / "inspect" / "report.html").rmdir()
    for _ in range(2):  # the second time into an inspection already there, named as --out
        assert main(["inspect", str(run), "--num-images", "2", "--out", str(run / "inspect")]) == 0
    assert sorted(p.name for p in (run / "inspect").iterdir()) == sorted(FILES)


def test_a_folder_where_the_report_goes_is_named_before_any_work(run_dir, tmp_path, capsys):
    """Was: RUN/report.html as a folder failed after the analysis, naming the temp file of the write."""
    from vitkit.atomic import atomic_write_bytes

    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    (run / "report.html").unlink(missing_ok=True)
    (run / "report.html").mkdir()
    assert main(["report", str(run), "--num-images", "2"]) == 2
    assert f"{run / 'report.html'} is a folder; vitkit report writes a file" in capsys.readouterr().err
    with pytest.raises(
        IsADirectoryError, match=r"a folder is in the way of the file to write: '.*report\.html'"
    ):
        atomic_write_bytes(str(run / "report.html"), b"x")
    assert [p.name for p in run.iterdir() if p.name.startswith(".tmp-")] == []
