"""Learning a pruning mask on frozen weights (LEAP): logits, relaxed masks, schedules, the loop.

Parameterization. Every targeted linear gets one float32 logit θ per weight, registered on the
linear as the parameter `mask_logits` (so DDP or any optimizer sees exactly the trainable set),
and its forward becomes y = x(W ⊙ m)ᵀ + b with a fresh relaxed-Bernoulli sample per forward:

    m = σ((s·θ + L)/τ),   L = log u − log(1 − u) ~ Logistic(0, 1)

L is the difference of two Gumbel variables, so this equals channel 1 of the reference's two-class
`gumbel_softmax([0, s·θ], τ)`. The weights stay frozen; `sample_masked_weight` is one autograd
function for the mask, the masked weight and the two regularizer statistics (Σm and ‖W⊙m‖_F), with
a hand-written backward, because on CPU the step time of mask learning is mostly elementwise passes
over the weights, and fusing them keeps LEAP close to the cost of a dense fine-tuning step.

Noise. Each linear draws its noise from a generator reseeded with (seed, step, micro-batch, layer
index). The noise is therefore a pure function of the position in training: a resumed run sees
the same masks as an uninterrupted one without saving RNG states, and gradient checkpointing,
which re-runs a layer's forward during backward, recomputes the very same mask.

Schedules are pure functions of the step too: τ and s anneal linearly from their start values at
step 0 to their end values at the last step; the learning rate follows HF's cosine schedule with
linear warm-up (as the reference's Trainer); the weight-norm bonus decays as (1 − t/T).

Memory. Persistent: θ plus AdamW's two moments (three float32 copies of the targeted weights).
Per step: the gradient of θ and, per linear, the sampled mask and masked weight kept for backward;
gradient checkpointing bounds the latter to one decoder layer at a time."""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from harness.config import PrunerConfig
from harness.errors import HarnessError
from harness.masks import lowest_mask_matrix

LOGIT_PARAM = "mask_logits"
CURVE_POINTS = 500  # the training curve in a record is subsampled to at most this many points
_UNIFORM_EPS = 2.0**-24  # u is clamped to [eps, 1 − eps]: the logistic noise stays within ±16.6
# Mask values below this are set to exactly 0. Late in the τ anneal, σ((s·θ + L)/τ) of a pruned
# weight lands near float32's underflow, and W ⊙ m and its gradient then hold subnormal numbers,
# which x86 arithmetic handles many times slower: one 1536 × 576 masked linear's forward and
# backward took 363 ms instead of 20 ms at τ = 0.18, and two float32 SmolLM2 steps 12 s and 57 s
# instead of 4.5 s (docs/leap.md). A mask of 2⁻⁶⁴ moves no output by more than |W|·2⁻⁶⁴, far below
# float32's resolution: the same run's perplexity was unchanged (63.36) and its steps even.
_MASK_FLOOR = 2.0**-64


# --------------------------------------------------------------------------- configuration


@dataclass
class MaskTrainingConfig(PrunerConfig):
    """Hyperparameters of mask learning; defaults are the reference's (Paramathic/patch, leap).

    The budget fields left at None are resolved by `Budget.resolve` from the device: the paper's
    scale on CUDA, a small budget on CPU."""

    steps: int | None = None  # optimizer steps
    batch_size: int | None = None  # sequences per micro-batch
    grad_accum: int | None = None  # micro-batches per optimizer step
    seqlen: int | None = None  # tokens per training sequence
    lr: float = 1e-3
    warmup_steps: int = 5
    beta2: float = 0.95
    max_grad_norm: float = 1.0  # the reference's HF Trainer clips at 1.0; 0 disables clipping
    tau_start: float = 4.0
    tau_end: float = 0.05
    scale_start: float = 25.0
    scale_end: float = 350.0
    init_std: float = 0.014
    prior_strength: float = 3.0
    sparse_reg: float = 7.0  # λ_s on |soft density − target density|
    weight_reg: float = 10.0  # λ_w on the kept weight norm ratio, decaying linearly to 0
    distill: float = 0.0  # weight of KL(dense teacher ‖ masked student); 0 = off (the paper)
    checkpoint_every: int = 25  # steps between checkpoints in the run's work folder; 0 = never
    autocast_bf16: bool | None = None  # None: on for CUDA, off for CPU
    grad_checkpointing: bool = False  # recompute each decoder layer in backward (large models)

    def validate(self) -> None:
        for name in ("steps", "batch_size", "grad_accum", "seqlen"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise HarnessError(f"leap.{name} must be at least 1, got {value}")
        if self.seqlen is not None and self.seqlen < 2:
            raise HarnessError(f"leap.seqlen must be at least 2, got {self.seqlen}")
        positive = ("lr", "tau_start", "tau_end", "scale_start", "scale_end", "init_std")
        for name in positive:
            if not getattr(self, name) > 0:
                raise HarnessError(f"leap.{name} must be positive, got {getattr(self, name)}")
        for name in ("warmup_steps", "max_grad_norm", "prior_strength", "sparse_reg", "weight_reg", "distill", "checkpoint_every"):
            if getattr(self, name) < 0:
                raise HarnessError(f"leap.{name} must be non-negative, got {getattr(self, name)}")
        if not 0 < self.beta2 < 1:
            raise HarnessError(f"leap.beta2 must be in (0, 1), got {self.beta2}")

    def resolve(self, device: torch.device) -> MaskTrainingConfig:
        budget = Budget.resolve(self, device)
        autocast = self.autocast_bf16 if self.autocast_bf16 is not None else device.type == "cuda"
        return dataclasses.replace(self, **dataclasses.asdict(budget), autocast_bf16=autocast)


@dataclass(frozen=True)
class Budget:
    """The training budget actually used: steps × grad_accum × batch_size sequences of seqlen."""

    steps: int
    batch_size: int
    grad_accum: int
    seqlen: int

    # Paper scale (README: 2000 steps of 128 × 4096 tokens) as 32 micro-batches of 4 on one GPU.
    GPU = (2000, 4, 32, 4096)
    # 33k tokens: 2-4 minutes of training for SmolLM2-135M on two idle CPU cores (docs/leap.md).
    CPU = (32, 4, 1, 256)

    @classmethod
    def resolve(cls, config: MaskTrainingConfig, device: torch.device) -> "Budget":
        defaults = cls.GPU if device.type == "cuda" else cls.CPU
        given = (config.steps, config.batch_size, config.grad_accum, config.seqlen)
        return cls(*(value if value is not None else default for value, default in zip(given, defaults)))

    @property
    def sequences(self) -> int:
        return self.steps * self.grad_accum * self.batch_size

    @property
    def tokens(self) -> int:
        return self.sequences * self.seqlen


# --------------------------------------------------------------------------- schedules


@dataclass(frozen=True)
class Schedule:
    """Per-step values of τ, the logit scale s, the lr factor and the weight-bonus factor."""

    steps: int
    warmup_steps: int
    tau: tuple[float, float]
    scale: tuple[float, float]

    def _progress(self, step: int) -> float:
        return step / (self.steps - 1) if self.steps > 1 else 1.0

    def tau_at(self, step: int) -> float:
        start, end = self.tau
        return start + (end - start) * self._progress(step)

    def scale_at(self, step: int) -> float:
        start, end = self.scale
        return start + (end - start) * self._progress(step)

    def lr_factor(self, step: int) -> float:
        """HF `get_cosine_schedule_with_warmup` (the reference's Trainer: 'cosine', 5 warm-up steps)."""
        if step < self.warmup_steps:
            return step / max(1, self.warmup_steps)
        progress = (step - self.warmup_steps) / max(1, self.steps - self.warmup_steps)
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))

    def weight_reg_factor(self, step: int) -> float:
        """(1 − t/T), as the reference's `1 − global_step / max_steps`."""
        return 1.0 - step / self.steps


# --------------------------------------------------------------------------- the relaxed mask


class _RelaxedMaskedWeight(torch.autograd.Function):
    """(W ⊙ m, Σm, ‖W⊙m‖_F) with m = σ((s·θ + L)/τ); the gradient flows to θ only.

    The backward is three passes over the weights: with g the gradient of W⊙m, k = s/τ and c the
    gradient of the norm divided by the norm, ∂/∂θ = k·(∂Σm + W⊙g + c·W⊙(W⊙m))·m(1 − m)."""

    @staticmethod
    def forward(ctx, logits, weight, scale, tau, generator):  # noqa: D102 (autograd signature)
        mask = torch.rand(logits.shape, generator=generator, dtype=torch.float32, device=logits.device)
        mask.logit_(eps=_UNIFORM_EPS).add_(logits, alpha=scale).div_(tau).sigmoid_()
        mask.masked_fill_(mask < _MASK_FLOOR, 0.0)  # no subnormals downstream (see _MASK_FLOOR)
        masked = weight * mask  # float32 (type promotion) even for a bf16 weight
        norm = torch.linalg.vector_norm(masked)
        masked = masked.to(weight.dtype)  # the tensor F.linear saves anyway: saving it here is free
        ctx.save_for_backward(weight, mask, masked, norm)
        ctx.factor = scale / tau
        ctx.set_materialize_grads(False)
        return masked, mask.sum(), norm

    @staticmethod
    def backward(ctx, grad_masked, grad_sum, grad_norm):  # noqa: D102
        weight, mask, masked, norm = ctx.saved_tensors
        factor = ctx.factor
        base = (grad_sum if grad_sum is not None else mask.new_zeros(())).float() * factor
        if grad_masked is None:
            grad_masked = torch.zeros_like(mask)
        grad = torch.addcmul(base, grad_masked.float(), weight, value=factor)
        if grad_norm is not None and norm > 0:
            grad.addcmul_(masked, weight, value=factor * float(grad_norm / norm))
        return torch.ops.aten.sigmoid_backward(grad, mask), None, None, None, None  # ⊙ m(1 − m)


def sample_masked_weight(
    logits: torch.Tensor, weight: torch.Tensor, scale: float, tau: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One relaxed-Bernoulli sample: (W ⊙ m in W's dtype, Σm, ‖W⊙m‖_F), differentiable in θ."""
    return _RelaxedMaskedWeight.apply(logits, weight, scale, tau, generator)


def noise_seed(*entropy: int) -> int:
    """A 63-bit generator seed from integers such as (seed, step, micro-batch, layer)."""
    return int(np.random.SeedSequence([int(e) for e in entropy]).generate_state(2, np.uint64)[0] >> 1)


@dataclass
class SamplingState:
    """What the masked forwards of one model share: the current τ and s, where in training the
    noise comes from, whether to bypass the masks (dense teacher), and the statistics the
    regularizers need, recorded only while `recording` (not when a checkpointed layer re-runs)."""

    tau: float = 1.0
    scale: float = 1.0
    entropy: tuple[int, ...] = (0,)
    dense: bool = False
    recording: bool = False
    mask_sums: list[torch.Tensor] = field(default_factory=list)
    kept_norms: list[torch.Tensor] = field(default_factory=list)
    _generators: dict[torch.device, torch.Generator] = field(default_factory=dict)

    def generator(self, index: int, device: torch.device) -> torch.Generator:
        gen = self._generators.get(device)
        if gen is None:
            gen = self._generators[device] = torch.Generator(device=device)
        return gen.manual_seed(noise_seed(*self.entropy, index))


def _masked_forward(linear: nn.Linear, state: SamplingState, index: int, x: torch.Tensor) -> torch.Tensor:
    if state.dense:
        return F.linear(x, linear.weight, linear.bias)
    logits = getattr(linear, LOGIT_PARAM)
    weight, mask_sum, kept_norm = sample_masked_weight(
        logits, linear.weight, state.scale, state.tau, state.generator(index, logits.device)
    )
    if state.recording:
        state.mask_sums.append(mask_sum)
        state.kept_norms.append(kept_norm)
    return F.linear(x, weight, linear.bias)


class LearnableMasks:
    """Logits attached to the frozen linears of a model: `install` freezes every parameter of the
    model and makes the linears sample a relaxed mask; `remove` restores plain linears and the
    parameters' `requires_grad` flags. One instance per model."""

    def __init__(self, model: nn.Module, linears: dict[str, nn.Linear], logits: dict[str, torch.Tensor]) -> None:
        if linears.keys() != logits.keys():
            raise ValueError("logits must be given for exactly the targeted linears")
        self.model = model
        self.linears = linears
        self.logits = {name: nn.Parameter(logits[name], requires_grad=True) for name in linears}
        self.state = SamplingState()
        self.numel = sum(t.numel() for t in self.logits.values())
        with torch.no_grad():
            self.weight_norm = float(sum(torch.linalg.vector_norm(lin.weight.float()) for lin in linears.values()))
        self._requires_grad: dict[nn.Parameter, bool] = {}

    def parameters(self) -> list[nn.Parameter]:
        return list(self.logits.values())

    def install(self) -> None:
        self._requires_grad = {param: param.requires_grad for param in self.model.parameters()}
        for param in self._requires_grad:
            param.requires_grad_(False)
        for index, (name, linear) in enumerate(self.linears.items()):
            linear.register_parameter(LOGIT_PARAM, self.logits[name])
            linear.forward = functools.partial(_masked_forward, linear, self.state, index)

    def remove(self) -> None:
        for linear in self.linears.values():
            linear._parameters.pop(LOGIT_PARAM, None)
            linear.__dict__.pop("forward", None)
        for param, flag in self._requires_grad.items():
            param.requires_grad_(flag)
        self._requires_grad = {}

    @contextmanager
    def installed(self) -> Iterator["LearnableMasks"]:
        self.install()
        try:
            yield self
        finally:
            self.remove()

    def begin_forward(self, entropy: tuple[int, ...], tau: float, scale: float) -> None:
        """Set the noise source and temperature of the next forward and start recording."""
        state = self.state
        state.entropy, state.tau, state.scale = entropy, tau, scale
        state.mask_sums.clear()
        state.kept_norms.clear()
        state.recording = True

    def end_forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Global soft density Σm/N and kept-weight ratio Σ‖W⊙m‖/Σ‖W‖ of the forward just run."""
        state = self.state
        state.recording = False
        if len(state.mask_sums) != len(self.linears):
            raise HarnessError(
                f"{len(state.mask_sums)} of {len(self.linears)} masked linears ran in the forward; "
                "every targeted linear must be used by the model's forward"
            )
        density = torch.stack(state.mask_sums).sum() / self.numel
        kept = torch.stack(state.kept_norms).sum() / self.weight_norm
        return density, kept

    @contextmanager
    def dense(self) -> Iterator[None]:
        """Forwards inside see the unmasked weights (the distillation teacher shares them)."""
        self.state.dense = True
        try:
            yield
        finally:
            self.state.dense = False


# --------------------------------------------------------------------------- initialization and hard masks


def init_logits(
    keep: torch.Tensor, std: float, strength: float, generator: torch.Generator, out: torch.Tensor
) -> torch.Tensor:
    """θ ~ N(0, std²), then θ += strength·std(θ)·prior with prior = ±1 where `keep` is True/False
    (the reference's `_init_normal_` + `_apply_tile_prior_`, per matrix). Written into `out`."""
    out.normal_(0.0, std, generator=generator)
    shift = strength * float(out.std())
    out.add_(torch.where(keep.to(out.device), shift, -shift))
    return out


def hard_masks(logits: dict[str, torch.Tensor], sparsity: float | None) -> dict[str, torch.Tensor]:
    """Boolean keep-masks from the logits: an exact global top-k at `sparsity`, or θ > 0 (the
    reference's threshold) when `sparsity` is None."""
    if sparsity is None:
        return {name: theta.detach() > 0 for name, theta in logits.items()}
    flat = torch.cat([theta.detach().flatten() for theta in logits.values()])
    keep = lowest_mask_matrix(flat, sparsity)
    del flat
    masks: dict[str, torch.Tensor] = {}
    offset = 0
    for name, theta in logits.items():
        masks[name] = keep[offset : offset + theta.numel()].view_as(theta)
        offset += theta.numel()
    return masks


def pack_mask(keep: torch.Tensor) -> np.ndarray:
    """A boolean mask as bits (1/32 of its float32 logits), e.g. the prior kept for statistics."""
    return np.packbits(keep.flatten().cpu().numpy())


def unpack_mask(bits: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(np.unpackbits(bits, count=like.numel()).astype(bool)).view(like.shape).to(like.device)


# --------------------------------------------------------------------------- data


WindowSource = Callable[[int, int], torch.Tensor]
"""`source(start, count)` -> token ids [count, seqlen]: windows start..start+count of the run."""


class BlockWindows:
    """A `WindowSource` over a function that makes `n` windows from a seed, produced in blocks so
    memory stays bounded for budgets of any size: block b holds windows [b·size, (b+1)·size)."""

    def __init__(self, make: Callable[[int, int], torch.Tensor], total: int, seed: int, block_size: int = 1024) -> None:
        self.make = make
        self.total = total
        self.seed = seed
        self.block_size = block_size
        self._block: tuple[int, torch.Tensor] | None = None

    def _block_rows(self, block: int) -> torch.Tensor:
        if self._block is None or self._block[0] != block:
            count = min(self.block_size, self.total - block * self.block_size)
            self._block = (block, self.make(count, noise_seed(self.seed, block) if block else self.seed))
        return self._block[1]

    def __call__(self, start: int, count: int) -> torch.Tensor:
        if start + count > self.total:
            raise IndexError(f"windows {start}..{start + count} requested from a source of {self.total}")
        rows = [self._block_rows(i // self.block_size)[i % self.block_size] for i in range(start, start + count)]
        return torch.stack(rows)


# --------------------------------------------------------------------------- checkpoints


@dataclass
class Checkpoint:
    """Everything needed to continue training: logits, optimizer moments, the next step, the
    curve so far, and caller data (LEAP keeps its prior's bits and statistics there)."""

    step: int
    logits: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    curve: list[dict[str, float]]
    seconds: float
    extra: dict[str, Any]
    fingerprint: dict[str, Any]

    def save(self, path: Path) -> None:
        """Atomic: written beside the target and renamed, so a kill never leaves half a file."""
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = path.with_name(path.name + ".tmp")
        torch.save(self.__dict__, staging)
        os.replace(staging, path)

    @classmethod
    def load(cls, path: Path, fingerprint: dict[str, Any]) -> "Checkpoint | None":
        """The checkpoint at `path` if any; an error if it belongs to a different run."""
        if not path.exists():
            return None
        data = torch.load(path, map_location="cpu", weights_only=False)
        if data.get("fingerprint") != fingerprint:
            raise HarnessError(f"checkpoint {path} was written by a different run (config, sparsity, seed or model); delete it to start over")
        return cls(**data)


# --------------------------------------------------------------------------- training


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


def train_masks(
    model: nn.Module,
    masks: LearnableMasks,
    windows: WindowSource,
    config: MaskTrainingConfig,
    budget: Budget,
    target_density: float,
    seed: int,
    checkpoint_path: Path | None = None,
    resume: Checkpoint | None = None,
    fingerprint: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
    progress: bool = True,
) -> TrainingOutcome:
    """Train the logits of `masks` (installed on `model`) for `budget`; resume from `resume`.

    Loss per micro-batch, divided by grad_accum (the reference's MaskTrainer):
        CE + λ_s·|density − target| − λ_w·(1 − t/T)·Σ‖W⊙m‖/Σ‖W‖ (+ distill·KL).
    A checkpoint is written every `config.checkpoint_every` steps when `checkpoint_path` is set.
    A non-finite loss or gradient stops training with an error naming the step."""
    params = masks.parameters()
    device = params[0].device
    autocast = config.resolve(device).autocast_bf16  # the one rule for the device default
    optimizer = torch.optim.AdamW(params, lr=config.lr, betas=(0.9, config.beta2), weight_decay=0.0, fused=True)
    schedule = Schedule(budget.steps, config.warmup_steps, (config.tau_start, config.tau_end), (config.scale_start, config.scale_end))
    start, curve, seconds_before = 0, [], 0.0
    if resume is not None:
        with torch.no_grad():
            for name, theta in masks.logits.items():
                theta.copy_(resume.logits[name])
        optimizer.load_state_dict(resume.optimizer)
        start, curve, seconds_before = resume.step, list(resume.curve), resume.seconds

    begin = time.perf_counter()
    bar = tqdm(range(start, budget.steps), desc="leap", disable=not progress, initial=start, total=budget.steps)
    with _training_mode(model, config.grad_checkpointing):
        for step in bar:
            step_start = time.perf_counter()
            tau, scale = schedule.tau_at(step), schedule.scale_at(step)
            lr = config.lr * schedule.lr_factor(step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            bonus = config.weight_reg * schedule.weight_reg_factor(step)
            totals = dict.fromkeys(("loss", "ce", "kl", "density", "kept"), 0.0)
            for micro in range(budget.grad_accum):
                batch = windows((step * budget.grad_accum + micro) * budget.batch_size, budget.batch_size).to(device)
                masks.begin_forward((seed, step, micro), tau, scale)
                with _autocast(device, autocast):
                    out = model(input_ids=batch, labels=batch)
                density, kept = masks.end_forward()
                loss = out.loss.float() + config.sparse_reg * (density - target_density).abs() - bonus * kept
                if config.distill > 0:
                    with _autocast(device, autocast):
                        kl = _distillation_loss(model, masks, batch, out.logits)
                    loss = loss + config.distill * kl
                    totals["kl"] += kl.item() / budget.grad_accum
                if not torch.isfinite(loss):
                    raise HarnessError(
                        f"LEAP training diverged at step {step} (micro-batch {micro}): the loss is {loss.item()}; "
                        "check the model's weights for NaN/inf or lower leap.lr"
                    )
                (loss / budget.grad_accum).backward()
                for key, value in (("loss", loss), ("ce", out.loss), ("density", density), ("kept", kept)):
                    totals[key] += value.item() / budget.grad_accum
                del out, loss
            grad_norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
            if not torch.isfinite(grad_norm):
                raise HarnessError(f"LEAP training diverged at step {step}: the gradient norm is {grad_norm.item()}; lower leap.lr")
            if config.max_grad_norm > 0:
                torch.nn.utils.clip_grads_with_norm_(params, config.max_grad_norm, grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            point = {
                "step": step,
                **{key: round(value, 6) for key, value in totals.items()},
                "tau": round(tau, 6),
                "scale": round(scale, 4),
                "lr": lr,
                "grad_norm": round(grad_norm.item(), 6),
                "seconds": round(time.perf_counter() - step_start, 3),
            }
            if config.distill == 0:
                del point["kl"]
            curve.append(point)
            bar.set_postfix(loss=f"{totals['loss']:.3f}", ce=f"{totals['ce']:.3f}", density=f"{totals['density']:.3f}", tau=f"{tau:.2f}")
            done = step + 1
            if checkpoint_path is not None and config.checkpoint_every and done % config.checkpoint_every == 0 and done < budget.steps:
                Checkpoint(
                    step=done,
                    logits={name: theta.detach().cpu() for name, theta in masks.logits.items()},
                    optimizer=optimizer.state_dict(),
                    curve=curve,
                    seconds=seconds_before + time.perf_counter() - begin,
                    extra=extra or {},
                    fingerprint=fingerprint or {},
                ).save(checkpoint_path)
    elapsed = time.perf_counter() - begin
    steps_run = budget.steps - start
    return TrainingOutcome(
        curve=curve,
        resumed_from=start,
        seconds=seconds_before + elapsed,
        seconds_per_step=elapsed / steps_run if steps_run else 0.0,
    )
