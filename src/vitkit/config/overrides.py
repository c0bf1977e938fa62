"""Type-checked `a.b=value` overrides and the JSON round trip of the config dataclasses."""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from typing import Any

from vitkit.atomic import write_json
from vitkit.config.fields import has_type, type_name
from vitkit.config.run import RunConfig


def _parse_scalar(key: str, text: str, tp: Any) -> Any:
    """Parse `text` as type `tp` (bool, int, float, str)."""
    if tp is bool:
        low = text.strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{key}={text!r}: expected a boolean (true/false)")
    if tp is int:
        try:
            return int(text)
        except ValueError:
            try:
                as_float = float(text)
            except ValueError:
                as_float = None
            if as_float is not None and as_float.is_integer():
                return int(as_float)
            raise ValueError(f"{key}={text!r}: expected an integer") from None
    if tp is float:
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"{key}={text!r}: expected a number") from None
        if not math.isfinite(value):  # JSON has no inf/nan: the run's config.json could not be read back
            raise ValueError(f"{key}={text!r}: expected a finite number")
        return value
    if tp is str:
        if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":  # a quoted item: ["mnist", "cifar10"]
            return text[1:-1]
        return text
    raise ValueError(f"{key}: cannot parse values of type {tp}")


def parse_value(key: str, text: str, tp: Any) -> Any:
    """Parse the override text for a field annotated `tp`."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if text.strip().lower() in ("none", "null", ""):
            return None
        return parse_value(key, text, args[0])
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:  # variable length, e.g. "3,4,9"; "()" for none
            parts = [p for p in text.strip("()[] ").split(",") if p.strip()]
            return tuple(_parse_scalar(key, p.strip(), args[0]) for p in parts)
        parts = [p for p in text.strip("()[] ").replace("x", ",").split(",") if p.strip()]
        if len(parts) == 1 and args == (int, int):  # a square size: img_size=224, posemb_grid=14
            parts = parts * 2
        if len(parts) != len(args):
            raise ValueError(f"{key}={text!r}: expected {len(args)} comma-separated values")
        return tuple(_parse_scalar(key, p.strip(), a) for p, a in zip(parts, args))
    return _parse_scalar(key, text, tp)


def _field_types(obj: Any) -> dict[str, Any]:
    return typing.get_type_hints(type(obj))


def _lookup_type(cfg: Any, path: str) -> Any:
    obj = cfg
    parts = path.split(".")
    for i, part in enumerate(parts):
        if not dataclasses.is_dataclass(obj):
            raise KeyError(f"unknown config key {path!r}: {'.'.join(parts[:i])} is not a section")
        hints = _field_types(obj)
        if part not in hints:
            valid = ", ".join(sorted(hints))
            prefix = ".".join(parts[:i]) or "the top level"
            raise KeyError(f"unknown config key {path!r}: keys of {prefix} are {valid}")
        if i == len(parts) - 1:
            if dataclasses.is_dataclass(getattr(obj, part)):
                raise KeyError(f"config key {path!r} is a section; set one of its keys instead")
            return hints[part]
        obj = getattr(obj, part)
    raise KeyError(path)


def apply_overrides(cfg: Any, overrides: list[str] | tuple[str, ...]) -> Any:
    """Apply `a.b=value` overrides, each type-checked against the field it names; validate once."""
    data = to_dict(cfg)
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not of the form key=value")
        key, _, text = item.partition("=")
        key = key.strip()
        value = parse_value(key, text.strip(), _lookup_type(cfg, key))
        node = data
        *parents, leaf = key.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = value
    return from_dict(type(cfg), data)


def to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON-ready dict of a (nested) config dataclass."""
    return dataclasses.asdict(cfg)


def from_dict(cls: type, data: dict[str, Any], where: str = "config") -> Any:
    """Build dataclass `cls` from a dict, checking keys and converting lists to tuples."""
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected an object, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    unknown = set(data) - set(hints)
    if unknown:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)}; expected some of {sorted(hints)}")
    kwargs = {}
    for key, value in data.items():
        tp = hints[key]
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            value = from_dict(tp, value, f"{where}.{key}")
        else:
            value = tuple(value) if isinstance(value, list) else value
            if not has_type(value, tp):
                raise ValueError(f"{where}: {key}={value!r} is not of type {type_name(tp)}")
        kwargs[key] = value
    try:
        return cls(**kwargs)
    except ValueError as e:  # a value the config refuses: say which file or object holds it
        raise ValueError(f"{where}: {e}") from None


def save_json(cfg: Any, path: str) -> None:
    """Write a config as indented JSON, atomically."""
    write_json(path, to_dict(cfg))


def load_run_config(path: str) -> RunConfig:
    """Read a run's config.json."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except OSError as e:
        raise FileNotFoundError(f"cannot read run config {path}: {e.strerror}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object (a run's config), got {type(data).__name__}")
    section = data.get("data")
    if isinstance(section, dict) and section.get("randaugment_n") and "randaugment_bins" not in section:
        # written before RandAugment's magnitude moved to timm's and the paper's 0-10 scale: torchvision's 0-30
        data = dict(data, data=dict(section, randaugment_bins=31))
    cfg = from_dict(RunConfig, data, where=path)
    missing = [k for k in ("model", "data", "optim", "train") if k not in data]
    if missing:  # vitkit writes every section: defaults would stand in for what was lost
        raise ValueError(
            f"{path}: missing the section(s) {', '.join(missing)} that every run's config.json has"
        )
    return cfg
