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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.data import CALIBRATION_SOURCES
from harness.errors import HarnessError
from harness.kinds import AUTO, Choice, Count, DeviceName, Folder, Kind, Names, Number, Seeds, Sparsities, Switch, Tasks, Text
from harness.layout import C4_TRAIN_FILE
from harness.models import DEFAULT_MODEL
from harness.sparsity import PROFILES, UNIFORM, Sparsity

if TYPE_CHECKING:
    from harness.profiles import ProfileSettings

DENSE = "dense"  # the pseudo-method of the unpruned model's row
# The comparison the reports summarise unless told otherwise: the LEAP paper's claim against
# the best layer-wise method. Names of methods as data; no code depends on which they are.
DEFAULT_BASELINE = "admm"
DEFAULT_TARGET = "leap"


@dataclass(frozen=True)
class ByDevice:
    """A default that depends on the device the run resolves to."""

    cpu: Any
    cuda: Any

    def value(self, device_kind: str, resolved: dict[str, Any]) -> Any:
        return getattr(self, device_kind)


@dataclass(frozen=True)
class SameAs:
    """A default that follows another setting's resolved value (declared earlier)."""

    setting: str

    def value(self, device_kind: str, resolved: dict[str, Any]) -> Any:
        return resolved[self.setting]


@dataclass(frozen=True)
class IfDataFile:
    """A default that depends on whether a data file is present in the run's data root."""

    file: str
    present: Any
    absent: Any

    def value(self, device_kind: str, resolved: dict[str, Any]) -> Any:
        from harness.data import data_root

        return self.present if (data_root(resolved["data_dir"]) / self.file).is_file() else self.absent


@dataclass(frozen=True)
class Setting:
    """One run setting. `flag` is its CLI option (a `--x/--no-x` pair or a lone `--no-x` for a
    switch); `key` its sweep-file key (None: command line only); `default` a value or ByDevice;
    `shown_default` the default as the help and the README say it; `identity` whether it belongs
    to a cell's identity, what the cell computes (`harness.plan` builds it; a test holds the two
    to each other)."""

    flag: str
    kind: Kind
    help: str
    key: str | None
    shown_default: str
    default: Any = None
    by_device: ByDevice | SameAs | IfDataFile | None = None  # the rule that fills AUTO in `RunSettings.resolved`
    identity: bool = True

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
    identity: bool = True,
) -> Any:
    """A RunSettings field carrying its `Setting`. `key=""` means: the field name; None: CLI only.
    `identity=False`: where and how cells run, not what they compute. The device is one: the
    defaults it resolves (calibration size, LEAP's budget) are in the identity, the device is not
    (a record names its hardware instead)."""
    by_device = default if isinstance(default, (ByDevice, SameAs, IfDataFile)) else None
    value = AUTO if by_device else default
    meta = {"flag": flag, "kind": kind, "help": help, "key": key, "shown": shown, "by_device": by_device, "identity": identity}
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
    out: Path = setting(Path("results"), "--out", Folder(), "Folder for the JSON records.", identity=False)
    nsamples: int = setting(
        ByDevice(cpu=32, cuda=128), "--nsamples", Count(auto=True), "Calibration samples.",
        shown="128 on GPU, 32 on CPU",
    )
    seqlen: int = setting(
        ByDevice(cpu=512, cuda=2048), "--seqlen", Count(minimum=2, auto=True),
        "Tokens per calibration sample (and the default perplexity window).", shown="2048 on GPU, 512 on CPU",
    )
    calibration: str = setting(
        IfDataFile(C4_TRAIN_FILE, "c4-train", "c4-local"), "--calibration", Choice((AUTO, *CALIBRATION_SOURCES)),
        "Calibration source: c4-train draws the papers' way from the C4 train shard (`harness data fetch`); "
        "c4-local concatenates the shipped C4 documents.",
        shown="c4-train when the shard is in the data root, else c4-local",
    )
    ppl_seqlen: int = setting(
        SameAs("seqlen"), "--ppl-seqlen", Count(minimum=2, auto=True),
        "WikiText-2 perplexity window, independent of calibration (the papers use 2048 or 4096).", shown="the --seqlen",
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
    mmlu_limit: int | None = setting(
        SameAs("limit"), "--mmlu-limit", Count(all_word=True, auto=True),
        "Items per MMLU subject (57 subjects), when MMLU's limit differs from the other tasks'.", shown="the --limit",
    )
    eval_batch_size: int | str = setting(AUTO, "--eval-batch-size", Count(auto=True), "lm-eval batch size (auto: the largest that fits).", identity=False)
    hellaswag: str = setting(
        "exact", "--hellaswag", Choice(("exact", "normalized", "full")),
        "HellaSwag data: 1000 exact lm-eval items, all 10042 normalized, or all 10042 exact once fetched (`harness data fetch`)."
    )
    device: str = setting(AUTO, "--device", DeviceName(), "auto picks CUDA when present, else the CPU.", identity=False)
    dtype: str = setting(
        ByDevice(cpu="float32", cuda="bfloat16"), "--dtype", Choice((AUTO, "float32", "bfloat16", "float16")),
        "Model dtype.", shown="bfloat16 on GPU, float32 on CPU",
    )
    data_dir: Path | None = setting(
        None, "--data-dir", Folder(), "Data root.", shown="$HARNESS_DATA_DIR or the project's data/", identity=False
    )
    target_pattern: str | None = setting(
        None, "--targets", Text(regex=True), "Regex over module names restricting the pruned linears.",
        key="targets", shown="every nn.Linear in the decoder layers",
    )
    profile: str = setting(
        UNIFORM, "--profile", Choice(PROFILES),
        "Layer-wise sparsity: every matrix at the target, or OWL's outlier-weighted layer ratios (unstructured; every built-in method but magnitude.scope=global).",
    )
    owl_lambda: float = setting(0.08, "--owl-lambda", Number(0.0, 0.5), "OWL: layer sparsities spread over target ± lambda.")
    owl_m: float = setting(5.0, "--owl-m", Number(1.0), "OWL: a score is an outlier above M × its layer's mean.")
    include_dense: bool = setting(True, "--no-dense", Switch(), "Do not evaluate the dense model.", key="dense", shown="off", identity=False)
    force: bool = setting(False, "--force", Switch(), "Recompute cells whose record exists.", key=None, identity=False)
    save_model: Path | None = setting(
        None, "--save-model", Folder(), "Save each pruned model here as a safetensors folder.", key=None, identity=False
    )
    executor: str = setting("local", "--executor", Choice(("local", "ray")), "Run cells here in sequence, or as Ray tasks on a cluster.", identity=False)
    address: str | None = setting(None, "--address", Text(), "Ray cluster address (auto | HOST:PORT).", shown="start a local Ray", identity=False)
    cell_index: int | None = setting(
        None, "--cell", Count(minimum=0), "Run only this 0-based cell of the plan (Slurm job arrays).", key=None, shown="all cells", identity=False
    )
    report: bool = setting(True, "--report/--no-report", Switch(), "Write the report into reports/latest at the end.", key=None, identity=False)
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
                resolved = {field: changes.get(field, getattr(self, field)) for field in SETTINGS}
                changes[name] = spec.by_device.value(kind, resolved)
        return dataclasses.replace(self, **changes)

    @property
    def is_resolved(self) -> bool:
        """Whether the device and every device-dependent default are decided (`resolved()`)."""
        return self.device != AUTO and not any(getattr(self, name) == AUTO for name, spec in SETTINGS.items() if spec.by_device)

    @property
    def sparsity_profile(self) -> ProfileSettings:
        from harness.profiles import ProfileSettings

        return ProfileSettings(self.profile, self.owl_lambda, self.owl_m)

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
            identity=_meta["identity"],
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
