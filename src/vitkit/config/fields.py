"""A config field's value against its annotation: the check `--set`, config.json and Python-built configs share."""

from __future__ import annotations

import dataclasses
import numbers
import os
import types
import typing
from typing import Any


def has_type(value: Any, tp: Any) -> bool:
    """Whether a value fits a field's annotation (int for float allowed; bool is not an int)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return any(has_type(value, a) for a in args)
    if origin is tuple:
        if not isinstance(value, tuple):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(has_type(v, args[0]) for v in value)
        return len(value) == len(args) and all(has_type(v, a) for v, a in zip(value, args))
    if tp is type(None):
        return value is None
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, tp) if isinstance(tp, type) else True


def type_name(tp: Any) -> str:
    if typing.get_origin(tp) is None and hasattr(tp, "__name__"):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _plain(value: Any, tp: Any) -> Any:
    """numpy's numbers and arrays as Python's, whole floats where an int is due (2.0 steps), lists as tuples,
    paths (pathlib) as text."""
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if not isinstance(value, (str, bytes)) and callable(getattr(value, "tolist", None)):  # numpy's arrays
        value = value.tolist()
    if isinstance(value, list):
        value = tuple(value)
    if typing.get_origin(tp) is tuple and isinstance(value, tuple):
        args = typing.get_args(tp)
        inner = [args[0]] * len(value) if len(args) == 2 and args[1] is Ellipsis else list(args)
        return tuple(_plain(v, t) for v, t in zip(value, inner)) if len(inner) == len(value) else value
    if isinstance(value, bool) or not isinstance(value, numbers.Number):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    wants_int = tp is int or (int in typing.get_args(tp) and float not in typing.get_args(tp))
    if wants_int and isinstance(value, numbers.Real) and float(value).is_integer():
        return int(value)
    return float(value) if isinstance(value, numbers.Real) else value


def check_fields(section: str, cfg: Any) -> None:
    """Refuse a frozen config dataclass's field whose value is not of its annotated type, naming `section.key`
    ("false" for a bool, 1.5 steps, a string for a tuple of dataset names); normalise numbers and lists."""
    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        tp = hints[f.name]
        value = _plain(getattr(cfg, f.name), tp)
        if not has_type(value, tp):
            raise ValueError(f"{section}.{f.name}={getattr(cfg, f.name)!r} is not of type {type_name(tp)}")
        object.__setattr__(cfg, f.name, value)
