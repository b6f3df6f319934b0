"""ADMM pruning (Boža 2024), as coded in fmfi-compbio/admm-pruning `lib/admm.py`.

Precondition by d_j = ‖X_j‖₂ (+1e-8): X̃ = D⁻¹XᵀXD⁻¹ has a unit diagonal and W̃ = (WD)ᵀ [in × out],
so |W̃| is the Wanda score. Damp X̃ by `percdamp`·mean(diag X̃); with U = 0 and the mask M chosen
on |W̃+U| (re-chosen during the first `iterative_prune` iterations), iterate `iters` times
    Z = (W̃+U)⊙M,   U ← U + W̃ − Z,   W̃ ← (X̃ + ρI)⁻¹(X̃W̃₀ + ρ(Z − U)),
and write back the sparse Z = (W̃+U)⊙M unscaled: ADMM's updated weights, not only its mask.

Mask schedule. The reference computes the cubic ramp s_t = s − s(1 − (t+1)/iterative_prune)³ but
applies it only in its per-output and N:M branches; its default layer-wide unstructured branch
selects the final sparsity from the first iteration. The same holds here by default;
`gradual=True` applies the ramp to the layer-wide branch too (the "ADMM-Grad" schedule of the
paper). N:M generalises the reference's hard-coded 2:4: the N:M winners are protected and the
rest is thresholded to the ramped sparsity, ending in an exact N:M pattern.

Solver. (X̃ + ρI) is factored once by Cholesky and inverted from that factor (cholesky_inverse,
1.4-1.6x faster than the reference's LU `torch.inverse`); each iteration is then one matmul.
Two triangular solves per iteration (cholesky_solve) were measured 1.1-1.5x slower than that
matmul, which over 20 iterations costs more than the one-off inverse (benchmarks/layerwise.py)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from harness.accumulators import GramAccumulator
from harness.engine import GramPruner, LayerwiseConfig
from harness.errors import HarnessError
from harness.masks import lowest_mask_matrix, lowest_mask_rows, nm_mask
from harness.sparsity import Sparsity


@dataclass
class ADMMConfig(LayerwiseConfig):
    iters: int = 20  # ADMM iterations
    iterative_prune: int = 15  # the mask is re-selected during the first iterations only
    percdamp: float = 0.1  # dampening of the preconditioned Gram, as a fraction of its mean diagonal
    rho: float = 1.0  # ADMM penalty, constant (the reference has no rho schedule)
    gradual: bool = False  # cubic sparsity ramp for the layer-wide mask (per_out and N:M always ramp)
    per_out: bool = False  # compare weights within each output row instead of layer-wide

    def validate(self) -> None:
        super().validate()
        if self.iters < 0 or self.iterative_prune < 0:
            raise HarnessError("admm.iters and admm.iterative_prune must be non-negative")
        if self.iterative_prune > self.iters:
            raise HarnessError(
                f"admm.iterative_prune ({self.iterative_prune}) must not exceed admm.iters ({self.iters}): "
                "the ramp would stop short of the target sparsity"
            )
        if self.percdamp < 0 or self.rho <= 0:
            raise HarnessError("admm.percdamp must be non-negative and admm.rho positive")


MaskAt = Callable[[torch.Tensor, "int | None"], torch.Tensor]
"""`mask_at(scores, step)` -> keep-mask [in × out] on |W̃+U| at ADMM iteration `step` (None: the
one-shot mask chosen before the iterations)."""


def select_admm_mask(scores: torch.Tensor, sparsity: Sparsity, step: int | None, cfg: ADMMConfig) -> torch.Tensor:
    """ADMM's keep-mask [in × out] on |W̃+U| at iteration `step`, with its sparsity schedule."""
    ramps = sparsity.is_nm or cfg.per_out or cfg.gradual
    ratio = sparsity.ratio
    if step is not None and ramps:
        ratio -= ratio * (1 - (step + 1) / cfg.iterative_prune) ** 3
    if sparsity.is_nm:
        protected = nm_mask(scores.T, sparsity.n, sparsity.m).T
        return lowest_mask_matrix(scores.masked_fill(protected, torch.inf), ratio)
    if cfg.per_out:
        return lowest_mask_rows(scores.T, ratio).T
    return lowest_mask_matrix(scores, ratio)


def admm_solve(weight: torch.Tensor, gram: torch.Tensor, mask_at: MaskAt, cfg: ADMMConfig) -> torch.Tensor:
    """ADMM's layer reconstruction: weight [out, in] and the input Gram XᵀX [in, in] -> the pruned,
    updated weight [out, in]. The mask comes from `mask_at` (re-chosen during the first
    `cfg.iterative_prune` iterations; once, up front, when that is 0)."""
    XX = gram.clone()
    norm = XX.diagonal().sqrt() + 1e-8
    XX /= norm[:, None]
    XX /= norm[None, :]
    XX.diagonal().add_(cfg.percdamp * XX.diagonal().mean())
    W = (weight * norm).T.contiguous()  # W̃ [in x out]

    if cfg.iters == 0:
        return (W * mask_at(W.abs(), None)).T / norm
    if cfg.iterative_prune == 0:
        mask = mask_at(W.abs(), None)
    XY = XX @ W
    XX.diagonal().add_(cfg.rho)
    factor = torch.linalg.cholesky(XX)
    del XX  # peak memory: two in x in matrices at a time
    XXinv = torch.cholesky_inverse(factor)
    del factor
    U = torch.zeros_like(W)
    for step in range(cfg.iters):
        V = W + U
        if step < cfg.iterative_prune:
            mask = mask_at(V.abs(), step)
        Z = V * mask
        U = V - Z  # U + W̃ − Z
        W = XXinv @ (XY + cfg.rho * (Z - U))
    return ((W + U) * mask).T / norm


def admm_prune(weight: torch.Tensor, gram: torch.Tensor, sparsity: Sparsity, cfg: ADMMConfig) -> torch.Tensor:
    """ADMM pruning of one matrix: the mask selected by ADMM's schedule at `sparsity`."""
    return admm_solve(weight, gram, lambda scores, step: select_admm_mask(scores, sparsity, step, cfg), cfg)


def admm_reconstruct(weight: torch.Tensor, gram: torch.Tensor, keep: torch.Tensor, cfg: ADMMConfig) -> torch.Tensor:
    """ADMM's weight update on a fixed keep-mask [out, in] (e.g. a learned one): the kept weights
    re-fitted to minimise ‖X(W' − W)ᵀ‖, the pruned ones zero. `cfg.iterative_prune` must be 0."""
    if cfg.iterative_prune != 0:
        raise ValueError("admm_reconstruct keeps its mask fixed: pass a config with iterative_prune=0")
    fixed = keep.T.to(weight.device)
    return admm_solve(weight, gram, lambda scores, step: fixed, cfg)


class ADMMPruner(GramPruner):
    """Layer reconstruction by ADMM on Wanda-preconditioned weights; mask and weights both change."""

    name = "admm"
    Config = ADMMConfig
    report_rank = 40


    def prune_matrix(self, weight: torch.Tensor, stats: GramAccumulator, sparsity: Sparsity) -> torch.Tensor:
        return admm_prune(weight, stats.gram, sparsity, self.config)
