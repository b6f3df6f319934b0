"""Thanos (Ilin & Richtárik 2025, arXiv 2504.05346): block-wise multi-weight removal with the
closed-form row update, as coded in vectozavr/thanos `lib/thanos.py` (its latest `snap`).

With H = XᵀX damped by `percdamp`·mean(diag H) (dead inputs: H_jj = 1 and a zero weight column),
columns are processed in blocks of `blocksize`. For block [i₁, i₂) and H⁻¹ the inverse of the
Hessian of the columns not yet processed (i₁ onward):
- mask: the Wanda metric |W_ij|·‖X_j‖ is ranked over *all remaining* columns, and the lowest
  (target − removed so far) are marked; the marks that fall inside the block are its mask, so the
  matrix ends at its target count exactly;
- update: for every row r with masked columns q, the weights that minimise the layer error with
  w_q = 0 are w − λᵀH⁻¹[q, :], λ = H⁻¹[q, q]⁻¹ w_q (one linear solve per row, batched over
  `row_blocksize` rows); then H⁻¹ is recomputed for the columns after the block.
N:M: inside each block, every row drops its M − N lowest-metric weights of each group of M
(the reference processes one group of M columns per block; here every group of a block is chosen
at once on the current weights, and `blocksize` must be a multiple of M).

Differences from the reference: the target is round(numel·s) (the harness's exact count; the
reference takes int()), and dead-input weights are masked first (the reference's metric 0 ranks
them first too, ties aside)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from harness.accumulators import GramAccumulator
from harness.engine import GramPruner, LayerwiseConfig, check_blocks_hold_groups
from harness.errors import HarnessError
from harness.masks import lowest_k_mask, nm_mask, prune_count
from harness.sparsity import Sparsity


@dataclass
class ThanosConfig(LayerwiseConfig):
    blocksize: int = 512  # columns whose weights are removed in one step
    row_blocksize: int = 256  # rows whose linear systems are solved at once (memory only)
    percdamp: float = 0.01  # dampening, as a fraction of mean(diag H)

    def validate(self) -> None:
        super().validate()
        if self.blocksize < 1 or self.row_blocksize < 1:
            raise HarnessError("thanos.blocksize and thanos.row_blocksize must be at least 1")
        if self.percdamp < 0:
            raise HarnessError(f"thanos.percdamp must be non-negative, got {self.percdamp}")


def _block_mask(W: torch.Tensor, scale: torch.Tensor, dead: torch.Tensor, i1: int, i2: int, sparsity: Sparsity, remaining: int) -> torch.Tensor:
    """The drop-mask [rows, i2 − i1] of block [i1, i2): N:M within the block, or the block's part
    of the `remaining` lowest Wanda scores over every column from i1 on."""
    if sparsity.is_nm:
        scores = W[:, i1:i2].abs() * scale[i1:i2]
        return ~nm_mask(scores.masked_fill(dead[i1:i2], -torch.inf), sparsity.n, sparsity.m)
    scores = (W[:, i1:].abs() * scale[i1:]).masked_fill(dead[i1:], -torch.inf)
    return ~lowest_k_mask(scores, remaining)[:, : i2 - i1]


def _remove_rows(W: torch.Tensor, Hinv: torch.Tensor, i1: int, drop: torch.Tensor, row_blocksize: int) -> None:
    """For every row, zero its dropped weights of the block starting at i1 and move the row's
    weights from i1 on by −λᵀH⁻¹[q, :], λ = H⁻¹[q, q]⁻¹ w_q (q: the row's dropped columns)."""
    rows, width = drop.shape
    counts = drop.sum(dim=1)
    most = int(counts.max())
    if most == 0:
        return
    Hq = Hinv[:width, :width]
    coefficients = torch.zeros(rows, width, dtype=W.dtype, device=W.device)
    slots = torch.arange(most, device=W.device)
    for r1 in range(0, rows, row_blocksize):
        r2 = min(r1 + row_blocksize, rows)
        valid = slots[None, :] < counts[r1:r2, None]  # [b, most]
        # each row's dropped columns first (stable), padded with column 0 where not valid
        order = torch.argsort((~drop[r1:r2]).to(torch.int8), dim=1, stable=True)[:, :most]
        index = torch.where(valid, order, torch.zeros_like(order))
        system = Hq[index[:, :, None], index[:, None, :]]
        pair = valid[:, :, None] & valid[:, None, :]
        eye = torch.eye(most, dtype=W.dtype, device=W.device).expand_as(system)
        system = torch.where(pair, system, eye)  # padded slots: λ = 0 exactly
        target = torch.where(valid, W[r1:r2, i1:][torch.arange(r2 - r1, device=W.device)[:, None], index], 0.0)
        lambdas = torch.linalg.solve(system, target)
        coefficients[r1:r2].scatter_add_(1, index, torch.where(valid, lambdas, 0.0))
    W[:, i1:] -= coefficients @ Hinv[:width, :]  # H⁻¹ is symmetric: Σ λ_j H⁻¹[q_j, :]
    W[:, i1 : i1 + width][drop] = 0


def thanos_prune(weight: torch.Tensor, gram: torch.Tensor, sparsity: Sparsity, cfg: ThanosConfig) -> torch.Tensor:
    """Thanos on one matrix: weight [out, in] (float32, overwritten) and the input Gram XᵀX."""
    W = weight
    rows, columns = W.shape
    H = gram.clone()
    diag = torch.arange(columns, device=H.device)
    dead = H[diag, diag] == 0
    scale = gram.diagonal().sqrt()  # ‖X_j‖, the Wanda scale
    H[diag[dead], diag[dead]] = 1
    W[:, dead] = 0
    H[diag, diag] += cfg.percdamp * H[diag, diag].mean()
    target = prune_count(W.numel(), sparsity.ratio)
    removed = 0
    Hinv = torch.linalg.inv(H)
    for i1 in range(0, columns, cfg.blocksize):
        i2 = min(i1 + cfg.blocksize, columns)
        drop = _block_mask(W, scale, dead, i1, i2, sparsity, target - removed)
        removed += int(drop.sum())
        _remove_rows(W, Hinv, i1, drop, cfg.row_blocksize)
        if i2 < columns:
            Hinv = torch.linalg.inv(H[i2:, i2:])
    return W


class ThanosPruner(GramPruner):
    """Block-wise removal of many weights per row with the closed-form update of the rest."""

    name = "thanos"
    Config = ThanosConfig
    report_rank = 35

    def check_sparsity(self, sparsity: Sparsity) -> None:
        super().check_sparsity(sparsity)
        check_blocks_hold_groups("thanos", self.config.blocksize, sparsity)


    def prune_matrix(self, weight: torch.Tensor, stats: GramAccumulator, sparsity: Sparsity) -> torch.Tensor:
        return thanos_prune(weight, stats.gram, sparsity, self.config)
