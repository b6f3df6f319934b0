"""Registry of pruners: a decorator for in-process classes plus the `harness.pruners` entry-point
group, loaded lazily, so a plugin is a pip-installable package with one entry point."""

from __future__ import annotations

import difflib
from importlib.metadata import EntryPoint, entry_points
from typing import Callable

from harness.errors import HarnessError
from harness.pruner import Pruner

ENTRY_POINT_GROUP = "harness.pruners"


class Registry:
    """Names -> Pruner classes. Entry points stay unloaded until a name is asked for."""

    def __init__(self, group: str) -> None:
        self.group = group
        self._classes: dict[str, type[Pruner]] = {}
        self._entry_points: dict[str, EntryPoint] | None = None

    def _discovered(self) -> dict[str, EntryPoint]:
        if self._entry_points is None:
            self._entry_points = {ep.name: ep for ep in entry_points(group=self.group)}
        return self._entry_points

    def refresh(self) -> None:
        """Forget discovered entry points, e.g. after installing a plugin in this process."""
        self._entry_points = None

    def register(self, name: str) -> Callable[[type[Pruner]], type[Pruner]]:
        """Class decorator: `@PRUNERS.register("mymethod")`."""

        def decorate(cls: type[Pruner]) -> type[Pruner]:
            if not (isinstance(cls, type) and issubclass(cls, Pruner)):
                raise TypeError(f"{cls!r} is not a Pruner subclass")
            existing = self._classes.get(name)
            if existing is not None and existing is not cls:
                raise ValueError(f"pruner {name!r} is already registered by {existing.__module__}")
            cls.name = name
            self._classes[name] = cls
            return cls

        return decorate

    def names(self) -> list[str]:
        return sorted(set(self._classes) | set(self._discovered()))

    def get(self, name: str) -> type[Pruner]:
        if name in self._classes:
            return self._classes[name]
        entry = self._discovered().get(name)
        if entry is None:
            close = difflib.get_close_matches(name, self.names(), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise HarnessError(f"unknown method {name!r}{hint}; available: {', '.join(self.names())}")
        cls = entry.load()
        if not (isinstance(cls, type) and issubclass(cls, Pruner)):
            raise HarnessError(f"entry point {entry.value!r} for {name!r} is not a Pruner subclass")
        cls.name = name
        self._classes[name] = cls
        return cls


PRUNERS = Registry(ENTRY_POINT_GROUP)


def register_pruner(name: str) -> Callable[[type[Pruner]], type[Pruner]]:
    """Class decorator registering a pruner in this process under `name` (a script or a test;
    an installable plugin uses an entry point in the `harness.pruners` group instead). A name
    taken by another class is refused."""
    return PRUNERS.register(name)


def get_pruner(name: str) -> type[Pruner]:
    """The pruner class registered as `name`, its entry point loaded on first use. An unknown
    name is a HarnessError listing the available ones, with the closest as a suggestion."""
    return PRUNERS.get(name)
