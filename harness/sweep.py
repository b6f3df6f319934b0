"""Sweep files: `harness run --config sweeps/NAME.yaml`. Their keys are the run settings' sweep
keys (`harness.settings`) plus `methods`, which may give per-method config overrides; every key
and value is checked up front by the same Kinds as the command line, and an error names the
file, line and key."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from harness.config import build_config
from harness.errors import HarnessError
from harness.registry import get_pruner
from harness.settings import DENSE, SWEEP_KEYS, accept


class _SweepLoader(yaml.SafeLoader):
    """YAML without base-60 integers: an unquoted `2:4` is the N:M pattern '2:4', not 124."""


_SweepLoader.yaml_implicit_resolvers = {
    first: [(tag, pattern) for tag, pattern in resolvers if tag != "tag:yaml.org,2002:int"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_SweepLoader.add_implicit_resolver("tag:yaml.org,2002:int", re.compile(r"^[-+]?(?:0|[1-9][0-9_]*)$"), list("-+0123456789"))


def load_sweep(path: Path) -> dict[str, Any]:
    """Typed settings from a sweep file, keyed by RunSettings field (`overrides` included)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
        root = yaml.compose(text, Loader=_SweepLoader)
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
        value = yaml.load(yaml.serialize(value_node), Loader=_SweepLoader)
        if key == "methods":
            settings["methods"], settings["overrides"] = _methods(value, path, value_node)
            continue
        if key not in SWEEP_KEYS:
            raise HarnessError(f"{path}:{line}: unknown key {key!r}; valid keys: {', '.join(SWEEP_KEYS)}")
        field = SWEEP_KEYS[key]
        settings[field] = accept(field, value, f"{path}:{line}: {key}")
    return settings


def _methods(value: Any, path: Path, node: yaml.Node) -> tuple[tuple[str, ...], dict[str, dict[str, Any]]]:
    """`methods: [a, b]` or `methods: {a: {field: value}, b: {}}`; overrides checked against each
    method's config."""
    line = node.start_mark.line + 1
    if isinstance(value, (str, list)):
        value = {name: {} for name in accept("methods", value, f"{path}:{line}: methods")}
    if not isinstance(value, dict) or not value:
        raise HarnessError(f"{path}:{line}: methods takes a list of names or a mapping name -> options")
    lines = {k.value: k.start_mark.line + 1 for k, _ in node.value} if isinstance(node, yaml.MappingNode) else {}
    overrides: dict[str, dict[str, Any]] = {}
    for name, options in value.items():
        line = lines.get(name, line)
        options = options or {}
        if not isinstance(options, dict):
            raise HarnessError(f"{path}:{line}: options of method {name!r} must be a mapping")
        if name == DENSE and options:
            raise HarnessError(f"{path}:{line}: the dense model takes no options")
        try:
            if name != DENSE:
                build_config(get_pruner(name).Config, {k: str(v) for k, v in options.items()}, name)
        except HarnessError as error:
            raise HarnessError(f"{path}:{line}: {error}") from None
        if options:
            overrides[name] = {k: str(v) for k, v in options.items()}
    return tuple(value), overrides

