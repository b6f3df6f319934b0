"""LEAP's training loop: AdamW on the mask logits of a frozen model, one loop read top to bottom.

Mask samples. With `sampling=sequence` (the paper recipe's) every sequence gets its own mask, as
in the reference (local batch 1): a micro-batch of B sequences runs as B forwards of one
sequence, each with its own noise and its own backward (gradient accumulation). A batched forward
with one masked weight per sequence would hold B masks and B masked copies of every targeted
weight for backward; the split forwards hold one of each at a time, as one mask per micro-batch
does, and one sequence's activations instead of B. Either way B independent samples cost B times
the mask math (sampling and the three-pass backward over every targeted weight) of one shared
mask; the split forwards give up only the larger matmuls of a batched forward.
`sampling=micro-batch` (the small-budget recipe's, the CPU default) draws one mask per
micro-batch, in one forward. `benchmarks/leap_step.py` measures both.

Data parallel (torchrun): the forwards of a step are dealt round-robin to the ranks, their
gradients and logged parts summed over the ranks before the optimizer step, which every rank
then takes identically; rank 0 alone writes checkpoints.

Loss per forward, divided by the number of forwards per step (the reference's MaskTrainer):
    CE + λ_s·gap − λ_w·(1 − t/T)·Σ‖W⊙m‖/Σ‖W‖ (+ distill·KL),
gap = |density − target| over all targeted weights, or under N:M the mean over the groups of M
of |group density − N/M|. Sequences have equal length, so under either sampling the step's loss
is the mean over its sequences of each one's loss under the mask it saw (CE is a token mean)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from harness.distributed import World, world
from harness.errors import HarnessError
from harness.methods.leap.checkpoint import Checkpoint
from harness.methods.leap.config import Budget, MaskTrainingConfig
from harness.methods.leap.relaxed_mask import ForwardStats, LearnableMasks
from harness.methods.leap.schedules import Schedule
from harness.methods.leap.windows import WindowSource

CURVE_POINTS = 500  # the training curve in a record is subsampled to at most this many points


@dataclass
class TrainingOutcome:
    curve: list[dict[str, float]]
    resumed_from: int
    seconds: float  # training time, including the time before a resume
    seconds_per_step: float


def subsample_curve(curve: list[dict[str, float]], points: int = CURVE_POINTS) -> list[dict[str, float]]:
    """At most `points` evenly spaced entries, always keeping the first and the last."""
    if len(curve) <= points:
        return curve
    picks = np.unique(np.linspace(0, len(curve) - 1, points).round().astype(int))
    return [curve[i] for i in picks]


def _autocast(device: torch.device, enabled: bool):
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16) if enabled else nullcontext()


@contextmanager
def _training_mode(model: nn.Module, grad_checkpointing: bool) -> Iterator[None]:
    """train() for the duration (HF only checkpoints in training mode); non-reentrant
    checkpointing, because the regularizer statistics leave the checkpointed layers.

    Denormals are flushed to zero meanwhile: at small τ most masks saturate, and m(1 − m) and the
    gradients through it land in the denormal range, where x86 arithmetic is several times slower
    (fused AdamW 5× in a micro-benchmark). Such gradients are far too small to move a logit, so
    flushing them changes nothing that matters. The flag reaches only this thread and threads
    started later, not an intra-op pool that already runs (as in the runner, after the prior), so
    the mask itself is floored too (`_MASK_FLOOR`). torch has no getter for this flag; it is off
    by default and is switched off again afterwards."""
    was_training = model.training
    if grad_checkpointing:
        if not getattr(model, "supports_gradient_checkpointing", False):
            raise HarnessError(f"{type(model).__name__} does not support gradient checkpointing; set leap.grad_checkpointing=false")
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)
        model.train(was_training)
        if grad_checkpointing:
            model.gradient_checkpointing_disable()


def _distillation_loss(model: nn.Module, masks: LearnableMasks, batch: torch.Tensor, student: torch.Tensor) -> torch.Tensor:
    """KL(teacher ‖ student) per token, the teacher being the same model with masks off."""
    with torch.no_grad(), masks.dense():
        teacher = model(input_ids=batch).logits.float()
    vocab = student.shape[-1]
    return F.kl_div(
        F.log_softmax(student.float().view(-1, vocab), dim=-1),
        F.log_softmax(teacher.view(-1, vocab), dim=-1),
        log_target=True,
        reduction="batchmean",
    )


def mask_samples(micro: int, batch_size: int, sampling: str) -> list[tuple[int, slice]]:
    """The forwards of micro-batch `micro`, one per mask sample: (the sample's noise index within
    the step, its rows of the micro-batch). "sequence": one per sequence, indexed by the
    sequence's position in the step; "micro-batch": one for all rows, indexed by the micro-batch."""
    if sampling == "micro-batch":
        return [(micro, slice(0, batch_size))]
    return [(micro * batch_size + row, slice(row, row + 1)) for row in range(batch_size)]


def step_forwards(budget: Budget, sampling: str) -> list[tuple[int, int, slice]]:
    """Every forward of one optimizer step, in order: (micro-batch, noise index, its rows). Under
    torchrun, rank r runs forwards r, r + size, ...; the noise of a forward depends on its index
    only, so any number of ranks computes the same step as one process (up to the order of the
    gradient sums)."""
    return [(micro, index, rows) for micro in range(budget.grad_accum) for index, rows in mask_samples(micro, budget.batch_size, sampling)]


def sparsity_gap(stats: ForwardStats, target_density: float) -> torch.Tensor:
    """What λ_s multiplies: the per-group gap under N:M, else |global soft density − target|."""
    return stats.group_gap if stats.group_gap is not None else (stats.density - target_density).abs()


def _forward_loss(
    model: nn.Module, masks: LearnableMasks, batch: torch.Tensor, config: MaskTrainingConfig, target_density: float, bonus: float
) -> tuple[torch.Tensor, dict[str, float]]:
    """The loss of one masked forward (before the division by the forwards per step) and its logged parts."""
    device = batch.device
    with _autocast(device, config.autocast_bf16):
        out = model(input_ids=batch, labels=batch)
    stats = masks.end_forward()
    loss = out.loss.float() + config.sparse_reg * sparsity_gap(stats, target_density) - bonus * stats.kept
    parts = {"ce": out.loss.item(), "density": stats.density.item(), "kept": stats.kept.item()}
    if stats.group_gap is not None:
        parts["group_gap"] = stats.group_gap.item()
    if config.distill > 0:
        with _autocast(device, config.autocast_bf16):
            kl = _distillation_loss(model, masks, batch, out.logits)
        loss = loss + config.distill * kl
        parts["kl"] = kl.item()
    return loss, parts


def _checked_grad_norm(params: list[nn.Parameter], step: int) -> torch.Tensor:
    grad_norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
    if not torch.isfinite(grad_norm):
        raise HarnessError(f"LEAP training diverged at step {step}: the gradient norm is {grad_norm.item()}; lower leap.lr")
    return grad_norm


def train_masks(
    model: nn.Module,
    masks: LearnableMasks,
    windows: WindowSource,
    config: MaskTrainingConfig,
    target_density: float,
    seed: int,
    checkpoint_path: Path | None = None,
    resume: Checkpoint | None = None,
    fingerprint: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
    progress: bool = True,
) -> TrainingOutcome:
    """Train the logits of `masks` (installed on `model`) for the budget of `config`, which is
    resolved for the device (`config.resolve(device)`); resume from `resume`.

    A checkpoint is written every `config.checkpoint_every` steps when `checkpoint_path` is set.
    A non-finite loss or gradient stops training with an error naming the step."""
    budget = Budget.of(config)
    params = masks.parameters()
    device = params[0].device
    optimizer = torch.optim.AdamW(params, lr=config.lr, betas=(0.9, config.beta2), weight_decay=0.0, fused=True)
    schedule = Schedule(
        budget.steps, config.warmup_steps, (config.tau_start, config.tau_end), (config.scale_start, config.scale_end), config.schedule_end
    )
    start, curve, seconds_before = _restore(masks, optimizer, resume)
    ranks = world()
    forwards = step_forwards(budget, config.sampling)
    _join_ranks(ranks, masks, len(forwards), start, device, config.sampling)
    begin = time.perf_counter()
    bar = tqdm(range(start, budget.steps), desc="leap", disable=not (progress and ranks.is_main), initial=start, total=budget.steps)
    with _training_mode(model, config.grad_checkpointing):
        for step in bar:
            step_start = time.perf_counter()
            tau, scale = schedule.tau_at(step), schedule.scale_at(step)
            lr = config.lr * schedule.lr_factor(step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            bonus = config.weight_reg * schedule.weight_reg_factor(step)
            totals: dict[str, float] = {}
            batch = None
            for micro, index, rows in forwards[ranks.rank :: ranks.size]:  # this rank's share of the step
                if batch is None or batch[0] != micro:
                    batch = (micro, windows((step * budget.grad_accum + micro) * budget.batch_size, budget.batch_size).to(device))
                masks.begin_forward((seed, step, index), tau, scale)
                loss, parts = _forward_loss(model, masks, batch[1][rows], config, target_density, bonus)
                _check_finite(loss, step, micro)
                (loss / len(forwards)).backward()
                for key, value in {"loss": loss.item(), **parts}.items():
                    totals[key] = totals.get(key, 0.0) + value / len(forwards)
                del loss
            ranks.sum([p.grad for p in params])
            totals = ranks.sum_values(totals, device)
            grad_norm = _checked_grad_norm(params, step)
            if config.max_grad_norm > 0:
                torch.nn.utils.clip_grads_with_norm_(params, config.max_grad_norm, grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            curve.append(_curve_point(step, totals, tau, scale, lr, grad_norm, time.perf_counter() - step_start))
            bar.set_postfix(loss=f"{totals['loss']:.3f}", ce=f"{totals['ce']:.3f}", density=f"{totals['density']:.3f}", tau=f"{tau:.2f}")
            done = step + 1
            if ranks.is_main and checkpoint_path is not None and config.checkpoint_every and done % config.checkpoint_every == 0 and done < budget.steps:
                seconds = seconds_before + time.perf_counter() - begin
                _checkpoint(masks, optimizer, done, curve, seconds, extra, fingerprint).save(checkpoint_path)
    elapsed = time.perf_counter() - begin
    steps_run = budget.steps - start
    return TrainingOutcome(
        curve=curve,
        resumed_from=start,
        seconds=seconds_before + elapsed,
        seconds_per_step=elapsed / steps_run if steps_run else 0.0,
    )


def _restore(masks: LearnableMasks, optimizer: torch.optim.Optimizer, resume: Checkpoint | None) -> tuple[int, list[dict[str, float]], float]:
    """The logits and optimizer state of `resume`, if any; the step, curve and seconds to go on from."""
    if resume is None:
        return 0, [], 0.0
    with torch.no_grad():
        for name, theta in masks.logits.items():
            theta.copy_(resume.logits[name])
    optimizer.load_state_dict(resume.optimizer)
    return resume.step, list(resume.curve), resume.seconds


def check_shares(forwards: int, ranks: int, sampling: str) -> None:
    """Refuse a step with fewer mask samples (`forwards`) than ranks to deal them to, naming the
    setting that adds samples under `sampling`."""
    if forwards < ranks:
        more = "leap.grad_accum or leap.batch_size" if sampling == "sequence" else "leap.grad_accum (one mask per micro-batch), or set leap.sampling=sequence"
        raise HarnessError(f"a LEAP step has {forwards} mask sample(s) to share among {ranks} ranks; raise {more}, or start fewer ranks")


def _join_ranks(ranks: World, masks: LearnableMasks, forwards: int, start: int, device: torch.device, sampling: str) -> None:
    """Under torchrun: every rank has a share of the step's forwards, resumes from the same step
    and starts from rank 0's logits (whatever each rank's prior did)."""
    check_shares(forwards, ranks.size, sampling)
    ranks.agree(start, "the step to resume from", "every rank must read rank 0's checkpoint (a shared work folder)", device)
    with torch.no_grad():
        ranks.share_from_main(list(masks.logits.values()))


def _check_finite(loss: torch.Tensor, step: int, micro: int) -> None:
    if not torch.isfinite(loss):
        raise HarnessError(
            f"LEAP training diverged at step {step} (micro-batch {micro}): the loss is {loss.item()}; "
            "check the model's weights for NaN/inf or lower leap.lr"
        )


def _checkpoint(
    masks: LearnableMasks, optimizer: torch.optim.Optimizer, step: int, curve: list[dict[str, float]], seconds: float,
    extra: dict[str, Any] | None, fingerprint: dict[str, Any] | None,
) -> Checkpoint:
    return Checkpoint(
        step=step,
        logits={name: theta.detach().cpu() for name, theta in masks.logits.items()},
        optimizer=optimizer.state_dict(),
        curve=curve,
        seconds=seconds,
        extra=extra or {},
        fingerprint=fingerprint or {},
    )


def _curve_point(step: int, totals: dict[str, float], tau: float, scale: float, lr: float, grad_norm: torch.Tensor, seconds: float) -> dict[str, float]:
    """One logged step of the training curve (kl only when distilling, group_gap only under N:M)."""
    return {
        "step": step,
        **{key: round(value, 6) for key, value in totals.items()},
        "tau": round(tau, 6),
        "scale": round(scale, 4),
        "lr": lr,
        "grad_norm": round(grad_norm.item(), 6),
        "seconds": round(seconds, 3),
    }
