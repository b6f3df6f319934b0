"""The one interface every pruning method implements, built-in or plugin.

A method subclasses `Pruner`, declares its `Config` dataclass, and implements `prune`, which
changes the model in place. `run` wraps it with timing, memory and a zero count, so every method
is measured the same way."""

from __future__ import annotations

import abc
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from harness.config import PrunerConfig, build_config
from harness.errors import HarnessError
from harness.memory import PeakMemory
from harness.sparsity import UNIFORM, Sparsity
from harness.targets import count_zeros, target_linears


@dataclass
class PruneContext:
    """Everything a method may need besides the model: no CLI, store or report in here."""

    tokenizer: Any = None
    calibration: torch.Tensor | None = None  # input ids, [nsamples, seqlen]
    data_dir: Path | None = None
    seed: int = 0
    target_pattern: str | None = None
    workdir: Path | None = None  # for checkpoints of long-running methods
    bos_per_window: bool = False  # training/calibration windows start with <bos> (Gemma)
    progress: bool = True
    matrix_sparsity: dict[str, Sparsity] | None = None  # per targeted linear, from a layer-wise profile (OWL)

    def targets(self, model: nn.Module) -> dict[str, nn.Linear]:
        return target_linears(model, self.target_pattern)

    def sparsity_of(self, name: str, sparsity: Sparsity) -> Sparsity:
        """The target of the targeted linear `name`: its profile's when the run has one, else `sparsity`."""
        return sparsity if self.matrix_sparsity is None else self.matrix_sparsity[name]


@dataclass
class PruneResult:
    """What a prune produced: realized sparsity (zeros counted), cost, and method statistics."""

    method: str
    sparsity: str
    realized_sparsity: float
    layer_sparsity: dict[str, float]
    seconds: float
    peak_rss_mb: float
    peak_gpu_mb: float
    stats: dict[str, Any] = field(default_factory=dict)


class Pruner(abc.ABC):
    """Base class of pruning methods, built-in or plugin.

    Contract. A subclass declares `Config` (a PrunerConfig dataclass with the paper's defaults)
    and implements `prune`. The harness loads a fresh model for every cell, calls `run`, counts
    the zeros, evaluates and writes the record; a pruner never sees the CLI, the store or the
    report. Registered under a name by the `harness.pruners` entry point group (or
    `register_pruner`), which also sets `name`.

    Class attributes: `supports_nm` (accepts N:M sparsities; otherwise the run refuses them up
    front), `needs_calibration` (gets `ctx.calibration`, C4 token ids [nsamples, seqlen]), and
    `honours_profile` (prunes each matrix to `ctx.sparsity_of(name, sparsity)`, so `--profile
    owl` applies; otherwise the run refuses the profile for it), `data_parallel` (under torchrun
    its cells run on every rank and `prune` shares the work through `harness.world()`;
    otherwise rank 0 runs them alone), and for the report
    `report_rank` (position of its rows: the papers' order magnitude 10, wanda 20, sparsegpt 30,
    admm 40, leap 50; plugins 100, ties alphabetical) and `cost_stats`."""

    name: ClassVar[str] = ""
    Config: ClassVar[type[PrunerConfig]] = PrunerConfig
    supports_nm: ClassVar[bool] = False
    needs_calibration: ClassVar[bool] = True
    honours_profile: ClassVar[bool] = False
    data_parallel: ClassVar[bool] = False
    report_rank: ClassVar[int] = 100
    cost_stats: ClassVar[tuple[tuple[str, str, float], ...]] = ()
    """Extra columns of the report's cost table: (header, key in the record's method_stats, scale)."""

    def __init__(self, config: PrunerConfig | None = None, **overrides: Any) -> None:
        if config is None:
            config = build_config(self.Config, overrides, self.name)
        elif overrides:
            raise TypeError("pass either a config object or keyword overrides, not both")
        config.validate()
        self.config = config

    @abc.abstractmethod
    def prune(self, model: nn.Module, sparsity: Sparsity, ctx: PruneContext) -> dict[str, Any]:
        """Prune the targeted weights of `model` (`ctx.targets(model)`) in place.

        May change: the values of the targeted weights (zeros and, for reconstruction methods,
        the kept weights); nothing else of the model. Must: leave exactly the target sparsity
        over the targeted weights (each matrix at `ctx.sparsity_of(name, sparsity)` for a method that
        honours profiles) unless `exact_sparsity()` says otherwise (the runner counts the
        zeros and fails a cell below target); give the same masks for the same model, data and
        `ctx.seed` (seed any randomness from it); work on whatever device the model is on (CPU
        or CUDA) without moving it. `self.config` is already resolved for that device.
        Returns: method statistics, JSON-able (numbers, strings, lists, dicts), stored as the
        record's `method_stats`."""

    def exact_sparsity(self) -> bool:
        """Whether the method promises exactly the target sparsity (the runner checks it)."""
        return True

    def check_sparsity(self, sparsity: Sparsity) -> None:
        """Refuse, with a HarnessError naming the fix, a sparsity this method and config cannot
        produce; the runner asks before any model loads, with the config resolved for the device."""
        if sparsity.is_nm and not self.supports_nm:
            raise HarnessError(f"{self.name} does not support N:M sparsity ({sparsity}); use an unstructured ratio")

    def check_profile(self, profile: str) -> None:
        """Refuse, naming the fix, a layer-wise profile this method and config do not follow."""
        if profile != UNIFORM and not self.honours_profile:
            raise HarnessError(f"{self.name} does not follow a layer-wise profile (--profile {profile}); use --profile uniform")

    def check_ranks(self, ranks: int) -> None:
        """Refuse, naming the fix, a run on `ranks` torchrun ranks that this data-parallel method
        and config cannot share; the runner asks before any model loads (resolved config)."""

    @classmethod
    def data_files(cls, config: PrunerConfig) -> list[str]:
        """Data files (relative to the data root) the method reads itself with `config`, beyond
        the calibration windows; the runner checks them before any model loads."""
        return []

    @classmethod
    def report_figures(cls, records: list[dict[str, Any]]) -> list[tuple[str, str, Any]]:
        """The method's own figures for the report, from its records: (file stem, description,
        matplotlib Figure). None by default; LEAP draws its training curves."""
        return []

    def run(self, model: nn.Module, sparsity: Sparsity, ctx: PruneContext) -> PruneResult:
        """Resolve the config for the model's device, check, prune, time it, track peak memory,
        and count the zeros that resulted."""
        targets = ctx.targets(model)
        self.config = self.config.resolve(next(iter(targets.values())).weight.device)
        self.check_sparsity(sparsity)
        if ctx.matrix_sparsity is not None and not self.honours_profile:
            raise HarnessError(f"{self.name} does not follow per-matrix targets (ctx.matrix_sparsity); run it with a uniform profile")
        if self.needs_calibration and ctx.calibration is None:
            raise HarnessError(f"{self.name} needs calibration data; pass --nsamples > 0")
        start = time.perf_counter()
        with PeakMemory() as memory:
            stats = self.prune(model, sparsity, ctx) or {}
        seconds = time.perf_counter() - start
        per_layer, overall = count_zeros(targets)
        return PruneResult(
            method=self.name,
            sparsity=sparsity.label(),
            realized_sparsity=overall,
            layer_sparsity=per_layer,
            seconds=seconds,
            peak_rss_mb=memory.rss_mb,
            peak_gpu_mb=memory.gpu_mb,
            stats=stats,
        )
