"""`root/train/<class>/*`, `root/val/<class>/*` (or a held-out fraction of train) image folders."""

from __future__ import annotations

import hashlib
import logging
import math
import os
import unicodedata
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from vitkit.data.datasets import ArrayDataset, Splits, classes_left_out, holdout_indices, split_stats

log = logging.getLogger(__name__)

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm")
IN_MEMORY_LIMIT = 2 << 30  # bytes of decoded uint8 images kept in memory; beyond this, decode per batch


RESAMPLE = ("bilinear", "bicubic", "nearest", "lanczos", "box", "hamming")  # PIL's filters, timm's names
CROP_MODES = ("center", "squash")  # timm's eval crops vitkit reproduces (not "border")


def check_image_loading(crop_pct: object, interpolation: object, crop_mode: object) -> str | None:
    """What is wrong with a (crop_pct, interpolation, crop_mode) for reading images, or None."""
    if isinstance(crop_pct, bool) or not isinstance(crop_pct, (int, float)) or not 0 < crop_pct <= 1:
        return f"crop_pct={crop_pct!r} must be a number in (0, 1]"
    if interpolation not in RESAMPLE:
        return f"interpolation={interpolation!r} must be one of {', '.join(RESAMPLE)}"
    if crop_mode not in CROP_MODES:
        return f"crop_mode={crop_mode!r} must be one of {', '.join(CROP_MODES)}"
    return None


def load_image(
    path: str,
    size: tuple[int, int],
    in_chans: int = 3,
    crop_pct: float = 1.0,
    interpolation: str = "bilinear",
    crop_mode: str = "center",
) -> torch.Tensor:
    """Decode any PIL-readable image (grayscale, RGBA, palette...), resize it to cover size / crop_pct keeping its
    aspect ratio (crop_mode "squash": to exactly that size), centre-crop `size`: (C, H, W) uint8. timm's eval
    transform for its `crop_pct`, `interpolation` and `crop_mode` (a pretrained model's pretrained_cfg)."""
    from PIL import Image, UnidentifiedImageError

    wrong = check_image_loading(crop_pct, interpolation, crop_mode)
    if wrong:
        raise ValueError(f"reading {path}: {wrong}")
    resample = getattr(Image, interpolation.upper())

    try:
        with Image.open(path) as im:
            im.load()
            if im.mode.startswith("I"):
                im = Image.fromarray(
                    _integer_pixels(np.asarray(im).astype(np.int64), im.mode, im.format), mode="L"
                )
            elif im.mode == "F":
                raise ValueError("32-bit float pixels: their range is unknown; save as 8- or 16-bit")
            if im.mode in ("P", "LA", "RGBA", "PA") or "transparency" in im.info:
                im = im.convert("RGBA")
                background = Image.new("RGBA", im.size, (255, 255, 255, 255))
                im = Image.alpha_composite(background, im)
            im = im.convert("L" if in_chans == 1 else "RGB")
            h, w = size
            sh, sw = math.floor(h / crop_pct), math.floor(w / crop_pct)  # timm's scale size
            if crop_mode == "squash":  # every side to the scale size, the aspect ratio not kept
                new = (sw, sh)
            # torchvision's Resize(shorter side) where the sides agree, as timm and transformers: the longer truncated
            elif sh == sw:
                short, long = min(im.size), max(im.size)
                side = int(sh * long / short)
                new = (sh, side) if im.width == short else (side, sh)
            else:  # timm's ResizeKeepRatio: both sides over the smaller ratio, rounded
                ratio = min(im.height / sh, im.width / sw)
                new = (round(im.width / ratio), round(im.height / ratio))
            if new != im.size:
                im = im.resize(new, resample)
            # the crop's offset rounded as torchvision's center_crop (half to even), which timm's transforms use
            left, top = round((im.width - w) / 2), round((im.height - h) / 2)
            im = im.crop((left, top, left + w, top + h))
            arr = np.asarray(im, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
        raise ValueError(f"cannot read image {path}: {e}") from None
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)  # (C, H, W)


def _integer_pixels(wide: np.ndarray, mode: str, fmt: str | None) -> np.ndarray:
    """Integer greyscale as 8 bits: 16-bit images (I;16*, a 16-bit PGM) by their top 8 bits; a 32-bit integer
    image (mode I, a TIFF's) by its values where they lie in 0..255 (torchvision's reading), as 16-bit where they
    lie in 0..65535; beyond that its range is unknown."""
    top = int(wide.max(initial=0))
    if mode.startswith("I;16") or fmt == "PPM" or top > 255:
        if top > 65535 or int(wide.min(initial=0)) < 0:
            raise ValueError(
                f"32-bit integer pixels in {wide.min()}..{top}: their range is unknown; save as 8- or 16-bit"
            )
        return (wide >> 8).astype(np.uint8)
    return np.clip(wide, 0, 255).astype(np.uint8)


def _hidden(name: str) -> bool:
    """A folder that holds no classes or images: hidden (.ipynb_checkpoints) or macOS's zip metadata."""
    return name.startswith(".") or name == "__MACOSX"


def scan(folder: str, classes: list[str] | None = None) -> tuple[list[str], list[int], list[str]]:
    """Files and labels under folder/<class>/; the class list is sorted folder names unless given."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"image folder {folder} does not exist")
    found = sorted(d for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d)) and not _hidden(d))
    # a name the file system holds in another encoding cannot be written to data.json or a report
    for d in found:
        try:
            d.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(
                f"{folder}: class folder {d!r} is not a UTF-8 name; rename it (class names go into data.json "
                "and the report)"
            ) from None
    if classes is None:
        classes = found
        if not classes:
            raise ValueError(f"{folder} has no class sub-folders (expected {folder}/<class>/<image>)")
    else:
        extra = set(found) - set(classes)
        if extra:
            raise ValueError(f"{folder} has classes {sorted(extra)} that the training folder lacks")
    paths, labels = [], []
    for i, c in enumerate(classes):
        cdir = os.path.join(folder, c)
        if not os.path.isdir(cdir):
            continue
        before, seen = len(paths), {os.path.realpath(cdir)}
        # in sorted order, hidden folders (.ipynb_checkpoints) skipped; linked folders followed as torchvision
        # does, each real folder once (a link back up would loop)
        for root, dirs, files in os.walk(cdir, followlinks=True):
            keep = []
            for d in sorted(d for d in dirs if not _hidden(d)):
                real = os.path.realpath(os.path.join(root, d))
                if real not in seen:
                    seen.add(real)
                    keep.append(d)
            dirs[:] = keep
            for f in sorted(files):  # hidden files (macOS ._name, .DS_Store) are not images
                if f.lower().endswith(EXTENSIONS) and not f.startswith("."):
                    paths.append(os.path.join(root, f))
                    labels.append(i)
        if len(paths) == before:
            log.warning("%s: class %r has no images", folder, c)
    if not paths:
        raise ValueError(f"{folder} holds no images with extensions {', '.join(EXTENSIONS)}")
    if len(classes) == 1:
        log.warning("%s: one class only (%r): a classifier needs two or more", folder, classes[0])
    return paths, labels, classes


@dataclass
class FileDataset:
    """A split decoded from files per batch (for folders too large to hold in memory)."""

    paths: list[str]
    labels: torch.Tensor
    size: tuple[int, int]
    in_chans: int = 3
    workers: int = 0  # decoding threads (0: up to 8, one per core)

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def images(self) -> torch.Tensor:  # shape probe used by Splits
        return torch.empty(0, self.in_chans, *self.size, dtype=torch.uint8)

    def get_batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ids = idx.tolist()
        with ThreadPoolExecutor(max_workers=decoding_threads(self.workers)) as pool:
            imgs = list(pool.map(lambda i: load_image(self.paths[i], self.size, self.in_chans), ids))
        return torch.stack(imgs), self.labels[idx.cpu()]

    def to(self, device):
        return self

    def subset(self, idx: torch.Tensor) -> FileDataset:
        """The samples at `idx`, in that order."""
        paths = [self.paths[i] for i in idx.tolist()]
        return FileDataset(paths, self.labels[idx], self.size, self.in_chans, self.workers)


def decoding_threads(workers: int = 0) -> int:
    """Threads decoding image files: `data.num_workers`, else up to 8, one per core."""
    return workers or min(8, os.cpu_count() or 1)


def _unreadable(path: str) -> str | None:
    """Why PIL cannot identify an image file from its header, or None."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.size  # noqa: B018  (the header is read on open)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
        return f"{path}: {e}"
    return None


def check_headers(paths: list[str], workers: int = 0) -> None:
    """Refuse a folder decoded per batch that holds files PIL cannot identify, now rather than at the training
    step that reaches one (a resume would stop there again, and removing the file changes the folder the run
    recorded). Headers only: a file truncated past its header is found when decoded."""
    with ThreadPoolExecutor(max_workers=decoding_threads(workers)) as pool:
        bad = [why for why in pool.map(_unreadable, paths) if why]
    if bad:
        raise ValueError(
            f"{len(bad)} of {len(paths)} image files cannot be read: {'; '.join(bad[:3])}"
            f"{'; ...' if len(bad) > 3 else ''} (remove or replace them before training)"
        )


def _decode_all(
    paths: list[str],
    labels: list[int],
    size: tuple[int, int],
    workers: int = 0,
    in_chans: int = 3,
    budget: int = 0,
) -> ArrayDataset | FileDataset:
    """A split in memory when its decoded images fit in `budget` bytes (else decoded per batch), written in place
    into one tensor (no second copy while stacking)."""
    labels_t = torch.tensor(labels, dtype=torch.int64)
    if len(paths) * in_chans * size[0] * size[1] > budget:
        log.info("%d images at %s: decoding per batch (their headers checked now)", len(paths), size)
        check_headers(paths, workers)
        return FileDataset(paths, labels_t, size, in_chans, workers)
    images = torch.empty((len(paths), in_chans, *size), dtype=torch.uint8)  # (N, C, H, W)

    def decode(i: int) -> None:
        images[i] = load_image(paths[i], size, in_chans)

    with ThreadPoolExecutor(max_workers=decoding_threads(workers)) as pool:
        list(pool.map(decode, range(len(paths))))
    return ArrayDataset(images, labels_t)


def own_val_folder(root: str) -> str | None:
    """The folder's own evaluation split, root/test or else root/val, if it has one (with both, val/ is the
    validation split)."""
    return next(
        (os.path.join(root, d) for d in ("test", "val") if os.path.isdir(os.path.join(root, d))), None
    )


def fold_listing(folder: str, paths: list[str], labels: list[int]) -> dict[str, object]:
    """What a sub-folder held when it was read: its image count and a SHA-256 of its files' relative paths
    ("/"-separated, NFC-normalised names, in `scan`'s order) and labels (recorded in a run's data.json, so that a folder
    changed since training is noticed)."""
    h = hashlib.sha256()
    for path, label in zip(paths, labels):
        rel = unicodedata.normalize("NFC", os.path.relpath(path, folder).replace(os.sep, "/"))
        h.update(f"{rel}\0{label}\n".encode("utf-8", "surrogateescape"))
    return {"images": len(paths), "sha256": h.hexdigest()}


def listing_changes(recorded: object, current: dict[str, dict[str, object]]) -> dict[str, str]:
    """The sub-folders whose files differ from a run's record of them, or that one of the two lacks: {name: how}
    ("82 images then, 84 now", read then and not now, or the reverse); {} for a run that recorded none."""
    if not isinstance(recorded, dict):
        return {}
    changed = {}
    for name in sorted(set(recorded) | set(current)):
        then, now = recorded.get(name), current.get(name)
        if now is None:
            if isinstance(then, dict):
                changed[name] = f"read when the run was trained ({then.get('images')} images), not now"
        elif not isinstance(then, dict):
            changed[name] = f"not read when the run was trained ({now['images']} images now)"
        elif then.get("sha256") != now["sha256"]:
            n0, n1 = then.get("images"), now["images"]
            changed[name] = f"{n0} images then, {n1} now" if n0 != n1 else f"{n1} images, not the same files"
    return changed


def source_changes(recorded: object, current: dict[str, str]) -> dict[str, tuple[str, str | None]]:
    """The splits drawn from another sub-folder than a run recorded: {split: (then, now)}."""
    if not isinstance(recorded, dict):
        return {}
    return {k: (v, current.get(k)) for k, v in recorded.items() if current.get(k) != v}


def val_fraction_beside_val(root: str, val_fraction: float, val_dir: str) -> str:
    """What a val_fraction beside the folder's own evaluation split is told."""
    return (
        f"data.val_fraction={val_fraction}: {root} has its own {os.path.basename(val_dir)}/ folder, which is the "
        "evaluation split (data.holdout, a fraction such as 0.1, holds out part of train/ to select on)"
    )


def check_val_fraction(root: str | None, val_fraction: float) -> None:
    """Refuse training with a val_fraction beside the folder's own val/ (it would do nothing)."""
    val_dir = own_val_folder(os.path.expanduser(root)) if root and val_fraction else None
    if val_dir:
        raise ValueError(val_fraction_beside_val(root, val_fraction, val_dir) + "; drop val_fraction")


def load_imagefolder(
    root: str,
    size: tuple[int, int],
    val_fraction: float = 0.0,
    seed: int = 0,
    workers: int = 0,
    in_chans: int = 3,
    train_by_batch: bool = False,
) -> Splits:
    """The splits of an image folder: train/, and test/ or val/ as the test split (with both, val/ the validation
    split), or a data.val_fraction of train/ drawn by `seed`; class names are the sub-folder names; `workers` threads
    decode its files (0: up to 8, one per core); images are decoded to RGB (`in_chans` 3) or greyscale (1).
    `train_by_batch`: the training images are listed, not decoded (read per batch, as far as they are: what
    evaluates a test split or draws a few shots), and no statistics are taken of them (mean/std 0.5)."""
    if in_chans not in (1, 3):
        raise ValueError(f"{root}: images are decoded to 1 (L) or 3 (RGB) channels, not {in_chans}")
    train_dir = os.path.join(root, "train")
    if not os.path.isdir(train_dir):
        hint = ""
        if os.path.basename(os.path.normpath(root)) in ("train", "val", "test"):  # the split folder itself
            hint = f"; did you mean --data-dir {os.path.dirname(os.path.normpath(root)) or '.'}?"
        raise FileNotFoundError(
            f"{root}: expected {train_dir}/<class>/<image> (and test/ or val/, or a val_fraction){hint}"
        )
    paths, labels, classes = scan(train_dir)
    files, sources = {"train": fold_listing(train_dir, paths, labels)}, {"train": "train", "test": "train"}
    test_dir = own_val_folder(root)
    val_files = None
    if test_dir:
        if val_fraction:  # training refuses it (check_val_fraction); a saved run's is read with a warning
            log.warning("%s", val_fraction_beside_val(root, val_fraction, test_dir) + "; it is ignored")
        vpaths, vlabels, _ = scan(test_dir, classes)
        sources["test"] = os.path.basename(test_dir)
        files[sources["test"]] = fold_listing(test_dir, vpaths, vlabels)
        val_dir = os.path.join(root, "val")
        if sources["test"] == "test" and os.path.isdir(val_dir):  # both: test/ scores, val/ selects
            val_paths, val_labels, _ = scan(val_dir, classes)
            files["val"], sources["val"] = fold_listing(val_dir, val_paths, val_labels), "val"
            log.info(
                "%s: test/ is the test split, val/ the validation split (checkpoints/best is chosen on it)",
                root,
            )
            val_files = (val_paths, val_labels)
    else:
        if not 0 < val_fraction < 1:
            others = sorted(
                d
                for d in os.listdir(root)
                if d != "train" and not _hidden(d) and os.path.isdir(os.path.join(root, d))
            )
            seen = (
                f" ({', '.join(o + '/' for o in others)} not read: name the evaluation folder test/ or val/)"
            )
            raise ValueError(
                f"{root} has no test/ or val/ folder{seen if others else ''}: add one, or set data.val_fraction (e.g. "
                "0.1: that fraction of train/ becomes the test split; data.holdout adds a validation split)"
            )
        kept, held = holdout_indices(torch.tensor(labels), val_fraction, seed)  # that fraction of every class
        if len(held) == 0 or len(kept) == 0:
            raise ValueError(
                f"{root}: data.val_fraction={val_fraction} holds out {len(held)} of its {len(paths)} training "
                "images (per class, rounded); choose a fraction that leaves both splits images"
            )
        gone = classes_left_out(torch.tensor(labels), kept)
        if gone:
            log.warning(
                "%s: data.val_fraction=%g holds out every image of class(es) %s (too few to split): the model "
                "never trains on them",
                root,
                val_fraction,
                ", ".join(repr(classes[c]) for c in gone),
            )
        vpaths, vlabels = [paths[i] for i in held.tolist()], [labels[i] for i in held.tolist()]
        paths, labels = [paths[i] for i in kept.tolist()], [labels[i] for i in kept.tolist()]
    # stored in one fixed shuffled order, as the standard datasets' files are, not class by class: the first
    # images (channel_stats' sample) are then a sample of every class
    order = torch.randperm(len(paths), generator=torch.Generator().manual_seed(0)).tolist()
    paths, labels = [paths[i] for i in order], [labels[i] for i in order]
    # IN_MEMORY_LIMIT over all splits, train first: a split beyond what is left is decoded per batch
    budget = IN_MEMORY_LIMIT
    decoded = []
    for name, split in (("train", (paths, labels)), ("val", val_files), ("test", (vpaths, vlabels))):
        if name == "train" and train_by_batch:  # listed only: no decoding, no header checks
            decoded.append(
                FileDataset(paths, torch.tensor(labels, dtype=torch.int64), size, in_chans, workers)
            )
            continue
        decoded.append(split and _decode_all(*split, size, workers, in_chans, budget))
        budget -= len(split[0]) * in_chans * size[0] * size[1] if isinstance(decoded[-1], ArrayDataset) else 0
    train, val, test = decoded
    # decoded per batch: of its first images (they were 0.5, 0.5); listed only: none (the caller has a run's)
    mean, std = ((0.5,) * in_chans,) * 2 if train_by_batch else split_stats(train)
    return Splits(
        "imagefolder",
        train,
        test,
        classes,
        mean,
        std,
        val=val,
        files=files,
        sources=sources,  # type: ignore[arg-type]
    )
