"""LEAP's relaxed masks: one logit per weight, a relaxed-Bernoulli sample per forward, and the hard
masks read from the logits at the end.

Parameterization. Every targeted linear gets one logit θ per weight, registered on the linear as
the parameter `mask_logits` (so DDP or any optimizer sees exactly the trainable set), and its
forward becomes y = x(W ⊙ m)ᵀ + b with a fresh relaxed-Bernoulli sample per forward:

    m = σ((s·θ + L)/τ),   L = log u − log(1 − u) ~ Logistic(0, 1)

L is the difference of two Gumbel variables, so this equals channel 1 of the reference's two-class
`gumbel_softmax([0, s·θ], τ)`. The weights stay frozen; `sample_masked_weight` is one autograd
function for the mask, the masked weight and the two regularizer statistics (Σm and ‖W⊙m‖_F), with
a hand-written backward, because on CPU the step time of mask learning is mostly elementwise passes
over the weights, and fusing them keeps LEAP close to the cost of a dense fine-tuning step.

Two samplers, chosen by θ's dtype (`logit_dtype`). float32 θ (recipe paper): the formula above in
float32, one uniform per weight (`logistic_mask`). bfloat16 θ (recipe reference): the reference's
arithmetic as it runs on its GPUs (`gumbel_softmax_mask`): two Gumbel draws per weight made as
torch's CUDA `exponential_` makes them, the logits, the sum and the division by τ rounded to
bfloat16 at every op, and the two-class softmax as torch's CUDA kernel computes it. The statistics
then come out in bfloat16 as the reference's `torch.sum(mask)` and `torch.norm(mask * weight)` do
(autocast is off inside the function, as the reference samples outside it). The backward is the
same three passes in float32 for both, rounded once to θ's dtype.

Noise. Each linear draws its noise from a generator reseeded with (seed, step, sample index,
layer index), where the sample index counts the forwards of a step that get their own mask: each
sequence or each micro-batch (`sampling`, training.py). The noise is therefore a pure
function of the position in training: a resumed run sees the same masks as an uninterrupted one
without saving RNG states, and gradient checkpointing, which re-runs a layer's forward during
backward, recomputes the very same mask.

N:M. Under an N:M target the logits, the sample and the fused function stay per weight; the
function also returns Σ_g |Σ_{j∈g} m_j − N| over the groups g of M consecutive inputs of each
row, so training can hold every group to N kept weights (training.py), and the hard mask keeps
the N largest θ of every group (`hard_masks`, through `harness.masks.nm_mask`; ties, which
continuous logits practically never have, go as torch.topk breaks them). The design, and why not
MaskLLM's categorical over the C(M, N) patterns of a group, is in docs/leap.md (N:M).

Memory. Persistent: θ plus AdamW's two moments (three copies of the targeted weights in θ's
dtype). Per step: the gradient of θ and, per linear, the sampled mask (in θ's dtype) and masked
weight kept for backward (under N:M also a sign per group, 1/M of the weights); gradient
checkpointing bounds these to one decoder layer at a time. While one linear samples, the bfloat16
sampler's transient working memory peaks at about 12 bytes per weight of that linear (its two
float32 uniforms as they become bfloat16 noise), the float32 sampler's at 8 to 10 (the mask, the
float32 masked weight and its cast to a bf16 weight's dtype)."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from harness.errors import HarnessError
from harness.masks import global_lowest_masks, nm_mask
from harness.sparsity import Sparsity

LOGIT_PARAM = "mask_logits"
_UNIFORM_EPS = 2.0**-24  # u is clamped to [eps, 1 − eps]: the logistic noise stays within ±16.6
# torch's CUDA `exponential_` sets log v of its uniform v to −eps/2 of its float32 compute type for
# v ≥ 1 − eps/2 (ATen/core/TransformationHelper.h, `transformation::exponential`): no draw is 0.
_EXPONENTIAL_LOG_CEILING = -(2.0**-24)
# Mask values below this are set to exactly 0. Late in the τ anneal, σ((s·θ + L)/τ) of a pruned
# weight lands near float32's underflow, and W ⊙ m and its gradient then hold subnormal numbers,
# which x86 arithmetic handles many times slower: one 1536 × 576 masked linear's forward and
# backward took 363 ms instead of 20 ms at τ = 0.18, and two float32 SmolLM2 steps 12 s and 57 s
# instead of 4.5 s (docs/leap.md). A mask of 2⁻⁶⁴ moves no output by more than |W|·2⁻⁶⁴, far below
# float32's resolution: the same run's perplexity was unchanged (63.36) and its steps even.
_MASK_FLOOR = 2.0**-64


class MaskSample(NamedTuple):
    """One relaxed-Bernoulli sample of a linear's mask and the statistics its regularizers need."""

    masked: torch.Tensor  # W ⊙ m, in W's dtype
    mask_sum: torch.Tensor  # Σm
    kept_norm: torch.Tensor  # ‖W⊙m‖_F
    group_deviation: torch.Tensor  # Σ_g |Σ_{j∈g} m_j − N| under N:M; 0 otherwise


def in_groups(tensor: torch.Tensor, m: int) -> torch.Tensor:
    """[rows, cols] as [rows, cols/m, m]: the N:M groups of consecutive inputs (a view)."""
    return tensor.unflatten(-1, (-1, m))


def logistic_mask(logits: torch.Tensor, scale: float, tau: float, generator: torch.Generator) -> torch.Tensor:
    """σ((s·θ + L)/τ) in float32, L = logit(u) from one uniform per weight (recipe paper)."""
    mask = torch.rand(logits.shape, generator=generator, dtype=torch.float32, device=logits.device)
    return mask.logit_(eps=_UNIFORM_EPS).add_(logits, alpha=scale).div_(tau).sigmoid_()


def exponential_noise(uniform: torch.Tensor) -> torch.Tensor:
    """Exp(1) draws in bfloat16 from float32 u ~ U[0, 1), made as torch's CUDA `exponential_` makes
    them for a bfloat16 tensor: −log v of a uniform v = 1 − u in (0, 1], in float32, with log v
    capped at −2⁻²⁴ (the kernel's value for v ≥ 1 − 2⁻²⁴), rounded to bfloat16. `uniform` is
    overwritten."""
    return uniform.neg_().add_(1.0).log_().clamp_(max=_EXPONENTIAL_LOG_CEILING).neg_().to(torch.bfloat16)


def float32_reciprocal(value: float) -> float:
    """1/value as CUDA's division of a tensor by a Python scalar computes it (in float32), for it
    multiplies by this instead of dividing (ATen `div_true_kernel_cuda`)."""
    return float(np.float32(1.0) / np.float32(value))


def two_class_softmax(gap: torch.Tensor) -> torch.Tensor:
    """Channel 1 of softmax([z₀, z₁]) in bfloat16 from the float32 gap z₁ − z₀ (overwritten), with
    the arithmetic of torch's CUDA softmax (PersistentSoftmax.cuh): in float32,
    exp(z₁ − max) / Σ_c exp(z_c − max), one of whose two exponentials is exp(0) = 1 and the other
    exp(−|z₁ − z₀|)."""
    numerator = gap.clamp(max=0.0).exp_()  # exp(z₁ − max)
    return numerator.div_(gap.abs_().neg_().exp_().add_(1.0)).to(torch.bfloat16)


def gumbel_softmax_mask(logits: torch.Tensor, scale: float, tau: float, generator: torch.Generator) -> torch.Tensor:
    """Channel 1 of the reference's `F.gumbel_softmax(cat([0, θ])·s, τ)` for bfloat16 θ (recipe
    reference; patch/learnable_mask.py `create_tile_mask`), its two Exp(1) draws per weight made
    from the generator's uniforms."""
    uniforms = (2, *logits.shape)
    return gumbel_softmax_of(  # no name holds the draws, so each is freed after its last use
        logits, exponential_noise(torch.rand(uniforms, generator=generator, dtype=torch.float32, device=logits.device)), scale, tau
    )


def gumbel_softmax_of(logits: torch.Tensor, noise: torch.Tensor, scale: float, tau: float) -> torch.Tensor:
    """Channel 1 of `F.gumbel_softmax(cat([0, θ])·s, τ)` given its Exp(1) draws `noise` ([2, ...],
    bfloat16, overwritten): Gumbel g = −log E, z = (bf16(s·θ) + g)/τ rounded to bfloat16 at each op
    (channel 0's logit is 0), then the softmax; every kernel's arithmetic as on CUDA, the device
    the reference runs on."""
    noise.log_().neg_()
    noise[1].add_(logits * scale)
    noise.mul_(float32_reciprocal(tau))
    gap = noise[1].float().sub_(noise[0])
    del noise  # the caller holds no reference: freed before the softmax's float32 terms
    return two_class_softmax(gap)


_SAMPLERS = {torch.float32: logistic_mask, torch.bfloat16: gumbel_softmax_mask}  # by θ's dtype


def _sample_and_statistics(logits, weight, scale, tau, generator, nm):
    """The forward of `_RelaxedMaskedWeight`: the mask (in θ's dtype), W ⊙ m, ‖W ⊙ m‖, Σm, the group
    deviation and, under N:M, the per-group signs for backward."""
    mask = _SAMPLERS[logits.dtype](logits, scale, tau, generator)
    mask.masked_fill_(mask < _MASK_FLOOR, 0.0)  # no subnormals downstream (see _MASK_FLOOR)
    masked = weight * mask  # float32 (type promotion) for float32 θ, even for a bf16 weight
    norm = torch.linalg.vector_norm(masked)
    masked = masked.to(weight.dtype)  # the tensor F.linear saves anyway: saving it here is free
    if nm is None:
        return mask, masked, norm, mask.sum(), mask.new_zeros(()), None
    n, m = nm
    group_sums = in_groups(mask, m).sum(-1, dtype=torch.float32)  # [rows, cols/m]
    total = group_sums.sum()
    excess = group_sums.sub_(n)  # soft kept count minus N, per group
    return mask, masked, norm, total, excess.abs().sum(), excess.sign_()


class _RelaxedMaskedWeight(torch.autograd.Function):
    """`MaskSample` with m = σ((s·θ + L)/τ); the gradient flows to θ only.

    The backward is three passes over the weights: with g the gradient of W⊙m, k = s/τ, c the
    gradient of the norm divided by the norm and e_g = sign(Σ_{j∈g} m_j − N) under N:M,
    ∂/∂θ = k·(∂Σm + ∂dev·e_g + W⊙g + c·W⊙(W⊙m))·m(1 − m)."""

    @staticmethod
    def forward(ctx, logits, weight, scale, tau, generator, nm):  # noqa: D102 (autograd signature)
        with torch.autocast(logits.device.type, enabled=False):  # every op in its operands' dtype
            mask, masked, norm, total, deviation, signs = _sample_and_statistics(logits, weight, scale, tau, generator, nm)
        ctx.save_for_backward(weight, mask, masked, norm, signs)
        ctx.factor = scale / tau
        ctx.group = None if nm is None else nm[1]
        ctx.logit_dtype = logits.dtype
        ctx.set_materialize_grads(False)
        return masked, total, norm, deviation

    @staticmethod
    def backward(ctx, grad_masked, grad_sum, grad_norm, grad_deviation):  # noqa: D102
        weight, mask, masked, norm, signs = ctx.saved_tensors
        factor = ctx.factor
        shape = mask.shape
        base = (grad_sum if grad_sum is not None else mask.new_zeros(())).float() * factor
        if grad_masked is None:
            grad_masked = torch.zeros_like(mask)
        if signs is not None:  # N:M: the per-group term is constant within a group
            if grad_deviation is not None:
                base = signs.mul(grad_deviation.float() * factor).add_(base).unsqueeze(-1)
            weight, mask, masked, grad_masked = (in_groups(t, ctx.group) for t in (weight, mask, masked, grad_masked))
        grad = torch.addcmul(base, grad_masked.float(), weight, value=factor)
        if grad_norm is not None and norm > 0:
            grad.addcmul_(masked, weight, value=factor * float(grad_norm.float() / norm.float()))
        grad = torch.ops.aten.sigmoid_backward(grad, mask)  # ⊙ m(1 − m), in float32
        return grad.reshape(shape).to(ctx.logit_dtype), None, None, None, None, None


def sample_masked_weight(
    logits: torch.Tensor,
    weight: torch.Tensor,
    scale: float,
    tau: float,
    generator: torch.Generator,
    nm: tuple[int, int] | None = None,
) -> MaskSample:
    """One relaxed-Bernoulli sample, differentiable in θ; `nm` = (N, M) adds the group deviation."""
    return MaskSample(*_RelaxedMaskedWeight.apply(logits, weight, scale, tau, generator, nm))


def noise_seed(*entropy: int) -> int:
    """A 63-bit generator seed from integers such as (seed, step, micro-batch, layer)."""
    return int(np.random.SeedSequence([int(e) for e in entropy]).generate_state(2, np.uint64)[0] >> 1)


@dataclass
class SamplingState:
    """What the masked forwards of one model share: the current τ and s, where in training the
    noise comes from, the N:M pattern if any, whether to bypass the masks (dense teacher), and the
    statistics the regularizers need, recorded only while `recording` (not when a checkpointed
    layer re-runs)."""

    tau: float = 1.0
    scale: float = 1.0
    entropy: tuple[int, ...] = (0,)
    nm: tuple[int, int] | None = None
    dense: bool = False
    recording: bool = False
    mask_sums: list[torch.Tensor] = field(default_factory=list)
    kept_norms: list[torch.Tensor] = field(default_factory=list)
    group_deviations: list[torch.Tensor] = field(default_factory=list)
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
    sample = sample_masked_weight(logits, linear.weight, state.scale, state.tau, state.generator(index, logits.device), state.nm)
    if state.recording:
        state.mask_sums.append(sample.mask_sum)
        state.kept_norms.append(sample.kept_norm)
        state.group_deviations.append(sample.group_deviation)
    return F.linear(x, sample.masked, linear.bias)


@dataclass
class ForwardStats:
    """The regularizers' inputs from one masked forward, over all targeted weights."""

    density: torch.Tensor  # soft density Σm/N
    kept: torch.Tensor  # kept-weight ratio Σ‖W⊙m‖/Σ‖W‖
    group_gap: torch.Tensor | None  # N:M only: mean over groups of |Σ_g m/M − N/M|


class LearnableMasks:
    """Logits attached to the frozen linears of a model: `install` freezes every parameter of the
    model and makes the linears sample a relaxed mask; `remove` restores plain linears and the
    parameters' `requires_grad` flags. One instance per model; `nm` = (N, M) for an N:M target."""

    def __init__(
        self, model: nn.Module, linears: dict[str, nn.Linear], logits: dict[str, torch.Tensor], nm: tuple[int, int] | None = None
    ) -> None:
        if linears.keys() != logits.keys():
            raise ValueError("logits must be given for exactly the targeted linears")
        if any(theta.dtype not in _SAMPLERS for theta in logits.values()):
            raise ValueError(f"logits must be one of {', '.join(map(str, _SAMPLERS))}")
        if nm is not None:
            _check_groups(linears, *nm)
        self.model = model
        self.linears = linears
        self.logits = {name: nn.Parameter(logits[name], requires_grad=True) for name in linears}
        self.state = SamplingState(nm=nm)
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
        state.group_deviations.clear()
        state.recording = True

    def end_forward(self) -> ForwardStats:
        """The regularizers' inputs of the forward just run (group gap only under N:M)."""
        state = self.state
        state.recording = False
        if len(state.mask_sums) != len(self.linears):
            raise HarnessError(
                f"{len(state.mask_sums)} of {len(self.linears)} masked linears ran in the forward; "
                "every targeted linear must be used by the model's forward"
            )
        # Summed in float32, as the reference adds up its per-linear (bfloat16) statistics.
        density = torch.stack(state.mask_sums).float().sum() / self.numel
        kept = torch.stack(state.kept_norms).float().sum() / self.weight_norm
        group_gap = torch.stack(state.group_deviations).sum() / self.numel if state.nm is not None else None
        return ForwardStats(density, kept, group_gap)

    @contextmanager
    def dense(self) -> Iterator[None]:
        """Forwards inside see the unmasked weights (the distillation teacher shares them)."""
        self.state.dense = True
        try:
            yield
        finally:
            self.state.dense = False


def _check_groups(linears: dict[str, nn.Linear], n: int, m: int) -> None:
    for name, linear in linears.items():
        if linear.in_features % m:
            raise HarnessError(f"{n}:{m} sparsity needs input sizes divisible by {m}, but {name} has {linear.in_features}; leave it out of --targets")


# --------------------------------------------------------------------------- initialization and hard masks


def init_logits(
    keep: torch.Tensor, std: float, strength: float, generator: torch.Generator, out: torch.Tensor
) -> torch.Tensor:
    """θ ~ N(0, std²), then θ += strength·std(θ)·prior with prior = ±1 where `keep` is True/False
    (the reference's `_init_normal_` + `_apply_tile_prior_unstructured`, per matrix). Written into
    `out`, in its dtype: a bfloat16 `out` is drawn, measured and shifted in bfloat16, as the
    reference's bfloat16 logits are."""
    out.normal_(0.0, std, generator=generator)
    shift = strength * float(out.std())
    out.add_(torch.where(keep.to(out.device), shift, -shift))
    return out


def hard_masks(logits: dict[str, torch.Tensor], sparsity: Sparsity | None) -> dict[str, torch.Tensor]:
    """Boolean keep-masks from the logits: for N:M the N largest θ of every group of M inputs of
    each row; else an exact global top-k at the ratio (found matrix by matrix, with memory bounded
    by the largest matrix); or θ > 0 (the reference's threshold) when `sparsity` is None."""
    if sparsity is None:
        return {name: theta.detach() > 0 for name, theta in logits.items()}
    if sparsity.is_nm:
        return {name: nm_mask(theta.detach(), sparsity.n, sparsity.m) for name, theta in logits.items()}
    return global_lowest_masks(logits, sparsity.ratio)


def pack_mask(keep: torch.Tensor) -> np.ndarray:
    """A boolean mask as bits (one bit a weight), e.g. the prior kept for statistics."""
    return np.packbits(keep.flatten().cpu().numpy())


def unpack_mask(bits: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(np.unpackbits(bits, count=like.numel()).astype(bool)).view(like.shape).to(like.device)
