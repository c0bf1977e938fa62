"""The files of a run folder: config.json, data.json, metrics.jsonl, summary.json, weights."""

from __future__ import annotations

import json
import os
import re
import shutil
from typing import Any

from vitkit.atomic import atomic_write_bytes, json_safe, write_json
from vitkit.config import RunConfig, load_run_config, to_dict

CONFIG = "config.json"
DATA = "data.json"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
WEIGHTS = "model.safetensors"
RAW_WEIGHTS = "model_raw.safetensors"  # the raw weights beside an EMA's final ones
EMA_WEIGHTS = "ema.safetensors"  # a checkpoint's EMA of the weights (beside its raw model.safetensors)
CHECKPOINTS = "checkpoints"
PRETRAINED = "pretrained.json"  # a fine-tuning run's source


def run_dir_of(path: str) -> str | None:
    """The run folder a weights file was written into by training, or None: RUN/model.safetensors or
    model_raw.safetensors, RUN/checkpoints/<name>/model.safetensors or ema.safetensors (its config.json there)."""
    folder, name = os.path.split(os.path.abspath(path))
    if name in (WEIGHTS, EMA_WEIGHTS) and os.path.basename(os.path.dirname(folder)) == CHECKPOINTS:
        run_dir = os.path.dirname(os.path.dirname(folder))
    elif name in (WEIGHTS, RAW_WEIGHTS):
        run_dir = folder
    else:
        return None
    config = os.path.join(run_dir, CONFIG)
    return run_dir if os.path.isfile(config) and not is_model_config(config) else None


def is_run_config(config: Any) -> bool:
    """Whether a parsed config.json is a vitkit RunConfig (not a timm or transformers model config)."""
    return (
        isinstance(config, dict) and isinstance(config.get("model"), dict) and "embed_dim" in config["model"]
    )


def is_model_config(path: str) -> bool:
    """A timm or transformers model folder's config.json (not a run's; vitkit export --format timm|hf writes
    them)."""
    try:
        with open(path, encoding="utf-8") as f:
            d = json.load(f)
    except (OSError, ValueError, RecursionError):  # not JSON, not UTF-8, nested past the parser's depth
        return False
    return isinstance(d, dict) and bool({"architecture", "pretrained_cfg", "model_type"} & set(d))


def holds_run(folder: str) -> bool:
    """Whether `folder` holds a vitkit run's config.json (an unreadable or non-JSON file is not one)."""
    try:
        with open(os.path.join(folder, CONFIG), encoding="utf-8") as f:
            return is_run_config(json.load(f))
    except (OSError, ValueError, RecursionError):  # not JSON, not UTF-8, nested past the parser's depth
        return False


def read_json(path: str) -> Any:
    """Read JSON; errors name the file."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except OSError as e:
        raise FileNotFoundError(f"cannot read {path}: {e.strerror}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None


def write_config(run_dir: str, cfg: RunConfig) -> None:
    write_json(os.path.join(run_dir, CONFIG), to_dict(cfg))


def read_config(run_dir: str) -> RunConfig:
    return load_run_config(os.path.join(run_dir, CONFIG))


RUN_OUTPUTS = (
    CHECKPOINTS, METRICS, SUMMARY, WEIGHTS, RAW_WEIGHTS, PRETRAINED, "tensorboard",
    "report.html", "inspect",
)  # fmt: skip


def clear_run(out_dir: str) -> None:
    """Remove an earlier run's outputs (checkpoints, metrics, weights, report) from its folder; nothing else.

    Only a folder that holds a run (its config.json) is touched: a fresh run there replaces the old one.
    """
    if not os.path.exists(os.path.join(out_dir, CONFIG)):
        return
    # the reports and inspections of its other weights, by the labels `vitkit report` gives them (checkpoints/best:
    # report-best.html, inspect-best/; model_raw.safetensors: report-model_raw.html); an inspection only where it
    # holds inspect.json: a user's folder of another name is not touched
    label = r"((best|step-\d{8})(-[\w.-]+)?|model_raw|model-export[\w.-]*)"
    others = [
        n
        for n in os.listdir(out_dir)
        if re.fullmatch(f"report-{label}\\.html", n)
        or (re.fullmatch(f"inspect-{label}", n) and os.path.isfile(os.path.join(out_dir, n, "inspect.json")))
    ]
    for name in (*RUN_OUTPUTS, *others):
        path = os.path.join(out_dir, name)
        if os.path.islink(path) or os.path.isfile(path):
            os.remove(path)  # a link goes, not what it points to
        elif os.path.isdir(path):
            shutil.rmtree(path)


# summary.json's numbers that readers format (the report's headline), each checked by read_summary
SUMMARY_NUMBERS = ("test_top1", "test_top5", "steps", "epochs", "train_seconds")
SUMMARY_OPTIONAL = ("val_top1", "test_top1_no_tta", "best_test_top1")


def read_summary(run_dir: str) -> dict | None:
    """A run's summary.json (None before training has finished), its numbers checked: an error names the key."""
    path = os.path.join(run_dir, SUMMARY)
    if not os.path.exists(path):
        return None
    summary = read_json(path)
    if not isinstance(summary, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(summary).__name__}")
    tta = summary.get("tta")
    needed = SUMMARY_NUMBERS + (("test_top1_no_tta",) if tta not in (None, "none") else ())  # the plain top-1
    for key in needed + tuple(k for k in SUMMARY_OPTIONAL if k in summary and k not in needed):
        value = summary.get(key)
        if not is_number(value):
            raise ValueError(f"{path}: {key!r} must be a number, got {value!r:.60}")
    if tta is not None and not isinstance(tta, str):
        raise ValueError(f"{path}: 'tta' must be the name of a test-time augmentation, got {tta!r:.60}")
    confusion = summary.get("confusion")
    if confusion is not None and not (
        isinstance(confusion, list)
        and all(
            isinstance(r, list) and len(r) == len(confusion) and all(map(is_number, r)) for r in confusion
        )
    ):
        raise ValueError(f"{path}: 'confusion' must be a square list of lists of counts")
    return summary


def is_number(value: Any) -> bool:
    """An int or float (not a bool: JSON's true is no count)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class MetricsLog:
    """Append-only metrics.jsonl, one line per log step and per evaluation, flushed each write."""

    def __init__(self, path: str | None):
        self.path = path

    def truncate_after(self, step: int, final: bool = False) -> None:
        """Drop lines past `step` (written after the checkpoint a resumed run restarts from); `final`: the run
        had finished at `step`, so its closing evaluation (written after that checkpoint) goes too."""
        if not self.path or not os.path.exists(self.path):
            return
        keep = []
        with open(self.path) as f:
            for line in f:
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut by a kill
                if not isinstance(rec, dict) or not is_number(rec.get("step", 0)):
                    continue  # not a record vitkit wrote
                after = rec.get("step", 0) > step or (final and rec.get("step") == step and "split" in rec)
                if not after:
                    keep.append(json.dumps(rec) + "\n")
        atomic_write_bytes(self.path, "".join(keep).encode())

    def write(self, record: dict) -> None:
        if not self.path:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(json_safe(record)) + "\n")
            f.flush()


def read_metrics(run_dir: str) -> list[dict]:
    """All records of a run's metrics.jsonl (cut lines skipped), each checked: an error names the line."""
    path = os.path.join(run_dir, METRICS)
    out = []
    if os.path.exists(path):
        with open(path, encoding="utf-8", errors="replace") as f:
            for n, line in enumerate(f, 1):
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut by a kill
                out.append(check_metrics_record(rec, f"{path}:{n}"))
    return out


def check_metrics_record(rec: Any, where: str) -> dict:
    """`rec` if it is a metrics.jsonl record: a JSON object with a number 'step', numbers (or null) elsewhere but
    'split' (a name) and 'fewshot' (an object); ValueError naming `where` and the key otherwise."""
    if not isinstance(rec, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(rec).__name__}")
    for key, value in rec.items():
        ok = {
            "step": is_number(value),
            "split": isinstance(value, str),
            "fewshot": isinstance(value, dict),
        }.get(key, value is None or is_number(value))
        if not ok:
            raise ValueError(f"{where}: {key!r} must be {_KINDS.get(key, 'a number')}, got {value!r:.60}")
    if "step" not in rec:
        raise ValueError(f"{where}: no 'step'")
    return rec


_KINDS = {"split": "a split's name", "fewshot": "an object of few-shot accuracies"}
