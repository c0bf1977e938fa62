"""CIFAR-10/100 from the python pickle batches, read with a restricted unpickler (no code runs)."""

from __future__ import annotations

import io
import logging
import os
import pickle

import numpy as np
import torch

from vitkit.data.datasets import ArrayDataset, Splits, _with_stats, locate, log_loaded

log = logging.getLogger(__name__)

# The only globals a CIFAR batch needs: numpy array reconstruction (protocols 2-4; protocol 5, Python 3.14's
# default, rebuilds an array from its bytes) and the bytes themselves as Python 3 writes them at protocol 2
# (_codecs.encode, which torch's weights-only loader allows too). Nothing callable beyond these.
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),
}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles plain data and numpy arrays only; any other global is refused."""

    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(
            f"refusing to load global {module}.{name}: not plain data or a numpy array"
        )


def safe_unpickle(path: str) -> dict:
    """Load a CIFAR pickle with the restricted unpickler; errors name the file."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise FileNotFoundError(f"cannot read {path}: {e.strerror}") from None
    try:
        obj = RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()
    except pickle.UnpicklingError as e:
        if "refusing to load global" in str(e):  # a valid pickle naming code vitkit does not run
            raise ValueError(f"{path}: not a CIFAR batch vitkit can read safely ({e})") from None
        raise ValueError(f"{path}: not a valid CIFAR pickle ({e}: not a pickle or damaged)") from None
    except Exception as e:
        raise ValueError(f"{path}: not a valid CIFAR pickle ({type(e).__name__}: {e})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a dict, got {type(obj).__name__}")
    return {k.decode("utf-8", "replace") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _batch(path: str, label_key: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    d = safe_unpickle(path)
    if "data" not in d or label_key not in d:
        raise ValueError(f"{path}: missing key 'data' or {label_key!r}; keys are {sorted(map(repr, d))}")
    data = np.asarray(d["data"])
    try:
        raw = np.asarray(d[label_key])
        labels = raw.astype(np.int64)
    except (TypeError, ValueError, OverflowError) as e:
        raise ValueError(f"{path}: {label_key!r} must be integer class indices ({e})") from None
    if raw.ndim != 1 or not (np.issubdtype(raw.dtype, np.integer) or np.array_equal(labels, raw)):
        raise ValueError(
            f"{path}: {label_key!r} must be a list of whole class indices, got {raw.dtype} of shape {raw.shape}"
        )
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise ValueError(f"{path}: 'data' must be uint8 of shape (N, 3072), got {data.dtype} {data.shape}")
    if len(labels) != len(data):
        raise ValueError(f"{path}: {len(data)} images but {len(labels)} labels")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"{path}: labels must lie in [0, {num_classes}), found {labels.min()}..{labels.max()}"
        )
    return data.reshape(-1, 3, 32, 32), labels


LAYOUT = {
    "cifar10": (
        "cifar-10-batches-py",
        [f"data_batch_{i}" for i in range(1, 6)],
        ["test_batch"],
        "batches.meta",
        "labels",
        "label_names",
        10,
    ),
    "cifar100": ("cifar-100-python", ["train"], ["test"], "meta", "fine_labels", "fine_label_names", 100),
}


def _cifar_folder(root: str, name: str) -> str | None:
    sub, train, test, *_ = LAYOUT[name]
    for folder in (os.path.join(root, sub), root):
        if all(os.path.isfile(os.path.join(folder, f)) for f in train + test):
            return folder
    return None


def _fetch(name: str, target: str) -> None:
    import torchvision

    cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
    cls(target, train=True, download=True)


def load_cifar(name: str, data_dir: str | None = None, download: bool = True) -> Splits:
    """CIFAR-10 or CIFAR-100 from --data-dir, $VITKIT_DATA, or a torchvision download."""
    sub, train_files, test_files, meta, label_key, names_key, num_classes = LAYOUT[name]
    hint = f"put the python version's {sub}/ folder under --data-dir (or $VITKIT_DATA); with internet, vitkit downloads it"
    folder = locate(
        name, data_dir, download, lambda r: _cifar_folder(r, name), lambda t: _fetch(name, t), hint
    )
    parts = {}
    for split, files in (("train", train_files), ("test", test_files)):
        arrays = [_batch(os.path.join(folder, f), label_key, num_classes) for f in files]
        images = np.concatenate([a[0] for a in arrays])
        labels = np.concatenate([a[1] for a in arrays])
        parts[split] = ArrayDataset(torch.from_numpy(images), torch.from_numpy(labels))
    classes = [f"class{i}" for i in range(num_classes)]
    meta_path = os.path.join(folder, meta)
    if os.path.isfile(meta_path):  # the class names are only for display: the data stands without them
        try:
            names = safe_unpickle(meta_path).get(names_key)
        except (OSError, ValueError) as e:
            names = e
        if isinstance(names, (list, tuple)) and len(names) == num_classes:
            classes = [n.decode("utf-8", "replace") if isinstance(n, bytes) else str(n) for n in names]
        elif isinstance(names, Exception):
            log.warning("%s; classes are named class0...", names)
        else:
            log.warning(
                "%s: no list of %d %r; classes are named class0...", meta_path, num_classes, names_key
            )
    log_loaded(name, folder)
    return _with_stats(name, parts["train"], parts["test"], classes)
