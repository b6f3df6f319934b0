"""LEAP (Mozaffari et al. 2026): learn one global unstructured mask on the frozen dense weights,
warm-started from a one-shot prior, as coded in Paramathic/patch (leap branch); or an N:M mask.

Steps. (1) The prior pruner (Wanda by default; any registered method) prunes the dense model at
the target sparsity; its keep-mask is read from the zeros it left and the dense weights are put
back. Float32 buffers, which then become the logits, hold the dense weights meanwhile, so the
prior costs no copy beyond the logits themselves (bfloat16 logits replace their buffer one matrix
at a time). (2) θ ~ N(0, 0.014²) per matrix, shifted by ±3·std(θ) where the prior keeps/prunes.
(3) The logits train on C4 `train` windows (disjoint from the calibration windows the prior used)
with relaxed-Bernoulli masks (relaxed_mask.py, training.py). (4) The hard mask is an exact global
top-k of θ at the target sparsity (`final_mask=topk`, so every method is compared at the same
sparsity) or the reference's θ > 0 (`final_mask=threshold`, realized sparsity reported), and
W ⊙ M is written into the weights. Optionally (`refit=true`, not in the paper) the kept weights
are then re-fitted layer by layer by ADMM's least-squares update with LEAP's mask fixed. The
recipe (config.py `RECIPES`; unset, the budget's: `small-budget` up to 256 steps, `paper` beyond) chooses
θ's dtype, τ's start, the end of the τ and s schedules, the mask sampling and the final mask
where the user leaves them unset.

A layer-wise profile (`--profile owl`) sets the prior's per-matrix targets; training and the
final top-k stay global, so LEAP may move sparsity between layers from there.

N:M (not in the paper): the prior prunes N:M, training holds every group of M consecutive inputs
to N kept weights (a per-group density penalty), and the hard mask is the top-N θ of every group
(docs/leap.md, N:M).

Resuming. With a work folder, the logits, optimizer moments, curve and the prior's bits are
checkpointed every `checkpoint_every` steps to `leap_ckpt.pt`; a re-run of the same cell skips
the prior and continues from there. The file is deleted once the cell has been pruned."""

from __future__ import annotations

import dataclasses
import sys
import time
from typing import Any

import torch
from torch import nn

from harness.accumulators import GramAccumulator
from harness.data import TRAINING_FILES, estimate_tokens, stream_windows, training_documents
from harness.engine import prune_layerwise
from harness.distributed import world
from harness.errors import HarnessError
from harness.methods.admm import ADMMConfig, admm_reconstruct
from harness.methods.leap.checkpoint import Checkpoint
from harness.methods.leap.config import UNRESOLVED, Budget, LEAPConfig
from harness.methods.leap.relaxed_mask import LearnableMasks, hard_masks, init_logits, pack_mask, unpack_mask
from harness.methods.leap.training import check_shares, step_forwards, subsample_curve, train_masks
from harness.methods.leap.windows import BlockWindows, WindowSource
from harness.pruner import PruneContext, Pruner
from harness.registry import get_pruner
from harness.sparsity import Sparsity

CHECKPOINT_FILE = "leap_ckpt.pt"
MAX_PASSES = 3  # more passes over the training corpus than this, and the run warns


class LEAPPruner(Pruner):
    """Learned global mask on frozen weights, warm-started from a one-shot prior."""

    name = "leap"
    Config = LEAPConfig
    supports_nm = True
    data_parallel = True  # torchrun ranks share the mask training
    honours_profile = True  # through its prior: a profile shapes the prior's mask, not LEAP's global top-k
    report_rank = 50
    cost_stats = (("Tokens trained (M)", "tokens_trained", 1e-6),)

    @classmethod
    def report_figures(cls, records: list[dict[str, Any]]) -> list[tuple[str, str, Any]]:
        from harness.methods.leap.report import training_figure

        curves = [r for r in records if (r.get("method_stats") or {}).get("train_curve")]
        return [("leap_training", "LEAP training curves", training_figure(curves))] if curves else []

    def final_mask(self) -> str:
        """The resolved config's final mask (the plan and `run` resolve the config before they check)."""
        if self.config.final_mask is None:
            raise ValueError(UNRESOLVED)
        return self.config.final_mask

    def exact_sparsity(self) -> bool:
        return self.final_mask() == "topk"

    def check_sparsity(self, sparsity: Sparsity) -> None:
        """N:M needs the top-k final mask (θ > 0 has no group structure) and an N:M prior."""
        super().check_sparsity(sparsity)
        if not sparsity.is_nm:
            return
        if self.final_mask() != "topk":
            raise HarnessError(f"leap.final_mask={self.final_mask()} cannot give N:M sparsity ({sparsity}); use leap.final_mask=topk")
        if not get_pruner(self.config.prior).supports_nm:
            raise HarnessError(f"leap.prior={self.config.prior} does not support N:M sparsity ({sparsity}); use leap.prior=wanda")

    def check_ranks(self, ranks: int) -> None:
        """Every rank needs at least one mask sample of each step."""
        check_shares(len(step_forwards(Budget.of(self.config), self.config.sampling)), ranks, self.config.sampling)

    def check_profile(self, profile: str) -> None:
        """A layer-wise profile reaches LEAP through its prior, so the prior must follow it."""
        get_pruner(self.config.prior)().check_profile(profile)

    @classmethod
    def data_files(cls, config: LEAPConfig) -> list[str]:
        return [TRAINING_FILES[config.corpus]]

    def training_windows(self, ctx: PruneContext, budget: Budget) -> WindowSource:
        """Windows of `budget.seqlen` tokens from the training corpus; a test may override this."""
        if ctx.tokenizer is None:
            raise HarnessError("leap needs the tokenizer to read its training windows")
        docs = training_documents(self.config.corpus, ctx.data_dir)

        def make(count: int, seed: int) -> torch.Tensor:
            return stream_windows(ctx.tokenizer, docs, count, budget.seqlen, seed, ctx.bos_per_window)

        return BlockWindows(make, budget.sequences, ctx.seed)

    def corpus_use(self, ctx: PruneContext, budget: Budget) -> dict[str, Any] | None:
        """How many times the budget goes through the training corpus (estimated); a warning when
        it cycles more than `MAX_PASSES` times. None without a tokenizer (tests' own windows)."""
        if ctx.tokenizer is None:
            return None
        tokens = estimate_tokens(ctx.tokenizer, training_documents(self.config.corpus, ctx.data_dir))
        passes = budget.tokens / max(tokens, 1)
        if passes > MAX_PASSES:
            print(
                f"warning: leap's budget ({budget.tokens:,} tokens) goes through its corpus {self.config.corpus} "
                f"(about {tokens:,} tokens) {passes:,.0f} times; fetch SlimPajama (`harness data fetch --sources slimpajama`) "
                "and set leap.corpus=slimpajama, or lower leap.steps",
                file=sys.stderr,
            )
        return {"name": self.config.corpus, "tokens_estimate": tokens, "passes": float(f"{passes:.3g}")}

    def prune(self, model: nn.Module, sparsity: Sparsity, ctx: PruneContext) -> dict[str, Any]:
        cfg = self.config
        linears = ctx.targets(model)
        device = next(iter(linears.values())).weight.device
        budget = Budget.of(cfg)
        corpus = self.corpus_use(ctx, budget)
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
            logits = {name: torch.empty(linear.weight.shape, dtype=cfg.logit_torch_dtype, device=device) for name, linear in linears.items()}
            extra = resume.extra

        masks = LearnableMasks(model, linears, logits, nm=(sparsity.n, sparsity.m) if sparsity.is_nm else None)
        del logits
        with masks.installed():
            outcome = train_masks(
                model,
                masks,
                self.training_windows(ctx, budget),
                cfg,
                target_density=1.0 - sparsity.ratio,
                seed=ctx.seed,
                checkpoint_path=checkpoint_path,
                resume=resume,
                fingerprint=fingerprint,
                extra=extra,
                progress=ctx.progress,
            )
        del resume
        keep = hard_masks(masks.logits, sparsity if cfg.final_mask == "topk" else None)
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
            "world_size": world().size,
            "corpus": corpus,
            "train_seconds": round(outcome.seconds, 2),
            "seconds_per_step": round(outcome.seconds_per_step, 3),
            "resumed_from_step": outcome.resumed_from,
            "train_curve": subsample_curve(outcome.curve),
        }
        if cfg.refit:
            stats["refit"] = self._refit(model, linears, keep, ctx)
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

        The prior prunes (and may update) the weights in place; float32 buffers hold the dense
        weights while it runs and get them back into the model before θ is drawn into them (into a
        bfloat16 tensor that replaces the buffer, for bfloat16 logits)."""
        cfg = self.config
        logits = {name: linear.weight.detach().to(torch.float32, copy=True) for name, linear in linears.items()}
        result = get_pruner(cfg.prior)().run(model, sparsity, ctx)
        generator = torch.Generator(device=next(iter(logits.values())).device).manual_seed(ctx.seed)
        bits = {}
        for name, linear in linears.items():
            keep = linear.weight != 0
            buffer = logits[name]
            linear.weight.copy_(buffer)
            bits[name] = pack_mask(keep)
            out = buffer if buffer.dtype == cfg.logit_torch_dtype else torch.empty_like(buffer, dtype=cfg.logit_torch_dtype)
            logits[name] = init_logits(keep, cfg.init_std, cfg.prior_strength, generator, out=out)
        prior = {"seconds": round(result.seconds, 2), "realized_sparsity": result.realized_sparsity, "stats": result.stats}
        return logits, {"prior_bits": bits, "prior": prior}

    @torch.no_grad()
    def _refit(
        self, model: nn.Module, linears: dict[str, nn.Linear], keep: dict[str, torch.Tensor], ctx: PruneContext
    ) -> dict[str, Any]:
        """Sequential layer-wise re-fit of the dense weights on the fixed final mask: each linear's
        kept weights minimise ‖X(W' − W)ᵀ‖ on the inputs X of the already re-fitted model, solved
        by ADMM's update (default admm settings, the mask fixed) on the shared layer-wise engine."""
        if ctx.calibration is None:
            raise HarnessError("leap.refit needs calibration data; pass --nsamples > 0")
        start = time.perf_counter()
        admm = ADMMConfig(iterative_prune=0)

        def refit(name: str, weight: torch.Tensor, stats: GramAccumulator) -> torch.Tensor:
            return admm_reconstruct(weight, stats.gram, keep[name], admm)

        def accumulator(linear: nn.Linear) -> GramAccumulator:
            return GramAccumulator(linear.in_features, linear.weight.device)

        prune_layerwise(model, linears, ctx.calibration, accumulator, refit, admm, ctx.progress)
        return {"seconds": round(time.perf_counter() - start, 2), "solver": "admm", "admm": admm.to_dict()}


def _changed_fraction(keep: dict[str, torch.Tensor], prior_bits: dict[str, Any]) -> float:
    """Fraction of the final mask's kept weights that the prior had pruned."""
    kept = changed = 0
    for name, mask in keep.items():
        prior = unpack_mask(prior_bits[name], mask)
        kept += int(mask.sum())
        changed += int((mask & ~prior).sum())
    return changed / max(kept, 1)
