"""Wanda (Sun et al. 2023): prune by |W_ij|·‖X_j‖₂, compared within each output row; no update.

Follows locuslab/wanda `prune_wanda`: the score multiplies each weight by the L2 norm of its input
feature over all calibration tokens; each row drops its lowest scores (N:M: the lowest M−N of
every M consecutive inputs). Without the `use_variant` alpha search."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from harness.accumulators import InputNormAccumulator
from harness.engine import LayerwiseConfig, LayerwisePruner
from harness.masks import select_mask
from harness.sparsity import Sparsity


@dataclass
class WandaConfig(LayerwiseConfig):
    group: Literal["row", "matrix"] = "row"  # comparison group; the paper's choice is per output row


class WandaPruner(LayerwisePruner):
    """Weights times input-activation norms, lowest per row pruned, weights otherwise unchanged."""

    name = "wanda"
    report_rank = 20
    Config = WandaConfig

    def accumulator(self, linear: nn.Linear) -> InputNormAccumulator:
        return InputNormAccumulator(linear.in_features, linear.weight.device)

    def prune_matrix(self, weight: torch.Tensor, stats: InputNormAccumulator, sparsity: Sparsity) -> torch.Tensor:
        scores = weight.abs() * stats.norms()[None, :]
        return weight.mul_(select_mask(scores, sparsity, self.config.group))
