"""DSnoT (Zhang et al. 2024, "Dynamic Sparse No Training"), as coded in zyxxmu/DSnoT
`lib/prune.py` (`prune_DSnoT`, unstructured): a training-free refinement of a one-shot mask that
swaps pruned and kept weights, without any weight update, to drive each output row's expected
reconstruction error towards zero.

For row i with initial mask from `initial` (Wanda: |W|·‖X_j‖; magnitude: |W|), the expected
error is e_i = Σ_{j pruned} W_ij·x̄_j, with x̄_j the input sum per calibration sequence. Each cycle
every row still updating
- regrows the pruned weight with the largest (e > 0) or smallest (e ≤ 0) W_ij·x̄_j / Var(x_j),
- prunes the kept weight of the opposite sign (a positive one when e < 0, a negative one when
  e ≥ 0) with the lowest initial metric,
each choice walking down its own sorted list, while |e_i| > `update_threshold`; at most
`max_cycles` cycles. A row keeps its number of pruned weights, so the matrix keeps the initial
mask's exact count. The reference's defaults: 50 cycles, threshold 0.1, variance power 1, and the
MLP linears left at the initial mask (`skip=mlp`).

Differences from the reference: the initial mask is the harness's exact per-row selection (the
reference prunes int(cols·s) per row); a row stops when one of its candidate lists runs out
(the reference walks on into kept weights, which changes the row's count; on LLM-sized rows 50
cycles never get there); a kept weight with W_ij·x̄_j = 0 exactly is never a pruning candidate
(the reference's reordering maps it to column 0); N:M is not supported."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from harness.accumulators import Accumulator
from harness.engine import LayerwiseConfig, LayerwisePruner, prune_layerwise
from harness.errors import HarnessError
from harness.masks import lowest_mask_rows
from harness.pruner import PruneContext
from harness.sparsity import Sparsity


@dataclass
class DSnoTConfig(LayerwiseConfig):
    initial: Literal["wanda", "magnitude"] = "wanda"  # the one-shot mask to refine
    max_cycles: int = 50
    update_threshold: float = 0.1
    var_power: float = 1.0  # regrowing metric divided by Var(x_j)^var_power
    skip: str = "mlp"  # linears whose name contains this module (mlp, self_attn) keep the initial mask; none: refine all

    def validate(self) -> None:
        super().validate()
        if self.max_cycles < 0 or self.update_threshold < 0:
            raise HarnessError("dsnot.max_cycles and dsnot.update_threshold must be non-negative")


class SequenceStatistics(Accumulator):
    """Per input feature, as the reference's wrapper accumulates them one calibration sequence at
    a time: Σx² and Σx per sequence (averaged over sequences), and the token-weighted mean of the
    per-sequence variances."""

    def __init__(self, in_features: int, device: torch.device) -> None:
        super().__init__()
        self.sequences = 0
        self.sq_sum = torch.zeros(in_features, dtype=torch.float32, device=device)
        self.sum = torch.zeros(in_features, dtype=torch.float32, device=device)
        self.var_sum = torch.zeros(in_features, dtype=torch.float32, device=device)

    def add(self, inputs: torch.Tensor) -> None:
        x = inputs.float()
        x = x.reshape(-1, x.shape[-2], x.shape[-1]) if x.dim() >= 3 else x[None]
        self.sequences += x.shape[0]
        self.tokens += x.shape[0] * x.shape[1]
        self.fold(x)

    def fold(self, x: torch.Tensor) -> None:  # x: [sequences, tokens, in]
        self.sq_sum += x.square().sum(dim=(0, 1))
        self.sum += x.sum(dim=(0, 1))
        self.var_sum += x.var(dim=1, unbiased=False).sum(dim=0) * x.shape[1]

    def norms(self) -> torch.Tensor:
        """√(Σx²/sequences): the reference's Wanda scale."""
        return (self.sq_sum / self.sequences).sqrt()

    def mean_sum(self) -> torch.Tensor:
        return self.sum / self.sequences

    def variance(self) -> torch.Tensor:
        return self.var_sum / self.tokens


def refine_mask(weight: torch.Tensor, stats: SequenceStatistics, keep: torch.Tensor, initial_metric: torch.Tensor, cfg: DSnoTConfig) -> torch.Tensor:
    """DSnoT's swaps on a keep-mask [out, in]; returns the refined keep-mask (same counts per row)."""
    rows = weight.shape[0]
    arange = torch.arange(rows, device=weight.device)
    error_metric = weight.float() * stats.mean_sum()[None, :]
    keep = keep.clone()
    error = (error_metric * ~keep).sum(dim=1)
    regrow_order = torch.sort(torch.where(keep, 0.0, error_metric) / stats.variance()[None, :] ** cfg.var_power, dim=1, stable=True).indices
    by_metric = torch.sort(initial_metric.masked_fill(~keep, torch.inf), dim=1, stable=True).indices
    sign = torch.sign(error_metric.gather(1, by_metric)) * keep.gather(1, by_metric)
    # kept weights in ascending initial metric: negatives for e ≥ 0, positives for e < 0
    negatives = _ordered(by_metric, sign < 0)
    positives = _ordered(by_metric, sign > 0)
    low, high = torch.zeros(rows, dtype=torch.long, device=weight.device), torch.full((rows,), weight.shape[1] - 1, device=weight.device)
    next_negative = torch.zeros(rows, dtype=torch.long, device=weight.device)
    next_positive = torch.zeros(rows, dtype=torch.long, device=weight.device)
    updating = torch.ones(rows, dtype=torch.bool, device=weight.device)
    for _ in range(cfg.max_cycles):
        up = error > 0
        regrow = regrow_order[arange, torch.where(up, high, low)]
        use_positive = error < 0
        slot = torch.where(use_positive, next_positive, next_negative)
        candidates = torch.where(use_positive[:, None], positives[0], negatives[0])
        counts = torch.where(use_positive, positives[1], negatives[1])
        available = slot < counts
        prune = candidates[arange, slot.clamp(max=weight.shape[1] - 1)]
        # a row stops when a list runs out: its next regrow candidate is no longer a pruned weight
        # (the reference walks on into the kept ones, which changes the row's count)
        available &= ~keep[arange, regrow]
        updating &= (error.abs() > cfg.update_threshold) & available
        if not updating.any():
            break
        rows_now = arange[updating]
        keep[rows_now, regrow[updating]] = True
        keep[rows_now, prune[updating]] = False
        error = error + torch.where(updating, error_metric[arange, prune] - error_metric[arange, regrow], 0.0)
        high = high - up.long()
        low = low + (~up).long()
        next_positive = next_positive + use_positive.long()
        next_negative = next_negative + (~use_positive).long()
    return keep


def _ordered(order: torch.Tensor, select: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, the entries of `order` where `select` holds, first and in order; and their count."""
    position = torch.sort((~select).to(torch.int8), dim=1, stable=True).indices
    return order.gather(1, position), select.sum(dim=1)


class DSnoTPruner(LayerwisePruner):
    """A one-shot mask refined by swaps that cancel each row's expected error; no weight update."""

    name = "dsnot"
    Config = DSnoTConfig
    supports_nm = False
    report_rank = 25

    def accumulator(self, linear: nn.Linear) -> SequenceStatistics:
        return SequenceStatistics(linear.in_features, linear.weight.device)

    def _initial(self, weight: torch.Tensor, stats: SequenceStatistics, sparsity: Sparsity) -> tuple[torch.Tensor, torch.Tensor]:
        metric = weight.abs() * stats.norms()[None, :] if self.config.initial == "wanda" else weight.abs()
        return lowest_mask_rows(metric, sparsity.ratio), metric

    def prune_matrix(self, weight: torch.Tensor, stats: SequenceStatistics, sparsity: Sparsity) -> torch.Tensor:
        keep, metric = self._initial(weight, stats, sparsity)
        return weight.mul_(refine_mask(weight, stats, keep, metric, self.config))

    def prune(self, model: nn.Module, sparsity: Sparsity, ctx: PruneContext) -> dict[str, Any]:
        skip = None if self.config.skip == "none" else re.compile(rf"(^|\.){re.escape(self.config.skip)}\.")

        def prune(name: str, weight: torch.Tensor, stats: SequenceStatistics) -> torch.Tensor:
            target = ctx.sparsity_of(name, sparsity)
            if skip is not None and skip.search(name):
                keep, _ = self._initial(weight, stats, target)
                return weight.mul_(keep)
            return self.prune_matrix(weight, stats, target)

        return prune_layerwise(model, ctx.targets(model), ctx.calibration, self.accumulator, prune, self.config, ctx.progress)
