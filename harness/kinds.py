"""How a run setting's value is read: one `Kind` per sort of value (names, counts, choices,
sparsities, ...). `accept` takes command-line text or a YAML value, so both sources are parsed by
the same code, and raises ValueError saying what the setting takes; `harness.settings` adds the
flag or file position."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.errors import HarnessError
from harness.evaluation.suites import resolve_tasks
from harness.sparsity import Sparsity

AUTO = "auto"  # a setting left to its device default


class Kind:
    """How one setting's value is read. `accept` takes command-line text or a YAML value (or an
    already typed value, returned as is) and raises ValueError with what the setting takes."""

    metavar = "TEXT"
    takes = "a value"

    def accept(self, value: Any) -> Any:
        raise NotImplementedError


def _items(value: Any) -> list[Any]:
    """A comma list (text), a YAML list, or one scalar, as a list of stripped items."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


@dataclass(frozen=True)
class Names(Kind):
    """A non-empty comma list of names (models, methods)."""

    what: str = "name"
    hint: str = ""
    metavar = "A,B,..."

    @property
    def takes(self) -> str:
        return f"a comma list of {self.what}s"

    def accept(self, value: Any) -> tuple[str, ...]:
        items = _items(value)
        if not all(isinstance(item, (str, int, float)) and not isinstance(item, bool) for item in items):
            raise ValueError(f"takes {self.takes}")
        names = tuple(dict.fromkeys(str(item).strip() for item in items))
        if not names or not all(names):
            raise ValueError(f"is empty; it takes {self.takes}{self.hint}")
        return names


@dataclass(frozen=True)
class Sparsities(Kind):
    metavar = "R,N:M,..."
    takes = "ratios in [0, 1) or N:M patterns"

    def accept(self, value: Any) -> tuple[Sparsity, ...]:
        items = _items(value)
        if not items:
            raise ValueError(f"is empty; it takes {self.takes}")
        try:
            specs = [item if isinstance(item, Sparsity) else Sparsity.parse(item) for item in items]
        except HarnessError as error:  # the flag or key names the setting: "--sparsity 1.2 is outside ..."
            raise ValueError(str(error).removeprefix("sparsity ")) from None
        return tuple(dict.fromkeys(specs))


@dataclass(frozen=True)
class Seeds(Kind):
    metavar = "S,..."
    takes = "integers separated by commas (non-negative)"

    def accept(self, value: Any) -> tuple[int, ...]:
        takes = self.takes if isinstance(value, str) else "an integer or a list of integers (non-negative)"
        try:
            seeds = tuple(dict.fromkeys(_integer(item) for item in _items(value)))
        except ValueError:
            raise ValueError(f"takes {takes}; got {value!r}") from None
        if not seeds or min(seeds) < 0:
            raise ValueError(f"takes {takes}; got {value!r}")
        return seeds


def _integer(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError(value)
    if isinstance(value, int):
        return value
    if isinstance(value, str) and re.fullmatch(r"[+-]?\d+", value.strip()):
        return int(value)
    raise ValueError(value)


@dataclass(frozen=True)
class Count(Kind):
    """An integer of at least `minimum`; optionally `all` (None) and/or `auto` (device default)."""

    minimum: int = 1
    all_word: bool = False
    auto: bool = False

    @property
    def metavar(self) -> str:
        return "|".join(["N", *(["all"] if self.all_word else []), *([AUTO] if self.auto else [])])

    @property
    def takes(self) -> str:
        base = "a positive integer" if self.minimum == 1 else f"an integer of at least {self.minimum}"
        words = [f"'{word}'" for word, on in (("all", self.all_word), (AUTO, self.auto)) if on]
        return base + "".join(f" or {word}" for word in words)

    def accept(self, value: Any) -> int | str | None:
        if self.auto and value == AUTO:
            return AUTO
        if self.all_word and value in ("all", None):
            return None
        try:
            number = _integer(value)
        except ValueError:
            raise ValueError(f"takes {self.takes}; got {value!r}") from None
        if number < self.minimum:
            raise ValueError(f"takes {self.takes}; got {value!r}")
        return number


@dataclass(frozen=True)
class Number(Kind):
    """A real number in [low, high]."""

    low: float = 0.0
    high: float = math.inf
    metavar = "X"

    @property
    def takes(self) -> str:
        return f"a number in [{self.low:g}, {self.high:g}]"

    def accept(self, value: Any) -> float:
        try:
            number = float(value) if not isinstance(value, bool) else math.nan
        except (TypeError, ValueError):
            number = math.nan
        if not self.low <= number <= self.high:
            raise ValueError(f"takes {self.takes}; got {value!r}")
        return number


@dataclass(frozen=True)
class Choice(Kind):
    choices: tuple[str, ...] = ()

    @property
    def metavar(self) -> str:
        return "|".join(self.choices)

    @property
    def takes(self) -> str:
        return "one of " + ", ".join(self.choices)

    def accept(self, value: Any) -> str:
        if value not in self.choices:
            raise ValueError(f"takes {self.takes}; got {value!r}")
        return value


@dataclass(frozen=True)
class DeviceName(Kind):
    metavar = "auto|cpu|cuda[:N]"
    takes = "auto, cpu, cuda or cuda:N"

    def accept(self, value: Any) -> str:
        if not isinstance(value, str) or not re.fullmatch(r"auto|cpu|cuda(:\d+)?", value):
            raise ValueError(f"is an unknown device {value!r}; use auto, cpu or cuda")
        return value


@dataclass(frozen=True)
class Folder(Kind):
    metavar = "PATH"
    takes = "a path"

    def accept(self, value: Any) -> Path:
        if not isinstance(value, (str, Path)) or not str(value).strip():
            raise ValueError(f"takes {self.takes}")
        return Path(value).expanduser()


@dataclass(frozen=True)
class Text(Kind):
    """Free text (optional); with `regex`, it must compile as a regular expression."""

    regex: bool = False

    @property
    def metavar(self) -> str:
        return "REGEX" if self.regex else "TEXT"

    def accept(self, value: Any) -> str:
        if not isinstance(value, (str, int)):
            raise ValueError("takes a string")
        text = str(value)
        if self.regex:
            try:
                re.compile(text)
            except re.error as error:
                raise ValueError(f"is not a valid regular expression ({error})") from None
        return text


@dataclass(frozen=True)
class Tasks(Kind):
    metavar = "SUITE,TASK,...|none"
    takes = "suites or lm-eval task names, or none"

    def accept(self, value: Any) -> tuple[str, ...]:
        if value is None:
            return ()
        items = _items(value)
        if not all(isinstance(item, str) for item in items):
            raise ValueError(f"takes {self.takes}")
        try:
            return tuple(resolve_tasks(items))
        except HarnessError as error:
            raise ValueError(str(error)) from None


@dataclass(frozen=True)
class Switch(Kind):
    takes = "true or false"

    def accept(self, value: Any) -> bool:
        if isinstance(value, bool):
            return value
        text = str(value).lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"takes {self.takes}; got {value!r}")
