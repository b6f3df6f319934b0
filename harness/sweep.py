"""Sweep files: `harness run --config sweeps/NAME.yaml`. The YAML names models, methods (with
per-method config overrides), sparsities, seeds, tasks, limits and budgets; every key and value is
checked up front and an error names the file, line and key."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import yaml

from harness.config import build_config
from harness.errors import HarnessError
from harness.registry import get_pruner
from harness.sparsity import Sparsity


def _str_list(value: Any) -> list[str]:
    items = value if isinstance(value, list) else [value]
    if not all(isinstance(item, (str, int, float)) for item in items):
        raise ValueError("takes a name or a list of names")
    return [str(item) for item in items]


def _int_list(value: Any) -> list[int]:
    items = value if isinstance(value, list) else [value]
    if not all(isinstance(item, int) and not isinstance(item, bool) for item in items):
        raise ValueError("takes an integer or a list of integers")
    return items


def _sparsities(value: Any) -> list[str]:
    labels = _str_list(value)
    for label in labels:
        Sparsity.parse(label)
    return labels


def _optional_int(value: Any) -> int | None:
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
        raise ValueError("takes a non-negative integer or null")
    return value


def _positive_int(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError("takes a positive integer")
    return value


def _choice(*choices: str) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if value not in choices:
            raise ValueError(f"takes one of {', '.join(choices)}")
        return value

    return check


def _text(value: Any) -> str:
    if not isinstance(value, (str, int)):
        raise ValueError("takes a string")
    return str(value)


def _flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("takes true or false")
    return value


def _tasks(value: Any) -> str:
    return ",".join(_str_list(value)) if value is not None else "none"


# key in the file -> (RunSettings field, parser)
KEYS: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "models": ("models", _str_list),
    "sparsities": ("sparsities", _sparsities),
    "seeds": ("seeds", _int_list),
    "out": ("out", lambda v: Path(_text(v))),
    "nsamples": ("nsamples", _positive_int),
    "seqlen": ("seqlen", _positive_int),
    "ppl_tokens": ("ppl_tokens", _optional_int),
    "tasks": ("tasks", _tasks),
    "limit": ("limit", _optional_int),
    "eval_batch_size": ("eval_batch_size", lambda v: v if v == "auto" else _positive_int(v)),
    "hellaswag": ("hellaswag", _choice("exact", "normalized")),
    "device": ("device", _text),
    "dtype": ("dtype", _choice("auto", "float32", "bfloat16", "float16")),
    "data_dir": ("data_dir", lambda v: Path(_text(v))),
    "targets": ("target_pattern", _text),
    "dense": ("include_dense", _flag),
    "executor": ("executor", _choice("local", "ray")),
    "address": ("address", _text),
}


def load_sweep(path: Path) -> dict[str, Any]:
    """Settings from a sweep file, keyed by RunSettings field (plus `executor`, `address`)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
        root = yaml.compose(text)
    except OSError as error:
        raise HarnessError(f"cannot read sweep file {path}: {error.strerror}") from None
    except yaml.YAMLError as error:
        raise HarnessError(f"{path}: not valid YAML ({str(error).splitlines()[0]})") from None
    if root is None or not isinstance(root, yaml.MappingNode):
        raise HarnessError(f"{path}: a sweep file is a mapping of keys such as models, methods, sparsities")
    settings: dict[str, Any] = {}
    for key_node, value_node in root.value:
        key = key_node.value
        line = key_node.start_mark.line + 1
        value = yaml.safe_load(yaml.serialize(value_node))
        if key == "methods":
            settings["methods"], settings["overrides"] = _methods(value, path, value_node)
            continue
        if key not in KEYS:
            raise HarnessError(f"{path}:{line}: unknown key {key!r}; valid keys: methods, {', '.join(KEYS)}")
        field, parse = KEYS[key]
        try:
            settings[field] = parse(value)
        except (ValueError, HarnessError) as error:
            raise HarnessError(f"{path}:{line}: {key} {error}") from None
    return settings


def _methods(value: Any, path: Path, node: yaml.Node) -> tuple[list[str], dict[str, dict[str, Any]]]:
    """`methods: [a, b]` or `methods: {a: {field: value}, b: {}}`; overrides checked against each
    method's config."""
    line = node.start_mark.line + 1
    if isinstance(value, (str, list)):
        value = {name: {} for name in _str_list(value)}
    if not isinstance(value, dict):
        raise HarnessError(f"{path}:{line}: methods takes a list of names or a mapping name -> options")
    lines = {k.value: k.start_mark.line + 1 for k, _ in node.value} if isinstance(node, yaml.MappingNode) else {}
    overrides: dict[str, dict[str, Any]] = {}
    for name, options in value.items():
        line = lines.get(name, line)
        options = options or {}
        if not isinstance(options, dict):
            raise HarnessError(f"{path}:{line}: options of method {name!r} must be a mapping")
        try:
            build_config(get_pruner(name).Config, {k: str(v) for k, v in options.items()}, name)
        except HarnessError as error:
            raise HarnessError(f"{path}:{line}: {error}") from None
        if options:
            overrides[name] = {k: str(v) for k, v in options.items()}
    return list(value), overrides
