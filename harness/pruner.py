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
from harness.sparsity import Sparsity
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

    def targets(self, model: nn.Module) -> dict[str, nn.Linear]:
        return target_linears(model, self.target_pattern)


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
    """Base class of pruning methods. Subclasses set `name`, `Config` and implement `prune`."""

    name: ClassVar[str] = ""
    Config: ClassVar[type[PrunerConfig]] = PrunerConfig
    supports_nm: ClassVar[bool] = False
    needs_calibration: ClassVar[bool] = True

    def __init__(self, config: PrunerConfig | None = None, **overrides: Any) -> None:
        if config is None:
            config = build_config(self.Config, overrides, self.name)
        elif overrides:
            raise TypeError("pass either a config object or keyword overrides, not both")
        config.validate()
        self.config = config

    @abc.abstractmethod
    def prune(self, model: nn.Module, sparsity: Sparsity, ctx: PruneContext) -> dict[str, Any]:
        """Prune the targeted weights of `model` in place; return method-specific statistics."""

    def exact_sparsity(self) -> bool:
        """Whether the method promises exactly the target sparsity (the runner checks it)."""
        return True

    def check_supported(self, sparsity: Sparsity, ctx: PruneContext) -> None:
        if sparsity.is_nm and not self.supports_nm:
            raise HarnessError(f"{self.name} does not support N:M sparsity ({sparsity}); use an unstructured ratio")
        if self.needs_calibration and ctx.calibration is None:
            raise HarnessError(f"{self.name} needs calibration data; pass --nsamples > 0")

    def run(self, model: nn.Module, sparsity: Sparsity, ctx: PruneContext) -> PruneResult:
        """Prune, time it, track peak memory, and count the zeros that resulted."""
        self.check_supported(sparsity, ctx)
        start = time.perf_counter()
        with PeakMemory() as memory:
            stats = self.prune(model, sparsity, ctx) or {}
        seconds = time.perf_counter() - start
        per_layer, overall = count_zeros(ctx.targets(model))
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
