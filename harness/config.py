"""Typed, validated method configs as dataclasses, settable from `--set METHOD.FIELD=VALUE`."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import typing
from typing import TYPE_CHECKING, Any

from harness.errors import HarnessError
from harness.kinds import Switch

if TYPE_CHECKING:
    import torch


@dataclasses.dataclass
class PrunerConfig:
    """Base of every method's config. Subclasses add fields with the paper's defaults and may
    override `validate` to reject bad values with a message that names the field."""

    def validate(self) -> None:
        """Raise HarnessError on an invalid value."""

    def resolve(self, device: torch.device) -> PrunerConfig:
        """This config with every device-dependent default filled in for `device`. The runner
        hashes and records the resolved config, so a cell run on CPU and the same cell run on
        GPU (e.g. LEAP's budget) never share a record."""
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _coerce(text: str, annotation: Any, where: str) -> Any:
    """Turn the CLI text of one field into its annotated type."""
    origin = typing.get_origin(annotation)
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if origin is typing.Union or (origin is not None and type(None) in typing.get_args(annotation)):
        if text.lower() in ("none", "null"):
            return None
        return _coerce(text, args[0], where)
    if origin is typing.Literal:
        choices = typing.get_args(annotation)
        if text not in choices:
            raise HarnessError(f"{where} must be one of {', '.join(map(str, choices))}; got {text!r}")
        return text
    if annotation is bool:
        try:
            return Switch().accept(text)
        except ValueError:
            raise HarnessError(f"{where} takes true or false; got {text!r}") from None
    if annotation in (int, float, str):
        try:
            return annotation(text)
        except ValueError:
            raise HarnessError(f"{where} takes a {annotation.__name__}; got {text!r}") from None
    raise HarnessError(f"{where} has type {annotation} that cannot be set from the command line")


def build_config(cls: type[PrunerConfig], overrides: dict[str, Any], method: str) -> PrunerConfig:
    """Instantiate `cls` with overrides (strings from the CLI or typed values), then validate."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    for key, raw in overrides.items():
        if key not in names:
            raise HarnessError(
                f"{method} has no option {key!r}; valid options: {', '.join(sorted(names)) or '(none)'}"
            )
        values[key] = _coerce(raw, hints[key], f"{method}.{key}") if isinstance(raw, str) else raw
    config = cls(**values)
    config.validate()
    return config


def stable_hash(payload: Any) -> str:
    """Hash of a JSON-able value that does not depend on dict order."""
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
