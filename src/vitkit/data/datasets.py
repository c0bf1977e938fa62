"""Dataset name -> in-memory splits: fashion-mnist, mnist, cifar10/100, imagefolder, synthetic."""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from vitkit.config import DataConfig
from vitkit.data.idx import read_idx_pair

log = logging.getLogger(__name__)

DATASETS = ("fashion-mnist", "mnist", "cifar10", "cifar100", "imagefolder", "synthetic")

FASHION_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
MNIST_CLASSES = [str(i) for i in range(10)]
DEBIAN_DIRS = {"fashion-mnist": "/usr/share/datasets/fashion-mnist", "mnist": "/usr/share/datasets/mnist"}
STATS_SAMPLE = 2000  # images decoded for the channel statistics of a split decoded per batch


class DataNotFoundError(FileNotFoundError):
    """A dataset is absent from every place looked at and could not be downloaded."""


@dataclass
class ArrayDataset:
    """A split held in memory: uint8 images (N, C, H, W) and int64 labels (N,)."""

    images: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.images.dtype != torch.uint8:
            raise ValueError(
                f"images must be uint8 (N, C, H, W), got {self.images.dtype} {tuple(self.images.shape)}"
            )
        if self.labels.ndim != 1 or self.labels.is_floating_point() or self.labels.is_complex():
            raise ValueError(
                f"labels must be whole class indices (N,), got {self.labels.dtype} {tuple(self.labels.shape)}"
            )
        if len(self.images) != len(self.labels):
            raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)

    def get_batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images (B, C, H, W) uint8 and labels (B,) at `idx` (on the dataset's device)."""
        idx = idx.to(self.images.device)
        return self.images.index_select(0, idx), self.labels.index_select(0, idx)

    def to(self, device: torch.device | str) -> ArrayDataset:
        return ArrayDataset(self.images.to(device), self.labels.to(device))

    def subset(self, idx: torch.Tensor) -> ArrayDataset:
        """The samples at `idx`, in that order."""
        return ArrayDataset(self.images[idx], self.labels[idx])


@dataclass
class Splits:
    """Train and test splits with what a model and a predictor need to know about them."""

    name: str
    train: ArrayDataset
    test: ArrayDataset
    classes: list[str]
    mean: tuple[float, ...] = field(default=())
    std: tuple[float, ...] = field(default=())
    val: ArrayDataset | None = None  # held out of the training set (data.holdout), or a folder's own val/
    # an image folder's: each sub-folder's listing ({"train": {"images": n, "sha256": ...}}: fold_listing), and
    # the sub-folder each split is drawn from ({"train": "train", "test": "train"} with data.val_fraction)
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)

    @property
    def in_chans(self) -> int:
        return int(self.train.images.shape[1])

    @property
    def img_size(self) -> tuple[int, int]:
        return (int(self.train.images.shape[2]), int(self.train.images.shape[3]))

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def info(self) -> dict:
        """What predict/eval need to preprocess new images like the training data; the split sizes."""
        sizes = {"train": len(self.train), "test": len(self.test)}
        if self.val is not None:
            sizes["val"] = len(self.val)
        return {
            "dataset": self.name,
            "classes": self.classes,
            "in_chans": self.in_chans,
            "native_size": list(self.img_size),
            "mean": list(self.mean),
            "std": list(self.std),
            "sizes": sizes,
        } | ({"files": self.files, "sources": self.sources} if self.files else {})

    def split(self, name: str) -> ArrayDataset:
        """The split called `name`: "train", "val" (held out of train by data.holdout, or an image folder's own
        val/ beside test/) or "test"."""
        if name == "val" and self.val is None:
            raise ValueError(
                f"no val split in {self.name!r}: none held out of its training split (--set data.holdout=0.1 does) "
                "and no val/ folder beside test/"
            )
        if name not in ("train", "val", "test"):
            raise ValueError(f"split {name!r}: expected train, val or test")
        return getattr(self, name)


def holdout_indices(
    labels: torch.Tensor, fraction: float, seed: int, stream: int = 0x401D
) -> tuple[torch.Tensor, torch.Tensor]:
    """(kept, held) sample indices, each ascending: `fraction` of every class (rounded) held out, drawn by `seed`
    (and `stream`, so that draws for different purposes differ)."""
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed + stream))
    shuffled = labels[perm]
    held = [perm[shuffled == c][: round(fraction * int((shuffled == c).sum()))] for c in labels.unique()]
    held = torch.cat(held).sort().values if held else torch.zeros(0, dtype=torch.long)
    keep = torch.ones(len(labels), dtype=torch.bool)
    keep[held] = False
    return keep.nonzero().squeeze(1), held


def classes_left_out(labels: torch.Tensor, kept: torch.Tensor) -> list[int]:
    """The classes of `labels` none of whose samples are in `kept` (all held out: too small for the fraction)."""
    return sorted(set(labels.unique().tolist()) - set(labels[kept].unique().tolist()))


def hold_out(splits: Splits, fraction: float, seed: int) -> Splits:
    """`splits` with `fraction` of each training class moved into a validation split (`splits.val`)."""
    if splits.val is not None:
        raise ValueError(
            f"data.holdout={fraction}: the image folder has its own val/ split (beside test/), which is the "
            "validation split; drop data.holdout"
        )
    kept, held = holdout_indices(splits.train.labels.cpu(), fraction, seed)
    if len(held) == 0 or len(kept) == 0:
        raise ValueError(
            f"data.holdout={fraction}: holds out {len(held)} of the {len(splits.train)} training images "
            f"(per class, rounded); choose a fraction that leaves both splits images"
        )
    gone = classes_left_out(splits.train.labels.cpu(), kept)
    if gone:
        log.warning(
            "data.holdout=%g holds out every training image of class(es) %s (too few to split): the model never "
            "trains on them",
            fraction,
            ", ".join(repr(splits.classes[c]) if c < len(splits.classes) else str(c) for c in gone),
        )
    sources = splits.sources | ({"val": splits.sources["train"]} if "train" in splits.sources else {})
    return dataclasses.replace(
        splits, train=splits.train.subset(kept), val=splits.train.subset(held), sources=sources
    )


def train_subset(splits: Splits, fraction: float, seed: int) -> Splits:
    """`splits` training on `fraction` of each training class (at least one image per class)."""
    labels = splits.train.labels.cpu()
    _, chosen = holdout_indices(labels, fraction, seed, stream=0x5B5E)
    missing = set(labels.unique().tolist()) - set(labels[chosen].unique().tolist())
    if missing:  # a class too small to keep any of its images at this fraction keeps one
        first = torch.stack([(labels == c).nonzero()[0, 0] for c in sorted(missing)])
        chosen = torch.cat([chosen, first]).sort().values
    log.info("training on %d of %d training images (data.subset=%g)", len(chosen), len(labels), fraction)
    return dataclasses.replace(splits, train=splits.train.subset(chosen))


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images (N, C, H, W), in [0, 1] units, from the first 20,000 (a sample of
    every class where the images are stored shuffled: the datasets' files, vitkit's image folders)."""
    x = images[: min(len(images), 20000)]  # (N, C, H, W) uint8
    c = x.shape[1]
    total = torch.zeros(c, dtype=torch.float64)
    squares = torch.zeros(c, dtype=torch.float64)
    for part in x.split(1000):  # float64 1,000 images at a time (all 20,000 at 224 px took ~24 GB)
        part = part.double().div_(255)
        total += part.sum(dim=(0, 2, 3))
        squares += part.square().sum(dim=(0, 2, 3))
    n = x.numel() // c
    mean = total / n
    var = (squares - n * mean.square()).clamp_min(0) / max(n - 1, 1)  # unbiased, as torch.std
    std = var.sqrt().clamp_min(1e-3)
    return tuple(round(v, 6) for v in mean.tolist()), tuple(round(v, 6) for v in std.tolist())


def split_stats(ds: Any) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """`channel_stats` of a split: its images in memory, or the first STATS_SAMPLE of a split decoded per batch
    (stored shuffled: a sample of every class)."""
    if isinstance(ds, ArrayDataset):
        return channel_stats(ds.images)
    return channel_stats(ds.get_batch(torch.arange(min(len(ds), STATS_SAMPLE)))[0])


def _with_stats(name: str, train: ArrayDataset, test: ArrayDataset, classes: list[str]) -> Splits:
    mean, std = channel_stats(train.images)
    return Splits(name, train, test, classes, mean, std)


# ----------------------------------------------------------------------------- MNIST family

_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _find_file(folder: str, stem: str) -> str | None:
    for name in (stem + ".gz", stem):
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            return path
    return None


def _idx_folder(root: str, name: str) -> str | None:
    """The folder under `root` holding the four IDX files, in the layouts vitkit and torchvision use."""
    tv = {"fashion-mnist": "FashionMNIST", "mnist": "MNIST"}[name]
    for folder in (root, os.path.join(root, name), os.path.join(root, tv, "raw")):
        if all(_find_file(folder, stem) for pair in _IDX_FILES.values() for stem in pair):
            return folder
    return None


def _env_data() -> str | None:
    """$VITKIT_DATA, `~` expanded (as a shell does not in VITKIT_DATA=~/data)."""
    return os.path.expanduser(os.environ["VITKIT_DATA"]) if os.environ.get("VITKIT_DATA") else None


CACHE = os.path.join("~", ".cache", "vitkit")  # where downloads go without a data folder or $VITKIT_DATA


def _candidate_roots(name: str, data_dir: str | None) -> list[str]:
    """Where to look: a data folder given is the only place (as torchvision's root); else $VITKIT_DATA, Debian's
    package folder and the download cache (~/.cache/vitkit, where an earlier download went)."""
    if data_dir:
        return [os.path.expanduser(data_dir)]
    roots = [r for r in (_env_data(), DEBIAN_DIRS.get(name)) if r]
    return roots + [os.path.expanduser(CACHE)]


def _download_root(data_dir: str | None) -> str:
    return os.path.expanduser(data_dir) if data_dir else _env_data() or os.path.expanduser(CACHE)


def downloads_allowed(download: bool) -> bool:
    """Downloads happen only when asked for and $VITKIT_OFFLINE is not set (tests set it)."""
    return download and os.environ.get("VITKIT_OFFLINE", "") in ("", "0")


def _missing(name: str, looked: list[str], error: str, hint: str) -> DataNotFoundError:
    places = "; ".join(looked) if looked else "(no folder given)"
    if looked and looked[0].startswith("the data folder "):
        places += " (a data folder given is the only place looked in)"
    return DataNotFoundError(
        f"dataset {name!r} not found. Looked in: {places}. Download failed: {error}. Get it by either: {hint}"
    )


_LOADED: set[tuple[str, str]] = set()


def log_loaded(name: str, folder: str) -> None:
    """Log where dataset `name` was read from: once per process at INFO (the training report reads the test set
    again: DEBUG then)."""
    level = logging.DEBUG if (name, folder) in _LOADED else logging.INFO
    _LOADED.add((name, folder))
    log.log(level, "loaded %s from %s", name, folder)


def locate(
    name: str,
    data_dir: str | None,
    download: bool,
    find: Callable[[str], str | None],
    fetch: Callable[[str], None],
    hint: str,
) -> str:
    """The folder holding dataset `name`: the first root where `find` succeeds, else `fetch` (a download)
    into the download root; otherwise a DataNotFoundError naming every place looked in and `hint`."""
    roots = _candidate_roots(name, data_dir)
    folder = next((f for f in (find(r) for r in roots) if f), None)
    if data_dir:
        roots = [f"the data folder {data_dir}"]
    error = "not attempted (VITKIT_OFFLINE is set)" if download else "downloads disabled"
    if folder is None and downloads_allowed(download):
        target = _download_root(data_dir)
        before = _folders(target)
        try:
            fetch(target)
            folder = find(target)
            roots = [r for r in roots if r != target] + [target]
            error = f"none, but the files were not found in {target} afterwards"
        except Exception as e:  # network errors come in many types
            error = f"{type(e).__name__}: {e}".splitlines()[0][:200]
            roots = [r for r in roots if r != target] + [f"{target} (download target)"]
            _remove_new_empty_dirs(target, before)  # the folders the failed download made
    if folder is None:
        raise _missing(name, roots, error, hint)
    return folder


def _folders(root: str) -> set[str]:
    """`root` and every folder under it (empty if it does not exist)."""
    return {w[0] for w in os.walk(root)} if os.path.isdir(root) else set()


def _remove_new_empty_dirs(root: str, before: set[str]) -> None:
    """Remove the folders under `root` (and `root`) that were not in `before` and are empty, deepest first."""
    for folder in sorted(_folders(root) - before, key=lambda f: -f.count(os.sep)):
        if not os.listdir(folder):
            os.rmdir(folder)


def _fetch_mnist_like(name: str, target: str) -> None:
    import torchvision

    cls = torchvision.datasets.FashionMNIST if name == "fashion-mnist" else torchvision.datasets.MNIST
    cls(target, train=True, download=True)
    cls(target, train=False, download=True)


def load_mnist_like(name: str, data_dir: str | None = None, download: bool = True) -> Splits:
    """Fashion-MNIST or MNIST from IDX files: in `data_dir` if given (only there), else $VITKIT_DATA or Debian's
    package; else downloaded by torchvision (into `data_dir`, $VITKIT_DATA or ~/.cache/vitkit)."""
    pkg = "`sudo apt-get install dataset-fashion-mnist` (Debian)" if name == "fashion-mnist" else ""
    hint = (
        f"{pkg + ' or ' if pkg else ''}put the four IDX files (train-images-idx3-ubyte.gz, ...) in a "
        f"folder and pass --data-dir FOLDER (or set VITKIT_DATA); with internet, vitkit downloads them"
    )
    folder = locate(
        name, data_dir, download, lambda r: _idx_folder(r, name), lambda t: _fetch_mnist_like(name, t), hint
    )
    splits = {}
    for split, (img_stem, lab_stem) in _IDX_FILES.items():
        images, labels = read_idx_pair(_find_file(folder, img_stem), _find_file(folder, lab_stem), 10)
        splits[split] = ArrayDataset(torch.from_numpy(images)[:, None], torch.from_numpy(labels))
    train_hw, test_hw = tuple(splits["train"].images.shape[2:]), tuple(splits["test"].images.shape[2:])
    if train_hw != test_hw:
        raise ValueError(
            f"{folder}: training images of {train_hw[0]}x{train_hw[1]} pixels, test images of "
            f"{test_hw[0]}x{test_hw[1]}: not one dataset's files"
        )
    log_loaded(name, folder)
    classes = FASHION_CLASSES if name == "fashion-mnist" else MNIST_CLASSES
    return _with_stats(name, splits["train"], splits["test"], list(classes))


# ----------------------------------------------------------------------------- synthetic


def make_synthetic(
    n: int, num_classes: int = 10, size: int = 16, chans: int = 1, seed: int = 0, split: str = "train"
) -> ArrayDataset:
    """Deterministic images with learnable class structure: a per-class pattern, shifted, plus noise."""
    g = torch.Generator().manual_seed(1234)  # class patterns are shared by all splits
    protos = (torch.rand(num_classes, chans, 4, 4, generator=g) > 0.5).float()
    protos = torch.nn.functional.interpolate(protos, size=(size, size), mode="nearest")
    g = torch.Generator().manual_seed(seed * 2 + (split == "test"))
    labels = torch.randint(0, num_classes, (n,), generator=g)
    shifts = torch.randint(-1, 2, (n, 2), generator=g)
    x = protos[labels]
    x = torch.stack([torch.roll(img, (int(s[0]), int(s[1])), dims=(1, 2)) for img, s in zip(x, shifts)])
    x = 0.2 + 0.6 * x + 0.2 * torch.randn(x.shape, generator=g)
    images = (x.clamp(0, 1) * 255).round().to(torch.uint8)
    return ArrayDataset(images, labels)


def load_synthetic(cfg: DataConfig, seed: int = 0) -> Splits:
    """The synthetic dataset: 10 classes of 16x16 single-channel images, sizes from the config."""
    n = cfg.synthetic_size
    train = make_synthetic(n, seed=seed, split="train")
    test = make_synthetic(max(n // 4, 10), seed=seed, split="test")
    return _with_stats("synthetic", train, test, [f"class{i}" for i in range(10)])


# ----------------------------------------------------------------------------- dispatch


def load_dataset(
    cfg: DataConfig,
    *,
    img_size: tuple[int, int] | None = None,
    seed: int = 0,
    download: bool = True,
    in_chans: int | None = None,
    train_by_batch: bool = False,
) -> Splits:
    """Load the dataset named by `cfg.dataset` into memory; a split without images is an error naming it.
    `in_chans` (1 or 3): the channels an image folder is decoded to (default RGB); other datasets keep theirs.
    `train_by_batch`: an image folder's training images are not decoded now but per batch, and no statistics
    are taken of them (for evaluation with a run's own normalisation)."""
    if cfg.data_dir and cfg.data_dir.startswith("~"):  # as a shell leaves --data-dir=~/data
        cfg = dataclasses.replace(cfg, data_dir=os.path.expanduser(cfg.data_dir))
    if cfg.data_dir and os.path.isfile(cfg.data_dir):
        raise ValueError(
            f"--data-dir {cfg.data_dir} is a file; pass the folder that holds the dataset's files "
            f"({os.path.dirname(os.path.abspath(cfg.data_dir))}?)"
        )
    splits = _load(cfg, img_size, seed, download, in_chans, train_by_batch)
    if cfg.holdout > 0:
        splits = hold_out(splits, cfg.holdout, seed)
    if cfg.subset < 1:
        splits = train_subset(splits, cfg.subset, seed)
    if (cfg.holdout > 0 or cfg.subset < 1) and not train_by_batch:
        # the normalisation from the images trained on (their first 20,000, as channel_stats takes; a folder
        # decoded per batch: its first 2,000): the held-out ones (val) are not looked at
        mean, std = split_stats(splits.train)
        splits = dataclasses.replace(splits, mean=mean, std=std)
    for split, data in (("training", splits.train), ("test", splits.test)):
        if len(data) == 0:
            where = f" in {cfg.data_dir}" if cfg.data_dir else ""
            raise ValueError(f"dataset {cfg.dataset!r}{where}: its {split} split holds no images")
    return splits


def _load(
    cfg: DataConfig,
    img_size: tuple[int, int] | None,
    seed: int,
    download: bool,
    in_chans: int | None,
    train_by_batch: bool = False,
) -> Splits:
    name = cfg.dataset
    if name in ("fashion-mnist", "mnist"):
        return load_mnist_like(name, cfg.data_dir, download)
    if name in ("cifar10", "cifar100"):
        from vitkit.data.cifar import load_cifar

        return load_cifar(name, cfg.data_dir, download)
    if name == "imagefolder":
        from vitkit.data.imagefolder import load_imagefolder

        if not cfg.data_dir:
            raise ValueError("dataset 'imagefolder' needs --data-dir ROOT (ROOT/train/<class>/*.png ...)")
        return load_imagefolder(
            cfg.data_dir,
            img_size or (224, 224),
            cfg.val_fraction,
            seed,
            cfg.num_workers,
            in_chans or 3,
            train_by_batch,
        )
    if name == "synthetic":
        return load_synthetic(cfg, seed)
    raise ValueError(f"unknown dataset {name!r}: expected one of {', '.join(DATASETS)}")
