"""vitkit's own weights: run folders (config.json + model.safetensors), checkpoint folders, exported files.

Also writes them: `save_run_dir` makes a folder that `vitkit eval/predict/export/finetune` accept, and
`save_model_file` one self-describing safetensors file (the ModelConfig rides in its metadata).
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch

from vitkit.atomic import write_json
from vitkit.config import ModelConfig, RunConfig, from_dict, load_run_config, save_json, to_dict
from vitkit.convert.checkpoint import Checkpoint, adapt_channel_stats
from vitkit.convert.files import ConversionError, read_json_file, read_safetensors
from vitkit.train.checkpoint import MANIFEST, CheckpointError, file_sha256, save_weights, verify_checkpoint
from vitkit.train.runfiles import EMA_WEIGHTS

CONFIG = "config.json"
CONVERTED = "converted"  # the recipe name of a converted run (it has no dataset of its own)
DATA = "data.json"
WEIGHTS = "model.safetensors"
SUMMARY = "summary.json"
# timm's eval resize and crop, when the weights give them
CROP_KEYS = ("crop_pct", "interpolation", "crop_mode")
# what a self-describing weights file keeps of its run's data.json: how to read and normalise an image (native_size:
# the size a run's images are read at before resizing to the model's, e.g. 28 px for a 56-px fashion-mnist-gpu
# model), and the class names
RUN_META_KEYS = ("mean", "std", "classes", "native_size", *CROP_KEYS)


def _meta_from_data(run_dir: str) -> dict[str, Any]:
    path = os.path.join(run_dir, DATA)
    if not os.path.isfile(path):
        return {}
    data = read_json_file(path)
    meta = {k: data[k] for k in RUN_META_KEYS if data.get(k)}
    if str(data.get("dataset", "")).startswith(
        "pretrained:"
    ):  # converted weights: no dataset to read images of
        meta.pop("native_size", None)  # (older conversions wrote the model's size, stale at another size)
    return meta


def _run_config(run_dir: str) -> RunConfig:
    try:
        return load_run_config(os.path.join(run_dir, CONFIG))
    except (ValueError, TypeError, FileNotFoundError) as e:
        raise ConversionError(f"{run_dir}/{CONFIG} is not a vitkit run config: {e}") from None


def check_run_weights(run_dir: str, weights: str) -> None:
    """A run's weights file against what recorded it when it was written: a checkpoint folder's files against its
    manifest, the final model.safetensors against the SHA-256 in summary.json (runs since the tenth session); a
    damaged or replaced file is a ConversionError pointing at the verified checkpoints."""
    folder = os.path.dirname(os.path.abspath(weights))
    if os.path.isfile(os.path.join(folder, MANIFEST)):  # RUN/checkpoints/step-N or best
        try:
            verify_checkpoint(folder)
        except CheckpointError as e:
            raise ConversionError(f"{e}; pass another of {os.path.dirname(folder)}'s checkpoints") from None
        return
    summary_path = os.path.join(run_dir, SUMMARY)
    if folder != os.path.abspath(run_dir) or os.path.basename(weights) != WEIGHTS:
        return
    summary = read_json_file(summary_path) if os.path.isfile(summary_path) else None
    want = summary.get("weights_sha256") if isinstance(summary, dict) else None
    if want and file_sha256(weights) != want:
        raise ConversionError(
            f"{weights} does not match the SHA-256 that {summary_path} recorded when training wrote it: the file "
            f"is damaged or was replaced; the checkpoints in {os.path.join(run_dir, 'checkpoints')} are verified "
            "copies (pass one of them instead)"
        )


def folder_weights(folder: str) -> str:
    """The weights of record in a run or checkpoint folder: a checkpoint's EMA (ema.safetensors) where the run
    keeps one, as its final model.safetensors is (model.safetensors there holds the raw weights)."""
    ema = os.path.join(folder, EMA_WEIGHTS)
    return ema if os.path.isfile(ema) else os.path.join(folder, WEIGHTS)


def read_run(path: str) -> Checkpoint:
    """A run folder, a checkpoint folder inside one (checkpoints/step-N: its EMA weights where it has them), or a
    weights file inside either."""
    path = os.path.abspath(path)
    folder = os.path.dirname(path) if os.path.isfile(path) else path
    weights = path if os.path.isfile(path) else folder_weights(folder)
    run_dir = folder
    if not os.path.isfile(os.path.join(run_dir, CONFIG)):
        run_dir = os.path.dirname(os.path.dirname(folder))  # RUN/checkpoints/step-N/model.safetensors
    if not os.path.isfile(os.path.join(run_dir, CONFIG)):
        raise ConversionError(f"{path}: no vitkit {CONFIG} beside it or two folders up")
    if not os.path.isfile(weights):
        raise ConversionError(
            f"{folder} has no {WEIGHTS} (a run still training?); pass one of its checkpoints/step-N folders"
        )
    cfg = _run_config(run_dir)
    check_run_weights(run_dir, weights)
    state, _ = read_safetensors(weights)
    return Checkpoint(state, cfg.model, "vitkit", weights, _meta_from_data(run_dir), heads_stated=True)


def read_model_file(path: str, state: dict[str, torch.Tensor], meta: dict[str, str]) -> Checkpoint:
    """A safetensors file written by `save_model_file` (its ModelConfig in the metadata)."""
    try:
        cfg = from_dict(ModelConfig, json.loads(meta["config"]), where=f"{path} metadata 'config'")
    except (json.JSONDecodeError, TypeError) as e:
        raise ConversionError(f"{path}: metadata 'config' is not a ModelConfig: {e}") from None
    extra = json.loads(meta.get("preprocess", "{}") or "{}")
    return Checkpoint(state, cfg, "vitkit", path, extra if isinstance(extra, dict) else {}, heads_stated=True)


def save_model_file(path: str, model: torch.nn.Module, preprocess: dict[str, Any] | None = None) -> None:
    """Atomically write the model's weights as safetensors, its ModelConfig (and mean/std) in the metadata."""
    from vitkit.convert.sources import check_saveable

    check_saveable(model)
    meta = {"format": "vitkit", "config": json.dumps(to_dict(model.cfg))}
    if preprocess:  # one mean/std per input channel, as a grey model's adapted filters read them
        preprocess = dict(preprocess)
        for key in ("mean", "std"):
            if isinstance(preprocess.get(key), (list, tuple)):
                preprocess[key] = adapt_channel_stats(list(preprocess[key]), model.cfg.in_chans)
        meta["preprocess"] = json.dumps(preprocess)
    save_weights(path, model.state_dict(), meta)


def save_run_dir(out_dir: str, model: torch.nn.Module, meta: dict[str, Any], source: str) -> None:
    """A vitkit run folder for a converted model: model.safetensors, data.json, then config.json (each atomic).

    The config goes last: a folder is a run once it has one, so an interrupted conversion leaves none.
    """
    os.makedirs(out_dir, exist_ok=True)
    cfg = model.cfg
    data = {
        "dataset": f"pretrained:{source}",
        # only the source's own names: numbers in their place would read as names (MNIST's are digits)
        **({"classes": meta["classes"]} if meta.get("classes") else {}),
        "in_chans": cfg.in_chans,
        # the size a dataset's images are read at: converted weights have none (images are read at the model's)
        **({"native_size": meta["native_size"]} if meta.get("native_size") else {}),
        # one per input channel: a grey model made from RGB weights reads their average
        "mean": adapt_channel_stats(list(meta.get("mean") or [0.5]), cfg.in_chans),
        "std": adapt_channel_stats(list(meta.get("std") or [0.5]), cfg.in_chans),
    }
    data |= {k: meta[k] for k in CROP_KEYS if meta.get(k)}  # how the weights' images were cropped (timm hub)
    save_model_file(os.path.join(out_dir, WEIGHTS), model, {k: data[k] for k in RUN_META_KEYS if k in data})
    write_json(os.path.join(out_dir, DATA), data)
    run = RunConfig(recipe=CONVERTED, model=cfg, expected=f"converted from {source}")
    save_json(run, os.path.join(out_dir, CONFIG))
