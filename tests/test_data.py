"""Dataset readers (IDX, CIFAR, image folders, synthetic) including corrupt files and missing data."""

from __future__ import annotations

import dataclasses
import gzip
import json
import logging
import os
import pickle
import shutil

import numpy as np
import pytest
import torch

from vitkit.config import DataConfig
from vitkit.data.cifar import load_cifar, safe_unpickle
from vitkit.data.datasets import (
    DataNotFoundError,
    channel_stats,
    load_dataset,
    load_mnist_like,
    make_synthetic,
)
from vitkit.data.idx import read_idx, read_idx_pair, write_idx
from vitkit.data.imagefolder import load_image, load_imagefolder


def write_mnist(folder, n_train=20, n_test=10, gz=True, layout="flat"):
    """Tiny MNIST-format files; layout 'flat' or 'torchvision' (FashionMNIST/raw)."""
    if layout == "torchvision":
        folder = os.path.join(folder, "FashionMNIST", "raw")
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    ext = ".gz" if gz else ""
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(
            os.path.join(folder, f"{prefix}-images-idx3-ubyte{ext}"),
            rng.integers(0, 256, (n, 28, 28), dtype=np.uint8),
        )
        write_idx(
            os.path.join(folder, f"{prefix}-labels-idx1-ubyte{ext}"), rng.integers(0, 10, n, dtype=np.uint8)
        )
    return folder


@pytest.mark.parametrize("gz", [True, False])
def test_idx_roundtrip(tmp_path, gz):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = str(tmp_path / ("a.idx" + (".gz" if gz else "")))
    write_idx(path, arr)
    np.testing.assert_array_equal(read_idx(path), arr)


def test_idx_bad_magic_truncated_and_labels(tmp_path):
    bad = tmp_path / "bad"
    bad.write_bytes(b"\x12\x34\x08\x01" + b"\x00" * 8)
    with pytest.raises(ValueError, match="bad IDX magic number"):
        read_idx(str(bad))
    arr = np.zeros((5, 28, 28), dtype=np.uint8)
    path = str(tmp_path / "img")
    write_idx(path, arr)
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[:-100])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        read_idx(path)
    gzpath = tmp_path / "x.gz"
    gzpath.write_bytes(gzip.compress(data)[:40])
    with pytest.raises(ValueError, match="corrupt gzip"):
        read_idx(str(gzpath))
    img, lab = str(tmp_path / "i"), str(tmp_path / "l")
    write_idx(img, np.zeros((3, 28, 28), dtype=np.uint8))
    write_idx(lab, np.array([0, 11, 2], dtype=np.uint8))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 10\)"):
        read_idx_pair(img, lab)
    write_idx(lab, np.array([0, 1], dtype=np.uint8))
    with pytest.raises(ValueError, match="has 3 images but"):
        read_idx_pair(img, lab)


@pytest.mark.parametrize("layout", ["flat", "torchvision"])
def test_fashion_mnist_from_data_dir(tmp_path, layout):
    write_mnist(str(tmp_path), layout=layout)
    splits = load_mnist_like("fashion-mnist", str(tmp_path), download=False)
    assert splits.train.images.shape == (20, 1, 28, 28) and splits.test.images.shape == (10, 1, 28, 28)
    assert splits.classes[0] == "T-shirt/top" and len(splits.mean) == 1
    rng = np.random.default_rng(0)  # write_mnist's draws, in its order: the pixels and labels as written
    for split, n in ((splits.train, 20), (splits.test, 10)):
        np.testing.assert_array_equal(
            split.images[:, 0].numpy(), rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        )
        np.testing.assert_array_equal(split.labels.numpy(), rng.integers(0, 10, n, dtype=np.uint8))
    assert splits.mean[0] == pytest.approx(splits.train.images.double().mean().item() / 255, abs=1e-6)


def test_where_a_dataset_was_read_is_logged_once(tmp_path, caplog):
    """`vitkit train` reads the test set again for its report: "loaded ... from ..." is said once (INFO), then
    at DEBUG; another folder is said again."""
    write_mnist(str(tmp_path / "a"))
    write_mnist(str(tmp_path / "b"))
    with caplog.at_level(logging.DEBUG, logger="vitkit.data.datasets"):
        for folder in ("a", "a", "b"):
            load_mnist_like("fashion-mnist", str(tmp_path / folder), download=False)
    said = [(r.levelno, r.getMessage()) for r in caplog.records if r.getMessage().startswith("loaded ")]
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    assert said == [
        (logging.INFO, f"loaded fashion-mnist from {a}"),
        (logging.DEBUG, f"loaded fashion-mnist from {a}"),
        (logging.INFO, f"loaded fashion-mnist from {b}"),
    ]


def test_idx_files_written_by_hand_are_read(tmp_path):
    """The IDX layout without vitkit's writer: magic 0x0000 0803 (uint8, 3 dims), big-endian sizes, pixels."""
    pixels = bytes(range(2 * 3 * 4))
    header = b"\x00\x00\x08\x03" + b"".join(n.to_bytes(4, "big") for n in (2, 3, 4))
    (tmp_path / "images").write_bytes(header + pixels)
    np.testing.assert_array_equal(
        read_idx(str(tmp_path / "images")), np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    )


def test_vitkit_data_env(tmp_path, monkeypatch):
    write_mnist(str(tmp_path / "fashion-mnist"), gz=False)
    monkeypatch.setenv("VITKIT_DATA", str(tmp_path))
    assert len(load_mnist_like("fashion-mnist", None, download=False).train) == 20


def test_missing_data_names_every_place(tmp_path, monkeypatch):
    monkeypatch.setenv("VITKIT_DATA", str(tmp_path / "env"))
    with pytest.raises(DataNotFoundError) as e:
        load_mnist_like("mnist", None, download=False)
    msg = str(e.value)
    assert str(tmp_path / "env") in msg and "--data-dir" in msg and "download" in msg


def test_a_data_folder_given_is_the_only_place_looked_in(tmp_path, monkeypatch):
    """Was: a --data-dir that did not exist was passed over for $VITKIT_DATA or Debian's package, silently."""
    write_mnist(str(tmp_path / "env" / "fashion-mnist"))
    monkeypatch.setenv("VITKIT_DATA", str(tmp_path / "env"))
    assert len(load_mnist_like("fashion-mnist", None, download=False).train) == 20
    with pytest.raises(DataNotFoundError) as e:
        load_mnist_like("fashion-mnist", str(tmp_path / "nonexistent"), download=False)
    msg = str(e.value)
    assert (
        f"the data folder {tmp_path / 'nonexistent'} (a data folder given is the only place looked in)" in msg
    )
    assert str(tmp_path / "env") not in msg.split("Get it by")[0]


def test_real_fashion_mnist_if_installed():
    if not os.path.isdir("/usr/share/datasets/fashion-mnist"):
        pytest.skip("Debian's dataset-fashion-mnist is not installed")
    splits = load_mnist_like("fashion-mnist", None, download=False)
    assert len(splits.train) == 60000 and len(splits.test) == 10000
    assert torch.bincount(splits.test.labels).tolist() == [1000] * 10


def write_cifar(folder, n=8):
    d = os.path.join(folder, "cifar-10-batches-py")
    os.makedirs(d, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"labels": list(rng.integers(0, 10, n)),
        }
        with open(os.path.join(d, name), "wb") as f:
            pickle.dump(batch, f)
    with open(os.path.join(d, "batches.meta"), "wb") as f:
        pickle.dump({b"label_names": [f"c{i}".encode() for i in range(10)]}, f)
    return d


def test_cifar10_reader(tmp_path):
    write_cifar(str(tmp_path))
    splits = load_cifar("cifar10", str(tmp_path), download=False)
    assert splits.train.images.shape == (40, 3, 32, 32) and len(splits.test) == 8
    assert splits.classes[3] == "c3"
    rng = np.random.default_rng(0)  # write_cifar's draws: batches 1-5 then the test batch, rows channel-major
    batches = [(rng.integers(0, 256, (8, 3072), dtype=np.uint8), rng.integers(0, 10, 8)) for _ in range(6)]
    for split, part in ((splits.train, batches[:5]), (splits.test, batches[5:])):
        want = np.concatenate([d for d, _ in part]).reshape(-1, 3, 32, 32)
        np.testing.assert_array_equal(split.images.numpy(), want)
        np.testing.assert_array_equal(split.labels.numpy(), np.concatenate([y for _, y in part]))


class Evil:
    def __reduce__(self):
        return (os.system, ("touch PWNED_MARKER",))


def test_cifar_malicious_pickle_runs_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    d = write_cifar(str(tmp_path))
    with open(os.path.join(d, "data_batch_1"), "wb") as f:
        pickle.dump({b"data": Evil(), b"labels": [0]}, f)
    with pytest.raises(ValueError, match=r"refusing to load global (posix|os)\.system"):
        load_cifar("cifar10", str(tmp_path), download=False)
    assert not os.path.exists(tmp_path / "PWNED_MARKER")


def test_cifar_corrupt_file(tmp_path):
    d = write_cifar(str(tmp_path))
    with open(os.path.join(d, "test_batch"), "wb") as f:
        f.write(b"\x80\x04garbage")
    with pytest.raises(ValueError, match="test_batch"):
        load_cifar("cifar10", str(tmp_path), download=False)
    with open(os.path.join(d, "test_batch"), "wb") as f:
        pickle.dump({b"data": np.zeros((2, 10), np.uint8), b"labels": [0, 1]}, f)
    with pytest.raises(ValueError, match=r"shape \(N, 3072\)"):
        load_cifar("cifar10", str(tmp_path), download=False)
    assert safe_unpickle(os.path.join(d, "batches.meta"))["label_names"][0] == b"c0"


def write_folder(root, split, classes=("cat", "dog"), n=3, modes=("RGB", "L", "RGBA", "P")):
    from PIL import Image

    for c in classes:
        os.makedirs(os.path.join(root, split, c), exist_ok=True)
        for i in range(n):
            mode = modes[i % len(modes)]
            img = Image.new("RGB", (20 + i, 16), (40 * i, 80, 200 if c == "dog" else 10)).convert(mode)
            img.save(os.path.join(root, split, c, f"{i}.png"))


def test_imagefolder_train_val(tmp_path):
    write_folder(str(tmp_path), "train")
    write_folder(str(tmp_path), "val", n=2)
    splits = load_imagefolder(str(tmp_path), (8, 8))
    assert splits.classes == ["cat", "dog"]
    assert splits.train.images.shape == (6, 3, 8, 8) and len(splits.test) == 4
    assert sorted(splits.train.labels.tolist()) == [0, 0, 0, 1, 1, 1]
    # stored shuffled, not class by class (channel_stats samples the first images)
    assert splits.train.labels.tolist() != sorted(splits.train.labels.tolist())
    again = load_imagefolder(str(tmp_path), (8, 8))
    assert torch.equal(again.train.images, splits.train.images)  # one fixed order


def test_imagefolder_split_fraction_and_errors(tmp_path):
    write_folder(str(tmp_path), "train", n=5)
    write_folder(str(tmp_path), "train", classes=("emu",), n=10)
    for seed in range(4):  # was: 20% of all files, so a class could get none or twice its share
        splits = load_imagefolder(str(tmp_path), (8, 8), val_fraction=0.2, seed=seed)
        assert len(splits.train) == 16 and splits.test.labels.bincount().tolist() == [1, 1, 2]
    with pytest.raises(ValueError, match=r"val_fraction=0\.01 holds out 0 of its 20 training images"):
        load_imagefolder(str(tmp_path), (8, 8), val_fraction=0.01)
    with pytest.raises(ValueError, match="val_fraction"):
        load_imagefolder(str(tmp_path), (8, 8))
    bad = tmp_path / "train" / "cat" / "broken.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"broken\.png"):
        load_imagefolder(str(tmp_path), (8, 8), val_fraction=0.2)


def test_load_image_modes(tmp_path):
    write_folder(str(tmp_path), "x", classes=("a",), n=4)
    for i in range(4):
        img = load_image(str(tmp_path / "x" / "a" / f"{i}.png"), (12, 10), 3)
        assert img.shape == (3, 12, 10) and img.dtype == torch.uint8
        assert load_image(str(tmp_path / "x" / "a" / f"{i}.png"), (7, 7), 1).shape == (1, 7, 7)


def test_synthetic_is_deterministic():
    a, b = make_synthetic(64, seed=3), make_synthetic(64, seed=3)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert not torch.equal(make_synthetic(64, seed=3, split="test").images, a.images)


def test_unknown_dataset():
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'"):
        load_dataset(DataConfig(dataset="imagenet"))


def test_a_runs_saved_data_folder_that_is_not_here_falls_back_with_a_warning(tmp_path, caplog):
    """A run trained elsewhere (its data.data_dir absent here) evaluates from the usual places, saying so; a
    --data-dir given wins; an imagefolder run's folder has no other place: its absence is an error asking for
    --data-dir (was: "expected ROOT/train/<class>/<image>", as if the folder were wrong)."""
    from vitkit.cli.common import UserError
    from vitkit.cli.rundata import local_data

    away = DataConfig(dataset="fashion-mnist", data_dir=str(tmp_path / "elsewhere"))
    assert local_data(away, None, "RUN").data_dir is None
    assert "RUN's data folder" in caplog.text and "is not here" in caplog.text
    assert local_data(away, "/given").data_dir == "/given"
    assert local_data(dataclasses.replace(away, data_dir=str(tmp_path))).data_dir == str(tmp_path)
    folder = DataConfig(dataset="imagefolder", data_dir=str(tmp_path / "elsewhere"))
    with pytest.raises(UserError, match=r"RUN's image folder .*elsewhere is not here .*pass --data-dir ROOT"):
        local_data(folder, None, "RUN")
    assert local_data(folder, "/given").data_dir == "/given"
    assert local_data(dataclasses.replace(folder, data_dir=str(tmp_path))).data_dir == str(tmp_path)


def test_a_failed_download_leaves_no_empty_folders(tmp_path, monkeypatch):
    """Was: a download into a data folder that failed left DIR/FashionMNIST/raw behind."""
    import vitkit.data.datasets as ds

    def failing_fetch(name, target):
        os.makedirs(os.path.join(target, "FashionMNIST", "raw"))
        raise ConnectionError("no network")

    monkeypatch.setattr(ds, "_fetch_mnist_like", failing_fetch)
    monkeypatch.setattr(ds, "downloads_allowed", lambda download: True)
    target = tmp_path / "new"
    with pytest.raises(DataNotFoundError, match="ConnectionError: no network"):
        load_mnist_like("fashion-mnist", str(target))
    assert not target.exists()
    kept = tmp_path / "kept"
    (kept / "empty").mkdir(parents=True)
    with pytest.raises(DataNotFoundError):
        load_mnist_like("fashion-mnist", str(kept))
    assert sorted(p.name for p in kept.iterdir()) == ["empty"]  # only what the download made is gone


def test_imagefolder_16_bit_hidden_files_and_empty_classes(tmp_path, caplog):
    """Was: 16-bit PNGs saturated to white, a macOS ._name file aborted the load, an empty class folder became a
    class without a word."""
    from PIL import Image

    wide = (np.arange(256).reshape(16, 16) * 257).astype(np.uint16)  # 0..65535
    Image.fromarray(wide).save(tmp_path / "wide.png")
    assert Image.open(tmp_path / "wide.png").mode.startswith("I")
    img = load_image(str(tmp_path / "wide.png"), (16, 16), 1)
    assert torch.equal(img[0].long(), torch.from_numpy((wide >> 8).astype(np.int64)))
    Image.fromarray(np.ones((4, 4), np.float32)).save(tmp_path / "float.tif")
    with pytest.raises(ValueError, match=r"float\.tif: 32-bit float pixels"):
        load_image(str(tmp_path / "float.tif"), (4, 4), 1)
    write_folder(str(tmp_path / "ds"), "train")
    (tmp_path / "ds" / "train" / "cat" / "._0.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    (tmp_path / "ds" / "train" / ".hidden").mkdir()
    (tmp_path / "ds" / "train" / "cat" / ".ipynb_checkpoints").mkdir()  # inside a class too
    (tmp_path / "ds" / "train" / "cat" / ".ipynb_checkpoints" / "0-checkpoint.png").write_bytes(b"junk")
    (tmp_path / "ds" / "train" / "empty").mkdir()
    # macOS's zip metadata: AppleDouble files in a mirror tree, not a class (it was one, with no images)
    (tmp_path / "ds" / "train" / "__MACOSX" / "cat").mkdir(parents=True)
    (tmp_path / "ds" / "train" / "__MACOSX" / "cat" / "._0.png").write_bytes(b"\x00\x05\x16\x07")
    with caplog.at_level("WARNING"):
        splits = load_imagefolder(str(tmp_path / "ds"), (8, 8), val_fraction=0.2)
    assert splits.classes == ["cat", "dog", "empty"] and "class 'empty' has no images" in caplog.text


def test_imagefolder_decoded_to_greyscale_for_a_one_channel_model(tmp_path):
    """Was: always RGB, so a model trained on Fashion-MNIST could not be scored on a folder of images."""
    from vitkit.config import DataConfig
    from vitkit.data.datasets import load_dataset

    write_folder(str(tmp_path), "train")
    write_folder(str(tmp_path), "val", n=2)
    cfg = DataConfig(dataset="imagefolder", data_dir=str(tmp_path))
    grey = load_dataset(cfg, img_size=(8, 8), in_chans=1)
    rgb = load_dataset(cfg, img_size=(8, 8))
    assert grey.in_chans == 1 and rgb.in_chans == 3 and len(grey.mean) == 1
    assert grey.train.images.shape == (6, 1, 8, 8) and grey.test.images.shape == (4, 1, 8, 8)
    # PIL's L of the RGB image (ITU-R 601-2 luma), to within rounding
    luma = (rgb.train.images.float() * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1)
    assert (luma - grey.train.images[:, 0].float()).abs().max() <= 1
    with pytest.raises(ValueError, match=r"decoded to 1 \(L\) or 3 \(RGB\) channels, not 4"):
        load_imagefolder(str(tmp_path), (8, 8), in_chans=4)


def test_an_empty_test_split_is_an_error(tmp_path):
    """Was: a valid IDX test set of 0 images trained and reported 'test top-1 0.00% (0 images)'."""
    from vitkit.config import DataConfig

    folder = write_mnist(str(tmp_path), n_test=0)
    with pytest.raises(ValueError, match=r"dataset 'mnist' in .*: its test split holds no images"):
        load_dataset(DataConfig(dataset="mnist", data_dir=folder), download=False)


def test_cifar_meta_without_a_name_list_loads_with_a_warning(tmp_path, caplog):
    """Was: `label_names: 5` in batches.meta raised TypeError: the names are only for display."""
    d = write_cifar(str(tmp_path))
    with open(os.path.join(d, "batches.meta"), "wb") as f:
        pickle.dump({b"label_names": 5}, f)
    with caplog.at_level("WARNING"):
        splits = load_cifar("cifar10", str(tmp_path), download=False)
    assert splits.classes[3] == "class3" and "no list of 10 'label_names'" in caplog.text


def test_holdout_takes_a_seeded_share_of_every_class():
    from vitkit.data.datasets import holdout_indices

    labels = torch.tensor([0] * 50 + [1] * 30 + [2] * 7)[
        torch.randperm(87, generator=torch.Generator().manual_seed(1))
    ]
    kept, held = holdout_indices(labels, 0.1, seed=3)
    assert sorted(torch.cat([kept, held]).tolist()) == list(range(87))  # disjoint, together everything
    assert [int((labels[held] == c).sum()) for c in range(3)] == [5, 3, 1]  # round(0.1 x 50, 30, 7)
    assert torch.equal(held, holdout_indices(labels, 0.1, seed=3)[1])
    assert not torch.equal(held, holdout_indices(labels, 0.1, seed=4)[1])


def test_load_dataset_holds_out_a_val_split_of_training_images():
    from vitkit.data.datasets import hold_out

    cfg = DataConfig(dataset="synthetic", synthetic_size=200)
    whole = load_dataset(cfg, seed=5)
    splits = load_dataset(DataConfig(dataset="synthetic", synthetic_size=200, holdout=0.2), seed=5)
    assert len(splits.train) + len(splits.val) == 200 and 30 <= len(splits.val) <= 50
    assert torch.equal(splits.test.images, whole.test.images)
    seen = {bytes(img.numpy()) for img in whole.train.images}
    assert all(bytes(img.numpy()) in seen for img in splits.val.images)  # held out of training, not made up
    assert splits.info()["sizes"] == {
        "train": len(splits.train),
        "test": len(whole.test),
        "val": len(splits.val),
    }
    assert splits.split("val") is splits.val
    # the normalisation is the trained-on images' own: the held-out ones do not enter it
    assert (splits.mean, splits.std) == channel_stats(splits.train.images) != (whole.mean, whole.std)
    with pytest.raises(ValueError, match="no val split in 'synthetic': none held out of its training split"):
        whole.split("val")
    with pytest.raises(ValueError, match="holds out 0 of the 200 training images"):
        hold_out(whole, 0.001, seed=0)
    with pytest.raises(ValueError, match=r"data.holdout=0.7 must lie in \[0.0, 0.5\]"):
        DataConfig(holdout=0.7)


def test_a_training_subset_keeps_a_seeded_share_of_each_class_after_the_holdout():
    cfg = DataConfig(dataset="synthetic", synthetic_size=400, holdout=0.1)
    full = load_dataset(cfg, seed=2)
    part = load_dataset(dataclasses.replace(cfg, subset=0.25), seed=2)
    assert torch.equal(part.val.images, full.val.images) and torch.equal(part.test.images, full.test.images)
    counts = torch.bincount(full.train.labels, minlength=10)
    assert torch.bincount(part.train.labels, minlength=10).tolist() == [round(0.25 * int(c)) for c in counts]
    seen = {bytes(img.numpy()) for img in full.train.images}
    assert all(bytes(img.numpy()) in seen for img in part.train.images)  # from the training part, not val
    tiny = load_dataset(dataclasses.replace(cfg, subset=0.001), seed=2)
    assert (
        torch.bincount(tiny.train.labels, minlength=10).tolist() == [1] * 10
    )  # one image per class at least
    assert part.info()["sizes"]["train"] == len(part.train)
    assert (part.mean, part.std) == channel_stats(part.train.images)
    with pytest.raises(ValueError, match=r"data\.subset=0 must lie in \(0, 1\]"):
        DataConfig(subset=0)


def test_image_files_are_read_as_timms_eval_transform(tmp_path):
    timm_data = pytest.importorskip("timm.data")
    from PIL import Image

    rng = np.random.default_rng(0)
    for hw, size, crop, interp in [((33, 47), (16, 16), 1.0, "bilinear"), ((47, 33), (16, 16), 0.875, "bicubic"),
                                   ((20, 37), (16, 24), 0.9, "bilinear"), ((15, 40), (28, 28), 1.0, "bicubic"),
                                   ((101, 64), (24, 16), 0.875, "bilinear")]:  # fmt: skip
        path = str(tmp_path / "x.png")
        Image.fromarray(rng.integers(0, 256, (*hw, 3), dtype=np.uint8)).save(path)
        tf = timm_data.create_transform(input_size=(3, *size), crop_pct=crop, interpolation=interp,
                                        mean=(0, 0, 0), std=(1, 1, 1))  # fmt: skip
        with Image.open(path) as im:
            theirs = (tf(im.convert("RGB")) * 255).round().to(torch.uint8)
        assert torch.equal(load_image(path, size, 3, crop, interp), theirs), (hw, size, crop, interp)
    for hw, size, crop in [
        ((33, 47), (16, 16), 0.95),
        ((47, 33), (16, 24), 1.0),
    ]:  # timm's "squash" crop mode
        Image.fromarray(rng.integers(0, 256, (*hw, 3), dtype=np.uint8)).save(path)
        tf = timm_data.create_transform(input_size=(3, *size), crop_pct=crop, interpolation="bicubic",
                                        crop_mode="squash", mean=(0, 0, 0), std=(1, 1, 1))  # fmt: skip
        with Image.open(path) as im:
            theirs = (tf(im.convert("RGB")) * 255).round().to(torch.uint8)
        assert torch.equal(load_image(path, size, 3, crop, "bicubic", "squash"), theirs), (hw, size, crop)
    with pytest.raises(ValueError, match=r"crop_pct=1\.5 must be a number in \(0, 1\]"):
        load_image(path, (8, 8), 3, crop_pct=1.5)
    with pytest.raises(ValueError, match="crop_mode='border' must be one of center, squash"):
        load_image(path, (8, 8), 3, crop_mode="border")


def test_a_decompression_bomb_is_an_error_naming_the_image(tmp_path, monkeypatch):
    """Was: PIL's DecompressionBombError (an image over 2x Image.MAX_IMAGE_PIXELS) came out as a traceback."""
    from PIL import Image

    Image.new("L", (40, 40)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 1,600 pixels: over twice the limit
    with pytest.raises(ValueError, match=r"cannot read image .*big\.png: .*exceeds limit"):
        load_image(str(tmp_path / "big.png"), (8, 8))


def test_channel_stats_are_the_sample_statistics_in_chunks(monkeypatch):
    """Was: the whole 20,000-image sample in float64 at once (~24 GB for 224-px image folders); now 1,000 at a
    time, the same numbers."""
    from vitkit.data.datasets import channel_stats

    images = torch.randint(
        0, 256, (2500, 3, 5, 4), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    x = images.double() / 255
    want_mean, want_std = x.mean(dim=(0, 2, 3)), x.std(dim=(0, 2, 3))
    real, sizes = torch.Tensor.double, []
    monkeypatch.setattr(torch.Tensor, "double", lambda t: sizes.append(len(t)) or real(t))
    mean, std = channel_stats(images)
    assert mean == pytest.approx(want_mean.tolist(), abs=1e-6) and std == pytest.approx(
        want_std.tolist(), abs=1e-6
    )
    assert max(sizes) <= 1000


def test_cifar_batches_python3_writes_are_read_and_bad_labels_named(tmp_path):
    """Was: batches pickled by Python 3 at protocol 2 (bytes through _codecs.encode) or 5 (3.14's default: arrays
    from their bytes) were refused as damaged; a label that is not a number gave an error naming no file."""
    for protocol in (2, 5):
        d = write_cifar(str(tmp_path / f"p{protocol}"))
        with open(os.path.join(d, "data_batch_1"), "rb") as f:
            batch = pickle.load(f)
        with open(os.path.join(d, "data_batch_1"), "wb") as f:
            pickle.dump(batch, f, protocol=protocol)
        splits = load_cifar("cifar10", str(tmp_path / f"p{protocol}"), download=False)
        np.testing.assert_array_equal(splits.train.images[:8].numpy(), batch[b"data"].reshape(-1, 3, 32, 32))
    d = write_cifar(str(tmp_path / "bad"))
    with open(os.path.join(d, "data_batch_2"), "wb") as f:
        pickle.dump({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, "cat"]}, f)
    with pytest.raises(ValueError, match=r"data_batch_2: 'labels' must be integer class indices"):
        load_cifar("cifar10", str(tmp_path / "bad"), download=False)


def test_a_corrupt_gzip_idx_file_is_named(tmp_path):
    """Was: damaged deflate data (not a truncation) raised zlib.error with a traceback naming no file."""
    write_mnist(str(tmp_path))
    path = tmp_path / "train-images-idx3-ubyte.gz"
    raw = bytearray(path.read_bytes())
    raw[20:60] = b"\xff" * 40  # inside the deflate stream: zlib.error, not a truncation
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte\.gz: corrupt gzip stream"):
        read_idx(str(path))


def test_imagefolder_follows_linked_folders_refuses_undecodable_names_and_val_fraction_beside_val(tmp_path):
    """Was: a linked folder inside a class was skipped without a word (a linked class folder was followed); a class
    folder named in another encoding broke the report after training; data.val_fraction beside a val/ folder was
    ignored."""
    root = tmp_path / "data"
    write_folder(str(root), "train")
    write_folder(str(root), "val", n=2)
    write_folder(str(tmp_path / "more"), "x", classes=("cat",), n=2)
    os.symlink(tmp_path / "more" / "x" / "cat", root / "train" / "cat" / "linked")
    os.symlink(root / "train" / "cat", root / "train" / "cat" / "loop")  # a link back up: read once
    splits = load_imagefolder(str(root), (8, 8))
    assert splits.train.labels.bincount().tolist() == [5, 3]
    from vitkit.data.imagefolder import check_val_fraction

    with pytest.raises(
        ValueError, match=r"data\.val_fraction=0\.2: .* has its own val/ folder.*drop val_fraction"
    ):
        check_val_fraction(str(root), 0.2)  # training refuses it; a saved run's is read with a warning
    assert (
        load_imagefolder(str(root), (8, 8), val_fraction=0.2).test.labels.tolist()
        == splits.test.labels.tolist()
    )
    bad = os.path.join(os.fsencode(root / "train"), b"caf\xe9")
    try:
        os.makedirs(bad)
    except OSError:  # a file system that keeps names in UTF-8 (macOS) cannot hold one
        pytest.skip("this file system refuses a name that is not UTF-8")
    with pytest.raises(ValueError, match=r"class folder 'caf\\udce9' is not a UTF-8 name"):
        load_imagefolder(str(root), (8, 8))


def test_netpbm_images_are_read_as_torchvision_reads_them(tmp_path):
    """Was: .ppm/.pgm files (GTSRB ships as .ppm) were not picked up; beside other images they were dropped."""
    from PIL import Image

    write_folder(str(tmp_path), "train", n=2)
    write_folder(str(tmp_path), "val", n=1)
    Image.new("RGB", (12, 10), (10, 200, 30)).save(tmp_path / "train" / "cat" / "x.ppm")
    Image.new("L", (12, 10), 77).save(tmp_path / "train" / "dog" / "y.pgm")
    splits = load_imagefolder(str(tmp_path), (8, 8))
    assert splits.train.labels.bincount().tolist() == [3, 3]


def test_a_folder_decoded_per_batch_gets_its_own_channel_statistics(tmp_path, monkeypatch):
    """Was: a folder over the in-memory limit was normalised with mean and std 0.5 without a word."""
    import vitkit.data.imagefolder as imagefolder

    write_folder(str(tmp_path), "train", n=4)
    write_folder(str(tmp_path), "val", n=1)
    held = load_imagefolder(str(tmp_path), (8, 8))
    monkeypatch.setattr(imagefolder, "IN_MEMORY_LIMIT", 1)  # every folder decoded per batch
    lazy = load_imagefolder(str(tmp_path), (8, 8))
    assert isinstance(lazy.train, imagefolder.FileDataset)
    assert lazy.mean == held.mean and lazy.std == held.std and held.mean != (0.5, 0.5, 0.5)


def test_data_num_workers_sets_the_decoding_threads(tmp_path, monkeypatch):
    """Was: data.num_workers was checked, saved and allowed to change on resume, and read by nothing."""
    import vitkit.data.imagefolder as imagefolder
    from vitkit.data.datasets import load_dataset

    write_folder(str(tmp_path), "train", n=2)
    write_folder(str(tmp_path), "val", n=1)
    pools = []
    real = imagefolder.ThreadPoolExecutor
    monkeypatch.setattr(
        imagefolder, "ThreadPoolExecutor", lambda max_workers: pools.append(max_workers) or real(max_workers)
    )
    load_dataset(DataConfig(dataset="imagefolder", data_dir=str(tmp_path), num_workers=3), img_size=(8, 8))
    assert pools == [3, 3]
    monkeypatch.setattr(imagefolder, "IN_MEMORY_LIMIT", 1)  # decoded per batch: the dataset keeps the setting
    splits = load_dataset(
        DataConfig(dataset="imagefolder", data_dir=str(tmp_path), num_workers=2), img_size=(8, 8)
    )
    assert splits.train.workers == 2 and pools[-1] == 2  # the channel statistics' sample


def test_a_folder_decoded_per_batch_is_normalised_by_the_images_trained_on(tmp_path, monkeypatch):
    """Was: with data.holdout, a folder decoded per batch kept the statistics of its whole training folder, the
    held-out images included (an in-memory one had its own: the same data, other inputs by its size)."""
    from PIL import Image

    import vitkit.data.imagefolder as imagefolder
    from vitkit.config import DataConfig
    from vitkit.data.datasets import channel_stats, load_dataset

    for split in ("train", "val"):
        for c in ("a", "b"):
            os.makedirs(tmp_path / split / c)
            for k, v in enumerate((0, 250)):
                Image.fromarray(np.full((8, 8, 3), v, np.uint8)).save(tmp_path / split / c / f"{k}.png")
    cfg = DataConfig(dataset="imagefolder", data_dir=str(tmp_path), holdout=0.5)
    means = []
    for limit in (1 << 40, 1):  # in memory, then per batch
        monkeypatch.setattr(imagefolder, "IN_MEMORY_LIMIT", limit)
        splits = load_dataset(cfg, img_size=(8, 8))
        trained_on = splits.train.get_batch(torch.arange(len(splits.train)))[0]
        assert splits.mean == pytest.approx(channel_stats(trained_on)[0])
        means.append(splits.mean)
    assert means[0] == means[1]


def test_write_idx_keeps_signed_bytes(tmp_path):
    """Was: int8 written with the unsigned code 0x08: -1 read back as 255."""
    write_idx(str(tmp_path / "a.idx"), np.array([-1, -128, 5], np.int8))
    back = read_idx(str(tmp_path / "a.idx"))
    assert back.dtype == np.int8 and back.tolist() == [-1, -128, 5]


def test_a_folder_with_val_and_test_scores_test_and_selects_on_val(tmp_path):
    """Was: ROOT/test/ was ignored without a word where ROOT/val/ was there too (val/ was scored as the test
    split). Now test/ is the test split and val/ the validation split; data.holdout beside it is refused."""
    from vitkit.data.datasets import hold_out

    root = str(tmp_path)
    write_folder(root, "train")
    write_folder(root, "val", n=2)
    write_folder(root, "test", n=4)
    splits = load_imagefolder(root, (8, 8))
    assert (len(splits.train), len(splits.val), len(splits.test)) == (6, 4, 8)
    assert splits.sources == {"train": "train", "test": "test", "val": "val"}
    assert splits.info()["sizes"] == {"train": 6, "test": 8, "val": 4}
    with pytest.raises(ValueError, match="has its own val/ split"):
        hold_out(splits, 0.5, 0)


def test_an_image_folder_changed_since_training_is_noticed(tmp_path, caplog):
    """Was: one image added to train/ re-drew a data.val_fraction split, and `eval RUN` scored the run on 15 of
    20 images it had trained on, without a word. A run's data.json records each sub-folder's listing: a split
    drawn from a changed train/ is refused, a changed test/ scored with a warning, a resume refused."""
    from vitkit.cli.common import UserError
    from vitkit.cli.rundata import check_folder_unchanged
    from vitkit.data.imagefolder import listing_changes
    from vitkit.train.loop import _recorded_normalisation

    root = str(tmp_path / "drawn")
    write_folder(root, "train", n=10)
    before = load_imagefolder(root, (8, 8), val_fraction=0.2)
    data = json_roundtrip(before.info())  # as data.json holds it
    check_folder_unchanged(data, load_imagefolder(root, (8, 8), val_fraction=0.2), "test", "RUN")  # the same
    write_folder(root, "train", classes=("cat",), n=11)  # cat/10.png added
    after = load_imagefolder(root, (8, 8), val_fraction=0.2)
    assert listing_changes(data["files"], after.files) == {"train": "20 images then, 21 now"}
    with pytest.raises(
        UserError,
        match=r"RUN: the run drew its test split from the image folder's train/ .*\(20 images then, 21 now\)",
    ):
        check_folder_unchanged(data, after, "test", "RUN")
    check_folder_unchanged(data, after, "train", "RUN")  # the training split itself: scored as it is, warned
    assert "train/ is not as the run was trained on it (20 images then, 21 now)" in caplog.text
    # runs from before the listing was recorded: their split sizes
    old = {k: v for k, v in data.items() if k != "files"}
    old["sizes"] = dict(old["sizes"], test=3)
    with pytest.raises(UserError, match="its test split had 3 images, now 4"):
        check_folder_unchanged(old, after, "test", "RUN")
    # a folder's own test/: scored as it is now, with a warning
    own = str(tmp_path / "own")
    write_folder(own, "train")
    write_folder(own, "test", n=2)
    data = json_roundtrip(load_imagefolder(own, (8, 8)).info())
    write_folder(own, "test", classes=("dog",), n=3)
    caplog.clear()
    check_folder_unchanged(data, load_imagefolder(own, (8, 8)), "test", "RUN")
    assert "test/ is not as the run was trained on it (4 images then, 5 now)" in caplog.text
    # a test/ made of training images of a val_fraction run (its test split drawn from train/): refused
    moved = str(tmp_path / "moved")
    write_folder(moved, "train", n=10)
    drawn = json_roundtrip(load_imagefolder(moved, (8, 8), val_fraction=0.2).info())
    for c in ("cat", "dog"):
        os.makedirs(os.path.join(moved, "test", c))
        for i in range(2):
            os.replace(
                os.path.join(moved, "train", c, f"{i}.png"), os.path.join(moved, "test", c, f"{i}.png")
            )
    with pytest.raises(
        UserError, match=r"RUN: the run drew its test split from the image folder's train/ by its"
    ):
        check_folder_unchanged(drawn, load_imagefolder(moved, (8, 8)), "test", "RUN")
    # a test/ added beside an unchanged train/: scored, with a warning; another folder: not checked against the run
    added = str(tmp_path / "added")
    write_folder(added, "train", n=10)
    drawn_then = json_roundtrip(load_imagefolder(added, (8, 8), val_fraction=0.2).info())
    write_folder(added, "test", n=2)
    caplog.clear()
    check_folder_unchanged(drawn_then, load_imagefolder(added, (8, 8)), "test", "RUN", added, added)
    assert (
        "the run's test split was the image folder's train/, now test/: scoring that, which must not"
        in caplog.text
    )
    with caplog.at_level("INFO"):
        check_folder_unchanged(drawn_then, load_imagefolder(moved, (8, 8)), "test", "RUN", moved, added)
    assert (
        f"scoring the image folder {moved}, not the run's {added} (not checked against its record)"
        in caplog.text
    )
    assert listing_changes({"val": None, "train": drawn_then["files"]["train"]}, {}) == {
        "train": "read when the run was trained (20 images), not now"
    }
    # test/ added beside a run's val/ (its test split then): scored, with a warning
    both = str(tmp_path / "both")
    write_folder(both, "train")
    write_folder(both, "val", n=2)
    val_then = json_roundtrip(load_imagefolder(both, (8, 8)).info())
    write_folder(both, "test", n=1)
    caplog.clear()
    check_folder_unchanged(val_then, load_imagefolder(both, (8, 8)), "test", "RUN")
    assert "the run's test split was the image folder's val/, now test/" in caplog.text
    # a resume on a changed folder
    run = tmp_path / "run"
    run.mkdir()
    (run / "data.json").write_text(json.dumps(data))
    with pytest.raises(
        ValueError, match=r"--resume: the data is not as the run began on it .*test/: 4 images"
    ):
        _recorded_normalisation(str(run), load_imagefolder(own, (8, 8)))
    both_data = json_roundtrip(load_imagefolder(both, (8, 8)).info())  # train/, val/ and test/
    shutil.rmtree(os.path.join(both, "val"))  # was: a resume went on without its validation split
    (run / "data.json").write_text(json.dumps(both_data))
    with pytest.raises(ValueError, match=r"val/: read when the run was trained \(4 images\), not now"):
        _recorded_normalisation(str(run), load_imagefolder(both, (8, 8)))


def json_roundtrip(d):
    return json.loads(json.dumps(d))


def test_data_folders_with_a_tilde_and_the_download_cache(tmp_path, monkeypatch):
    """Was: --data-dir ~/fm and VITKIT_DATA=~/fm were looked for literally (a shell expands neither in
    --data-dir=~/fm or a quoted value), and ~/.cache/vitkit, where downloads go, was never searched: a download
    then VITKIT_OFFLINE=1 failed. A download that found nothing said 'not attempted (VITKIT_OFFLINE is set)'."""
    import vitkit.data.datasets as ds

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("VITKIT_DATA", raising=False)
    write_mnist(str(tmp_path / "fm"))
    assert len(load_mnist_like("mnist", "~/fm", download=False).train) == 20
    monkeypatch.setenv("VITKIT_DATA", "~/fm")
    assert len(load_mnist_like("mnist", download=False).train) == 20
    write_folder(str(tmp_path / "imgs"), "train")
    write_folder(str(tmp_path / "imgs"), "val", n=1)
    folder = load_dataset(DataConfig(dataset="imagefolder", data_dir="~/imgs"), img_size=(8, 8))
    assert len(folder.train) == 6
    monkeypatch.delenv("VITKIT_DATA")
    write_mnist(str(tmp_path / ".cache" / "vitkit" / "MNIST" / "raw"), n_train=30)  # torchvision's download
    assert len(load_mnist_like("mnist", download=False).train) == 30
    monkeypatch.setattr(ds, "downloads_allowed", lambda download: True)
    monkeypatch.setattr(ds, "_fetch_mnist_like", lambda name, target: None)  # "downloads" nothing
    with pytest.raises(DataNotFoundError, match=r"Download failed: none, but the files were not found in "):
        load_mnist_like("mnist", str(tmp_path / "empty"))


def test_malformed_labels_and_sizes_are_refused_by_name(tmp_path, caplog):
    """Was: CIFAR labels of shape (N, 1) loaded as (N, 1), float labels were truncated to other classes, a label
    of 2**70 or an int dict key gave a traceback, a corrupt batches.meta stopped the load (its names are only for
    display); IDX float labels were truncated, zero-pixel images and test images of another size loaded."""
    from vitkit.data.datasets import ArrayDataset

    d = write_cifar(str(tmp_path / "c"))
    batch = os.path.join(d, "data_batch_1")
    for labels, match in (
        ([[0]] * 8, r"'labels' must be a list of whole class indices, got int64 of shape \(8, 1\)"),
        ([0.9] * 8, "'labels' must be a list of whole class indices, got float64"),
        ([2**70] * 8, "'labels' must be integer class indices"),
    ):
        with open(batch, "wb") as f:
            pickle.dump({b"data": np.zeros((8, 3072), np.uint8), b"labels": labels}, f)
        with pytest.raises(ValueError, match=f"data_batch_1: {match}"):
            load_cifar("cifar10", str(tmp_path / "c"), download=False)
    with open(batch, "wb") as f:
        pickle.dump({1: 2, b"x": 3}, f)
    with pytest.raises(
        ValueError, match=r"data_batch_1: missing key 'data' or 'labels'; keys are \[\"'x'\", '1'\]"
    ):
        load_cifar("cifar10", str(tmp_path / "c"), download=False)
    write_cifar(str(tmp_path / "c"))
    with open(os.path.join(d, "batches.meta"), "wb") as f:
        f.write(b"not a pickle")
    assert load_cifar("cifar10", str(tmp_path / "c"), download=False).classes[0] == "class0"
    assert "batches.meta: not a valid CIFAR pickle" in caplog.text
    with pytest.raises(ValueError, match="labels must be whole class indices"):
        ArrayDataset(torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.zeros(2))
    m = str(tmp_path / "m")
    write_mnist(m)
    write_idx(os.path.join(m, "train-labels-idx1-ubyte.gz"), np.full(20, 1.5, np.float32))
    with pytest.raises(
        ValueError, match=r"train-labels-idx1-ubyte\.gz: labels must be integers, the file holds float32"
    ):
        load_mnist_like("mnist", m, download=False)
    write_mnist(m)
    write_idx(os.path.join(m, "t10k-images-idx3-ubyte.gz"), np.zeros((10, 32, 32), np.uint8))
    with pytest.raises(ValueError, match="training images of 28x28 pixels, test images of 32x32"):
        load_mnist_like("mnist", m, download=False)
    write_idx(os.path.join(m, "t10k-images-idx3-ubyte.gz"), np.zeros((10, 0, 28), np.uint8))
    with pytest.raises(ValueError, match="images of 0x28 pixels"):
        load_mnist_like("mnist", m, download=False)


def test_integer_pixel_images_and_a_class_held_out_whole(tmp_path, caplog):
    """Was: a 32-bit integer TIFF of 8-bit values decoded all black (its top 8 of 16 bits), and data.val_fraction
    held out every image of a small class without a word."""
    from PIL import Image

    values = np.arange(256, dtype=np.int32).reshape(16, 16)
    Image.fromarray(values).save(tmp_path / "i32.tif")
    assert Image.open(tmp_path / "i32.tif").mode == "I"
    assert torch.equal(load_image(str(tmp_path / "i32.tif"), (16, 16), 1)[0], torch.from_numpy(values).byte())
    Image.fromarray((values * 256).astype(np.uint16)).save(tmp_path / "i16.png")  # 16-bit: its top 8 bits
    assert torch.equal(load_image(str(tmp_path / "i16.png"), (16, 16), 1)[0], torch.from_numpy(values).byte())
    Image.fromarray(values * 70000).save(tmp_path / "wide.tif")
    with pytest.raises(ValueError, match=r"32-bit integer pixels in 0\.\.17850000: their range is unknown"):
        load_image(str(tmp_path / "wide.tif"), (16, 16), 1)
    write_folder(str(tmp_path / "f"), "train", n=4)
    write_folder(str(tmp_path / "f"), "train", classes=("rare",), n=1)
    load_imagefolder(str(tmp_path / "f"), (8, 8), val_fraction=0.6)
    assert "holds out every image of class(es) 'rare'" in caplog.text


def test_a_folder_decoded_per_batch_refuses_unreadable_files_at_load(tmp_path, monkeypatch):
    """Was: a folder over the in-memory limit found a corrupt image only at the training step that reached it
    (hours in), and again at that step after --resume; removing the file then changes the folder the run recorded."""
    import vitkit.data.imagefolder as imagefolder

    write_folder(str(tmp_path), "train", n=4)
    write_folder(str(tmp_path), "val", n=1)
    (tmp_path / "train" / "cat" / "zzz.png").write_bytes(b"not a png")
    monkeypatch.setattr(imagefolder, "IN_MEMORY_LIMIT", 1)  # every folder decoded per batch
    with pytest.raises(
        ValueError, match=r"1 of 9 image files cannot be read: .*zzz\.png: cannot identify image"
    ):
        load_imagefolder(str(tmp_path), (8, 8))
