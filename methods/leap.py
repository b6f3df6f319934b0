"""LEAP (Mozaffari et al. 2026): learn one global unstructured mask on the frozen dense weights,
warm-started from a one-shot prior, as coded in Paramathic/patch (leap branch).

Steps. (1) The prior pruner (Wanda by default; any registered method) prunes the dense model at
the target sparsity; its keep-mask is read from the zeros it left and the dense weights are put
back. The float32 logit buffers hold the dense weights meanwhile, so the prior costs no copy
beyond the logits themselves. (2) θ ~ N(0, 0.014²) per matrix, shifted by ±3·std(θ) where the prior
keeps/prunes. (3) The logits train on C4 `train` windows (disjoint from the calibration windows
the prior used) with relaxed-Bernoulli masks (harness/mask_training.py). (4) The hard mask is an
exact global top-k of θ at the target sparsity (`final_mask=topk`, so every method is compared at
the same sparsity) or the reference's θ > 0 (`final_mask=threshold`, realized sparsity reported),
and W ⊙ M is written into the weights. Optionally (`refit=true`, not in the paper) the kept
weights are then re-fitted layer by layer by ADMM's least-squares update with LEAP's mask fixed.

Resuming. With a work folder, the logits, optimizer moments, curve and the prior's bits are
checkpointed every `checkpoint_every` steps to `leap_ckpt.pt`; a re-run of the same cell skips
the prior and continues from there. The file is deleted once the cell has been pruned."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from harness.data import c4_windows
from harness.errors import HarnessError
from harness.mask_training import (
    BlockWindows,
    Budget,
    Checkpoint,
    LearnableMasks,
    MaskTrainingConfig,
    WindowSource,
    hard_masks,
    init_logits,
    pack_mask,
    subsample_curve,
    train_masks,
    unpack_mask,
)
from harness.pruner import PruneContext, Pruner
from harness.registry import get_pruner
from harness.sparsity import Sparsity
from methods.admm import ADMMPruner

CHECKPOINT_FILE = "leap_ckpt.pt"


@dataclass
class LEAPConfig(MaskTrainingConfig):
    prior: str = "wanda"  # registered pruner giving the initial mask (the paper's text says magnitude)
    final_mask: Literal["topk", "threshold"] = "topk"  # exact global top-k of θ, or θ > 0 (reference)
    refit: bool = False  # re-fit the kept weights on the final mask (ADMM update, fixed mask)

    def validate(self) -> None:
        super().validate()
        if self.prior == "leap":
            raise HarnessError("leap.prior must be a one-shot method such as wanda or magnitude, not leap")
        get_pruner(self.prior)  # an unknown name fails here, with the registry's suggestion


class _FixedMaskADMM(ADMMPruner):
    """ADMM's layer reconstruction with the mask given instead of selected (`iterative_prune=0`
    makes ADMM ask for its mask once, before the updates)."""

    def __init__(self, keep: dict[str, torch.Tensor]) -> None:
        super().__init__(iterative_prune=0)
        self.keep = keep  # [out, in] boolean per targeted linear name
        self._current: torch.Tensor | None = None

    def prune_named(self, name: str, weight: torch.Tensor, stats: Any, sparsity: Sparsity) -> torch.Tensor:
        self._current = self.keep[name].to(weight.device)
        return self.prune_matrix(weight, stats, sparsity)

    def _mask(self, scores: torch.Tensor, sparsity: Sparsity, step: int | None) -> torch.Tensor:
        return self._current.T


class LEAPPruner(Pruner):
    """Learned global mask on frozen weights, warm-started from a one-shot prior."""

    name = "leap"
    Config = LEAPConfig

    def exact_sparsity(self) -> bool:
        return self.config.final_mask == "topk"

    def training_windows(self, ctx: PruneContext, budget: Budget) -> WindowSource:
        """C4 `train`-split windows of `budget.seqlen` tokens; a test may override this."""
        if ctx.tokenizer is None:
            raise HarnessError("leap needs the tokenizer to read its C4 training windows")

        def make(count: int, seed: int) -> torch.Tensor:
            return c4_windows(ctx.tokenizer, count, budget.seqlen, seed, "train", ctx.data_dir, ctx.bos_per_window)

        return BlockWindows(make, budget.sequences, ctx.seed)

    def prune(self, model: nn.Module, sparsity: Sparsity, ctx: PruneContext) -> dict[str, Any]:
        cfg = self.config
        linears = ctx.targets(model)
        device = next(iter(linears.values())).weight.device
        budget = Budget.resolve(cfg, device)
        fingerprint = {
            "config": cfg.to_dict(),
            "budget": dataclasses.asdict(budget),
            "sparsity": sparsity.label(),
            "seed": ctx.seed,
            "targets": {name: list(linear.weight.shape) for name, linear in linears.items()},
        }
        checkpoint_path = ctx.workdir / CHECKPOINT_FILE if ctx.workdir is not None else None
        resume = Checkpoint.load(checkpoint_path, fingerprint) if checkpoint_path is not None else None
        if resume is None:
            logits, extra = self._logits_from_prior(model, linears, sparsity, ctx)
        else:
            logits = {name: torch.empty(linear.weight.shape, dtype=torch.float32, device=device) for name, linear in linears.items()}
            extra = resume.extra

        masks = LearnableMasks(model, linears, logits)
        del logits
        with masks.installed():
            outcome = train_masks(
                model,
                masks,
                self.training_windows(ctx, budget),
                cfg,
                budget,
                target_density=1.0 - sparsity.ratio,
                seed=ctx.seed,
                checkpoint_path=checkpoint_path,
                resume=resume,
                fingerprint=fingerprint,
                extra=extra,
                progress=ctx.progress,
            )
        del resume
        keep = hard_masks(masks.logits, sparsity.ratio if cfg.final_mask == "topk" else None)
        del masks
        stats: dict[str, Any] = {
            "prior": cfg.prior,
            "prior_seconds": extra["prior"]["seconds"],
            "prior_realized_sparsity": extra["prior"]["realized_sparsity"],
            "prior_stats": extra["prior"]["stats"],
            "final_mask": cfg.final_mask,
            "mask_changed": _changed_fraction(keep, extra["prior_bits"]),
            "budget": dataclasses.asdict(budget),
            "tokens_trained": budget.tokens,
            "train_seconds": round(outcome.seconds, 2),
            "seconds_per_step": round(outcome.seconds_per_step, 3),
            "resumed_from_step": outcome.resumed_from,
            "train_curve": subsample_curve(outcome.curve),
        }
        if cfg.refit:
            stats["refit"] = self._refit(model, linears, keep, sparsity, ctx)
        else:
            with torch.no_grad():
                for name, linear in linears.items():
                    linear.weight.mul_(keep[name])
        if checkpoint_path is not None:
            checkpoint_path.unlink(missing_ok=True)
        return stats

    @torch.no_grad()
    def _logits_from_prior(
        self, model: nn.Module, linears: dict[str, nn.Linear], sparsity: Sparsity, ctx: PruneContext
    ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Initial logits from the prior's keep-mask, plus what a resumed run needs of the prior.

        The prior prunes (and may update) the weights in place; the logit buffers hold the dense
        weights while it runs and get them back into the model before they become logits."""
        cfg = self.config
        logits = {name: linear.weight.detach().to(torch.float32, copy=True) for name, linear in linears.items()}
        result = get_pruner(cfg.prior)().run(model, sparsity, ctx)
        generator = torch.Generator(device=next(iter(logits.values())).device).manual_seed(ctx.seed)
        bits = {}
        for name, linear in linears.items():
            keep = linear.weight != 0
            linear.weight.copy_(logits[name])
            bits[name] = pack_mask(keep)
            init_logits(keep, cfg.init_std, cfg.prior_strength, generator, out=logits[name])
        prior = {"seconds": round(result.seconds, 2), "realized_sparsity": result.realized_sparsity, "stats": result.stats}
        return logits, {"prior_bits": bits, "prior": prior}

    @torch.no_grad()
    def _refit(
        self, model: nn.Module, linears: dict[str, nn.Linear], keep: dict[str, torch.Tensor], sparsity: Sparsity, ctx: PruneContext
    ) -> dict[str, Any]:
        """Sequential layer-wise re-fit of the dense weights on the fixed final mask: each linear's
        kept weights minimise ‖X(W' − W)ᵀ‖ on the inputs X of the already re-fitted model, solved
        by ADMM's update (default admm settings) with `_FixedMaskADMM` supplying LEAP's mask."""
        if ctx.calibration is None:
            raise HarnessError("leap.refit needs calibration data; pass --nsamples > 0")
        start = time.perf_counter()
        admm = _FixedMaskADMM(keep)
        admm.prune_linears(model, linears, ctx.calibration, sparsity, ctx.progress)
        return {"seconds": round(time.perf_counter() - start, 2), "solver": "admm", "admm": admm.config.to_dict()}


def _changed_fraction(keep: dict[str, torch.Tensor], prior_bits: dict[str, Any]) -> float:
    """Fraction of the final mask's kept weights that the prior had pruned."""
    kept = changed = 0
    for name, mask in keep.items():
        prior = unpack_mask(prior_bits[name], mask)
        kept += int(mask.sum())
        changed += int((mask & ~prior).sum())
    return changed / max(kept, 1)
