"""The run settings, declared once: type, default (per device where it depends on one), bounds or
choices, help text, CLI flag and sweep-file key of every setting live in one `setting(...)` field
of `RunSettings`.

Everything else is derived from these declarations: the `harness run` options (`cli_options`),
the sweep-file keys and their checks (`harness.sweep`), the README's options table
(`options_table`, checked by a test), and the device-dependent defaults (`RunSettings.resolved`,
the only place they are decided). A value is parsed once, by its `Kind`, whether it comes as
text from the command line or as a YAML value, and is carried typed from then on.

`AUTO` marks a setting left to its device default (`--nsamples auto`, or not given); `None`
means "all" or "none" where a setting allows it (`--limit all`, `--ppl-tokens all`)."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.errors import HarnessError
from harness.evaluation.suites import resolve_tasks
from harness.models import DEFAULT_MODEL
from harness.sparsity import Sparsity

AUTO = "auto"
DENSE = "dense"  # the pseudo-method of the unpruned model's row
# The comparison the reports summarise unless told otherwise: the LEAP paper's claim against
# the best layer-wise method. Names of methods as data; no code depends on which they are.
DEFAULT_BASELINE = "admm"
DEFAULT_TARGET = "leap"


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
        except HarnessError as error:
            raise ValueError(str(error)) from None
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


@dataclass(frozen=True)
class ByDevice:
    """A default that depends on the device the run resolves to."""

    cpu: Any
    cuda: Any


@dataclass(frozen=True)
class Setting:
    """One run setting. `flag` is its CLI option (a `--x/--no-x` pair or a lone `--no-x` for a
    switch); `key` its sweep-file key (None: command line only); `default` a value or ByDevice;
    `shown_default` the default as the help and the README say it."""

    flag: str
    kind: Kind
    help: str
    key: str | None
    shown_default: str
    default: Any = None
    by_device: ByDevice | None = None

    @property
    def option(self) -> str:
        """The primary option name, e.g. `--no-dense` -> `--no-dense`, `--report/--no-report` -> `--report`."""
        return self.flag.split("/")[0]


def setting(
    default: Any,
    flag: str,
    kind: Kind,
    help: str,
    *,
    key: str | None = "",
    shown: str | None = None,
) -> Any:
    """A RunSettings field carrying its `Setting`. `key=""` means: the field name; None: CLI only."""
    by_device = default if isinstance(default, ByDevice) else None
    value = AUTO if by_device else default
    meta = {"flag": flag, "kind": kind, "help": help, "key": key, "shown": shown, "by_device": by_device}
    return dataclasses.field(default=value, metadata={"setting": meta})


def _shown(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(str(item) for item in value) or "none"
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


@dataclass(frozen=True)
class RunSettings:
    """Settings shared by every cell of a sweep, typed. Built from text or YAML values, which
    `__post_init__` parses through each setting's Kind (a typed value passes unchanged)."""

    models: tuple[str, ...] = setting(
        (DEFAULT_MODEL,), "--model", Names("model"), "Comma list of bundled aliases, local folders or hub ids."
    )
    methods: tuple[str, ...] = setting(
        ("magnitude",), "--methods", Names("method", " (--methods dense evaluates the dense model alone)"),
        "Comma list of registered methods (`harness list`); `dense` alone evaluates the dense model only.",
    )
    sparsities: tuple[Sparsity, ...] = setting(
        (Sparsity(0.5),), "--sparsity", Sparsities(), "Comma list of ratios in [0, 1) or N:M patterns (2:4, 4:8).",
        key="sparsities", shown="0.5",
    )
    seeds: tuple[int, ...] = setting((0,), "--seed", Seeds(), "Comma list of seeds (calibration sampling, method randomness).")
    out: Path = setting(Path("results"), "--out", Folder(), "Folder for the JSON records.")
    nsamples: int = setting(
        ByDevice(cpu=32, cuda=128), "--nsamples", Count(auto=True), "Calibration samples.",
        shown="128 on GPU, 32 on CPU",
    )
    seqlen: int = setting(
        ByDevice(cpu=512, cuda=2048), "--seqlen", Count(minimum=2, auto=True),
        "Tokens per calibration sample, and the perplexity window.", shown="2048 on GPU, 512 on CPU",
    )
    ppl_tokens: int | None = setting(
        None, "--ppl-tokens", Count(all_word=True), "WikiText-2 test tokens to evaluate (at least one window).", shown="all"
    )
    tasks: tuple[str, ...] = setting(
        ("leap6",), "--tasks", Tasks(), "Zero-shot suites (leap6, wanda7) or lm-eval task names, or none.", shown="leap6"
    )
    limit: int | None = setting(
        ByDevice(cpu=20, cuda=None), "--limit", Count(all_word=True, auto=True),
        "Items per task (per MMLU subject).", shown="all on GPU, 20 on CPU",
    )
    eval_batch_size: int | str = setting(AUTO, "--eval-batch-size", Count(auto=True), "lm-eval batch size (auto: the largest that fits).")
    hellaswag: str = setting(
        "exact", "--hellaswag", Choice(("exact", "normalized")), "HellaSwag data: 1000 exact lm-eval items or all 10042 normalized."
    )
    device: str = setting(AUTO, "--device", DeviceName(), "auto picks CUDA when present, else the CPU.")
    dtype: str = setting(
        ByDevice(cpu="float32", cuda="bfloat16"), "--dtype", Choice((AUTO, "float32", "bfloat16", "float16")),
        "Model dtype.", shown="bfloat16 on GPU, float32 on CPU",
    )
    data_dir: Path | None = setting(
        None, "--data-dir", Folder(), "Data root.", shown="$HARNESS_DATA_DIR or ../shared/data"
    )
    target_pattern: str | None = setting(
        None, "--targets", Text(regex=True), "Regex over module names restricting the pruned linears.",
        key="targets", shown="every nn.Linear in the decoder layers",
    )
    include_dense: bool = setting(True, "--no-dense", Switch(), "Do not evaluate the dense model.", key="dense", shown="off")
    force: bool = setting(False, "--force", Switch(), "Recompute cells whose record exists.", key=None)
    save_model: Path | None = setting(
        None, "--save-model", Folder(), "Save each pruned model here as a safetensors folder.", key=None
    )
    executor: str = setting("local", "--executor", Choice(("local", "ray")), "Run cells here in sequence, or as Ray tasks on a cluster.")
    address: str | None = setting(None, "--address", Text(), "Ray cluster address (auto | HOST:PORT).", shown="start a local Ray")
    cell_index: int | None = setting(
        None, "--cell", Count(minimum=0), "Run only this 0-based cell of the plan (Slurm job arrays).", key=None, shown="all cells"
    )
    report: bool = setting(True, "--report/--no-report", Switch(), "Write the report into reports/latest at the end.", key=None)
    overrides: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)  # --set / the sweep's methods
    progress: bool = True  # progress bars (tests turn them off); not a user setting

    def __post_init__(self) -> None:
        for name, spec in SETTINGS.items():
            object.__setattr__(self, name, accept(name, getattr(self, name), spec.option))

    def resolved(self) -> RunSettings:
        """The device resolved (auto: CUDA when present) and every device-dependent default filled
        for it: the papers' 128 × 2048 calibration and full task sets on GPU, small on CPU."""
        device = self.device
        if device == AUTO:
            import torch

            device = "cuda" if torch.cuda.is_available() else "cpu"
        kind = "cuda" if device.startswith("cuda") else "cpu"
        changes: dict[str, Any] = {"device": device}
        for name, spec in SETTINGS.items():
            if spec.by_device is not None and getattr(self, name) == AUTO:
                changes[name] = getattr(spec.by_device, kind)
        return dataclasses.replace(self, **changes)

    @property
    def is_resolved(self) -> bool:
        """Whether the device and every device-dependent default are decided (`resolved()`)."""
        return self.device != AUTO and not any(getattr(self, name) == AUTO for name, spec in SETTINGS.items() if spec.by_device)

    @property
    def on_gpu(self) -> bool:
        return self.device.startswith("cuda")


SETTINGS: dict[str, Setting] = {}
for _field in dataclasses.fields(RunSettings):
    _meta = _field.metadata.get("setting")
    if _meta:
        SETTINGS[_field.name] = Setting(
            flag=_meta["flag"],
            kind=_meta["kind"],
            help=_meta["help"],
            key=_field.name if _meta["key"] == "" else _meta["key"],
            shown_default=_meta["shown"] or _shown(_field.default),
            default=_field.default,
            by_device=_meta["by_device"],
        )
del _field, _meta

SWEEP_KEYS: dict[str, str] = {spec.key: name for name, spec in SETTINGS.items() if spec.key}
"""Sweep-file key -> RunSettings field."""


def accept(name: str, value: Any, where: str) -> Any:
    """`value` parsed by setting `name`'s Kind; a bad value is one HarnessError naming `where`.
    AUTO stays AUTO for a device-dependent setting, and None (null) is kept where the default
    is None."""
    spec = SETTINGS[name]
    if (value == AUTO and spec.by_device is not None) or (value is None and spec.default is None):
        return value
    try:
        return spec.kind.accept(value)
    except ValueError as error:
        raise HarnessError(f"{where} {error}") from None


def cli_options(command: Callable) -> Callable:
    """Decorate a click command with one option per setting. Every option defaults to None, so
    the command knows what was given (the command line beats a sweep file, which beats the
    schema's default); values arrive as text and are parsed by `RunSettings`."""
    import click

    for name, spec in reversed(SETTINGS.items()):
        help_text = f"{spec.help} [default: {spec.shown_default}]"
        if isinstance(spec.kind, Switch):
            if "/" in spec.flag:
                option = click.option(spec.flag, name, default=None, help=help_text)
            else:  # a lone flag sets the opposite of the default
                option = click.option(spec.flag, name, flag_value=not spec.default, default=None, help=spec.help)
        else:
            option = click.option(spec.flag, name, default=None, metavar=spec.kind.metavar, help=help_text)
        command = option(command)
    return command


def options_table(extra: list[tuple[str, str, str]] = ()) -> str:
    """The README's `harness run` options table, from the schema (plus `extra` rows)."""
    rows = [(f"`{spec.flag}`", spec.help, spec.shown_default) for spec in SETTINGS.values()]
    rows += [(f"`{flag}`", text, default) for flag, text, default in extra]
    lines = ["| option | meaning | default |", "| --- | --- | --- |"]
    lines += ["| " + " | ".join(cell.replace("|", r"\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)
