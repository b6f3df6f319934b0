"""Magnitude pruning: drop the smallest |W| per matrix (the papers' baseline) or model-wide."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from harness.config import PrunerConfig
from harness.errors import HarnessError
from harness.masks import global_lowest_masks, select_mask
from harness.pruner import PruneContext, Pruner
from harness.sparsity import UNIFORM, Sparsity


@dataclass
class MagnitudeConfig(PrunerConfig):
    scope: Literal["matrix", "row", "global"] = "matrix"  # comparison group for the threshold


class MagnitudePruner(Pruner):
    """Smallest |W| pruned per matrix (papers' baseline), per row, or globally; no calibration."""

    name = "magnitude"
    report_rank = 10
    Config = MagnitudeConfig
    supports_nm = True
    needs_calibration = False
    honours_profile = True

    @torch.no_grad()
    def prune(self, model: nn.Module, sparsity: Sparsity, ctx: PruneContext) -> dict[str, Any]:
        linears = ctx.targets(model)
        if self.config.scope == "global" and not sparsity.is_nm:
            self._prune_global(linears, sparsity.ratio)
        else:
            for name, linear in linears.items():
                keep = select_mask(linear.weight.abs(), ctx.sparsity_of(name, sparsity), self.config.scope)
                linear.weight.mul_(keep)
        return {}

    def check_profile(self, profile: str) -> None:
        if profile != UNIFORM and self.config.scope == "global":
            raise HarnessError(
                f"magnitude.scope=global sets its own layer sparsities; drop --profile {profile} or use magnitude.scope=matrix"
            )

    @staticmethod
    def _prune_global(linears: dict[str, nn.Linear], ratio: float) -> None:
        keep = global_lowest_masks({name: linear.weight.abs() for name, linear in linears.items()}, ratio)
        for name, linear in linears.items():
            linear.weight.mul_(keep[name])
