"""SparseGPT (Frantar & Alistarh 2023): OBS pruning with lazy batched updates, per IST-DASLab/sparsegpt.

For each weight matrix with layer Hessian H = XᵀX (up to scale): dead inputs (H_jj = 0) get
H_jj = 1 and a zero weight column; H is damped by `percdamp`·mean(diag H); U is the upper Cholesky
factor of H⁻¹. Columns are processed in blocks of `blocksize`: the block's mask is chosen on
w²/U_jj² over the whole rows × block slab (N:M: per row, every M columns, on the updated
weights), then each column is zeroed where masked and its error (w − q)/U_jj is propagated to
the later columns of the block; after the block, the accumulated errors update all later
columns in one matmul (the lazy batch update).

Exact sparsity. The reference drops int(numel·s)+1 entries per block (a `<=` threshold); here
the matrix's round(numel·s) zeros are shared out over the blocks in proportion to their live
columns, so each matrix hits its target exactly. Dead-input weights are zero as in the reference
and count towards that total: they are masked first, and the other entries make up the rest (a
matrix whose dead inputs alone exceed the target ends up sparser than asked)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch

from harness.accumulators import GramAccumulator
from harness.engine import GramPruner, LayerwiseConfig, check_blocks_hold_groups
from harness.errors import HarnessError
from harness.masks import lowest_mask_matrix, nm_mask
from harness.sparsity import Sparsity


@dataclass
class SparseGPTConfig(LayerwiseConfig):
    blocksize: int = 128  # columns per lazy-update block (the mask is chosen per block)
    percdamp: float = 0.01  # dampening, as a fraction of mean(diag H)

    def validate(self) -> None:
        super().validate()
        if self.blocksize < 1:
            raise HarnessError(f"sparsegpt.blocksize must be at least 1, got {self.blocksize}")
        if self.percdamp < 0:
            raise HarnessError(f"sparsegpt.percdamp must be non-negative, got {self.percdamp}")


def inverse_hessian_factor(hessian: torch.Tensor) -> torch.Tensor:
    """Upper Cholesky factor U of H⁻¹ (H⁻¹ = UᵀU) from one Cholesky and one triangular inverse.

    The reference computes chol(cholesky_inverse(chol(H)), upper): three cubic steps. With P the
    index reversal, P H P = L Lᵀ gives H⁻¹ = (P L⁻ᵀ P)(P L⁻¹ P), and P L⁻¹ P is upper triangular
    with a positive diagonal, hence the same unique factor."""
    lower = torch.linalg.cholesky(hessian.flip(0, 1))
    eye = torch.eye(hessian.shape[0], dtype=hessian.dtype, device=hessian.device)
    inverse = torch.linalg.solve_triangular(lower, eye, upper=False)
    del lower, eye  # peak memory: four n x n matrices, H included
    return inverse.flip(0, 1)


def block_quotas(live: torch.Tensor, blocksize: int, prune_total: int) -> list[int]:
    """How many of `prune_total` entries each block of columns prunes among its live columns:
    shares proportional to the live columns, rounded on the running total so they sum exactly."""
    per_block = [int(live[start : start + blocksize].sum()) for start in range(0, live.numel(), blocksize)]
    total = max(sum(per_block), 1)
    bounds = [0] + [round(prune_total * seen / total) for seen in itertools.accumulate(per_block)]
    return [b - a for a, b in zip(bounds, bounds[1:])]


def _obs_scores(W1: torch.Tensor, d: torch.Tensor, dead: torch.Tensor) -> torch.Tensor:
    """SparseGPT's saliency w²/[U]_jj²; dead inputs score -inf so they are always pruned."""
    scores = W1.square() / d.square()
    scores[:, dead] = -torch.inf
    return scores


class SparseGPTPruner(GramPruner):
    """Optimal Brain Surgeon pruning, column by column, with the remaining weights updated."""

    name = "sparsegpt"
    report_rank = 30
    Config = SparseGPTConfig

    def check_sparsity(self, sparsity: Sparsity) -> None:
        super().check_sparsity(sparsity)
        check_blocks_hold_groups("sparsegpt", self.config.blocksize, sparsity)


    def prune_matrix(self, weight: torch.Tensor, stats: GramAccumulator, sparsity: Sparsity) -> torch.Tensor:
        W = weight
        rows, columns = W.shape
        H = stats.gram.clone()
        diag = torch.arange(columns, device=H.device)
        dead = H[diag, diag] == 0
        H[diag[dead], diag[dead]] = 1
        W[:, dead] = 0
        H[diag, diag] += self.config.percdamp * H[diag, diag].mean()
        try:
            Hinv = inverse_hessian_factor(H)
        except torch.linalg.LinAlgError:
            raise HarnessError(
                "sparsegpt: the damped Hessian is not positive definite; raise sparsegpt.percdamp"
            ) from None
        del H

        blocksize = self.config.blocksize
        if not sparsity.is_nm:
            target = round(W.numel() * sparsity.ratio)
            quotas = block_quotas(~dead, blocksize, max(target - rows * int(dead.sum()), 0))
        for block, i1 in enumerate(range(0, columns, blocksize)):
            i2 = min(i1 + blocksize, columns)
            W1 = W[:, i1:i2].clone()
            Hinv1 = Hinv[i1:i2, i1:i2]
            d = Hinv1.diagonal()
            dead1 = dead[i1:i2]
            if sparsity.is_nm:
                keep = torch.ones_like(W1, dtype=torch.bool)
            else:
                scores = _obs_scores(W1, d, dead1)
                keep = lowest_mask_matrix(scores, (quotas[block] + rows * int(dead1.sum())) / scores.numel())
            errors = torch.empty_like(W1)
            for i in range(i2 - i1):
                if sparsity.is_nm and i % sparsity.m == 0:
                    group = slice(i, i + sparsity.m)
                    keep[:, group] = nm_mask(_obs_scores(W1[:, group], d[group], dead1[group]), sparsity.n, sparsity.m)
                w = W1[:, i]
                q = w * keep[:, i]
                err = (w - q) / d[i]
                W1[:, i + 1 :].addr_(err, Hinv1[i, i + 1 :], alpha=-1)
                W1[:, i] = q
                errors[:, i] = err
            W[:, i1:i2] = W1
            W[:, i2:].addmm_(errors, Hinv[i1:i2, i2:], alpha=-1)
        return W
