"""LEAP on tiny random Llamas: the relaxed mask and its hand-written gradient, the bfloat16
sampler against the authors' arithmetic, schedules, exact final sparsity, training beating its prior
mask, one mask per sequence, bit-exact resume, the NaN guard, gradient checkpointing, distillation,
refit, N:M, the recipes and the config. Training data are token ids made here."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.optim.optimizer import register_optimizer_step_pre_hook

from harness.config import build_config
from harness.errors import HarnessError
from harness.methods.leap import pruner as leap_pruner
from harness.methods.leap import relaxed_mask
from harness.methods.leap.checkpoint import Checkpoint
from harness.methods.leap.config import RECIPES, SMALL_BUDGET_MAX_STEPS, Budget
from harness.methods.leap.relaxed_mask import (
    LOGIT_PARAM,
    LearnableMasks,
    gumbel_softmax_mask,
    hard_masks,
    in_groups,
    init_logits,
    noise_seed,
    pack_mask,
    sample_masked_weight,
    unpack_mask,
)
from harness.masks import prune_count
from harness.methods.leap import CHECKPOINT_FILE, LEAPConfig, LEAPPruner
from harness.methods.leap.schedules import Schedule
from harness.methods.leap.training import subsample_curve, train_masks
from harness.methods.leap.windows import BlockWindows
from harness.methods.magnitude import MagnitudePruner
from harness.pruner import PruneContext
from harness.sparsity import Sparsity
from harness.targets import count_zeros, target_linears
from tests.conftest import tiny_llama

VOCAB = 256


def markov_windows(count: int, seqlen: int, seed: int = 0) -> torch.Tensor:
    """Token sequences of a fixed random successor table: learnable, unlike uniform noise."""
    g = torch.Generator().manual_seed(1234)
    successor = torch.randperm(VOCAB, generator=g)
    rows = torch.empty(count, seqlen, dtype=torch.long)
    rows[:, 0] = torch.randint(0, VOCAB, (count,), generator=torch.Generator().manual_seed(seed))
    for t in range(1, seqlen):
        rows[:, t] = successor[rows[:, t - 1]]
    return rows


class MarkovLEAP(LEAPPruner):
    """LEAP trained on `markov_windows` instead of C4."""

    def training_windows(self, ctx, budget):
        return BlockWindows(lambda count, seed: markov_windows(count, budget.seqlen, seed), budget.sequences, ctx.seed, block_size=16)


class Interrupted(Exception):
    pass


def interrupted(source, stop: int):
    """`source` that fails (as a kill would) when asked for window `stop` or later."""

    def windows(start: int, count: int) -> torch.Tensor:
        if start + count > stop:
            raise Interrupted
        return source(start, count)

    return windows


class InterruptedLEAP(MarkovLEAP):
    """Killed when step 5 asks for its data (SMALL's batch is 2 sequences)."""

    def training_windows(self, ctx, budget):
        return interrupted(super().training_windows(ctx, budget), stop=5 * 2)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny matrices: one thread is several times faster than two on a shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def context(tmp_path: Path | None = None, seed: int = 0) -> PruneContext:
    calibration = markov_windows(4, 32, seed=99)
    return PruneContext(calibration=calibration, seed=seed, workdir=tmp_path, progress=False)


SMALL = dict(prior="magnitude", steps=6, batch_size=2, seqlen=16, warmup_steps=1)
MICRO_BATCHES = {**SMALL, "steps": 2, "grad_accum": 2, "batch_size": 3}  # steps of 2 micro-batches of 3 sequences


def resolved(cls: type[LEAPPruner], **settings) -> LEAPPruner:
    """A pruner whose config is resolved for the CPU, as the plan resolves it before its checks."""
    return cls(LEAPConfig(**settings).resolve(torch.device("cpu")))


def attach(model, seed: int = 0, dtype: torch.dtype = torch.float32) -> tuple[dict, LearnableMasks]:
    linears = target_linears(model)
    g = torch.Generator().manual_seed(seed)
    logits = {
        name: init_logits(linear.weight.abs() > linear.weight.abs().median(), 0.014, 3.0, g, torch.empty(linear.weight.shape, dtype=dtype))
        for name, linear in linears.items()
    }
    return linears, LearnableMasks(model, linears, logits)


def reference_mask_terms(theta, weight, scale, tau, seed, nm):
    """The same sample written with plain autograd ops (L = log u − log(1 − u))."""
    u = torch.rand(theta.shape, generator=torch.Generator().manual_seed(seed)).clamp(2.0**-24, 1 - 2.0**-24)
    mask = torch.sigmoid((scale * theta + torch.log(u) - torch.log1p(-u)) / tau)
    masked = weight * mask
    deviation = (in_groups(mask, nm[1]).sum(-1) - nm[0]).abs().sum() if nm else torch.zeros(())
    return masked, mask.sum(), torch.linalg.vector_norm(masked), deviation


def authors_mask_terms(theta, weight, scale, tau, seed):
    """The authors' sample and statistics with plain bfloat16 autograd ops, on the uniforms our
    sampler draws: channel 1 of `F.gumbel_softmax(cat([0, θ])·s, τ)` (patch/learnable_mask.py
    `create_tile_mask`; the body of torch's gumbel_softmax), then W ⊙ m, torch.sum(mask) and
    torch.norm(mask * weight) (patch/regularizers.py). The three kernels whose CPU arithmetic
    differs from CUDA's, where the authors ran, give CUDA's values: exponential_ (v = 1 − u in
    (0, 1], log v set to −2⁻²⁴ where v ≥ 1 − 2⁻²⁴, −log v in float32, then bfloat16), the division
    by the Python scalar τ (times 1/τ in float32) and the softmax (exp(z − max)/Σ in float32, its
    gradient that of torch's bfloat16 softmax, which reads the bfloat16 output)."""
    u = torch.rand((2, *theta.shape), generator=torch.Generator().manual_seed(seed))
    v = 1 - u
    exponentials = (-torch.where(v >= 1 - 2.0**-24, torch.tensor(-(2.0**-24)), v.log())).bfloat16()
    gumbels = -exponentials.movedim(0, -1).log()
    logits = torch.cat([torch.zeros_like(theta).unsqueeze(-1), theta.unsqueeze(-1)], dim=-1) * scale
    z = (logits + gumbels) * float(np.float32(1) / np.float32(tau))
    terms = (z.detach().float() - z.detach().float().amax(-1, keepdim=True)).exp()
    softmax = z.softmax(-1)
    mask = (softmax + ((terms / terms.sum(-1, keepdim=True)).bfloat16() - softmax).detach())[..., 1]  # CUDA's values
    masked = weight * mask
    return mask, masked, torch.sum(mask), torch.norm(masked)


# --------------------------------------------------------------------------- the relaxed mask


@pytest.mark.parametrize("nm", [None, (2, 4), (1, 8)])
def test_fused_mask_matches_plain_autograd_values_and_gradients(nm):
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(24, 40, generator=g)
    upstream = torch.randn(24, 40, generator=g)
    grads = []
    for fused in (True, False):
        theta = (0.05 * torch.randn(24, 40, generator=torch.Generator().manual_seed(1))).requires_grad_()
        if fused:
            masked, total, norm, deviation = sample_masked_weight(theta, weight, 60.0, 1.5, torch.Generator().manual_seed(7), nm)
        else:
            masked, total, norm, deviation = reference_mask_terms(theta, weight, 60.0, 1.5, 7, nm)
        ((masked * upstream).sum() + 0.3 * total - 2.0 * norm + 0.7 * deviation).backward()
        grads.append((masked.detach(), total.detach(), norm.detach(), deviation.detach(), theta.grad))
    for fused_value, plain_value in zip(*grads):
        torch.testing.assert_close(fused_value, plain_value, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("scale,tau", [(60.0, 1.5), (330.0, 0.177)])  # early, and late in the anneal (masks below the floor)
def test_bfloat16_sample_is_the_authors_gumbel_softmax(scale, tau):
    """Compared with `authors_mask_terms` on the same uniforms: the sampler's mask bit for bit; the
    fused function's W ⊙ m bit for bit, with the mask values below 2⁻⁶⁴ set to 0 (`_MASK_FLOOR`);
    Σm and ‖W ⊙ m‖ (bfloat16 scalars) to one bfloat16 rounding (their sums run in another order);
    the gradient of θ, which the fused backward computes in float32 and rounds once where the plain
    chain rounds at every op, within 1% plus 0.1% of the largest."""
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(24, 40, generator=g).bfloat16()
    upstream = torch.randn(24, 40, generator=g)
    theta = (0.05 * torch.randn(24, 40, generator=g)).bfloat16()
    mask = gumbel_softmax_mask(theta, scale, tau, torch.Generator().manual_seed(7))
    fused_theta, plain_theta = theta.clone().requires_grad_(), theta.clone().requires_grad_()
    fused = sample_masked_weight(fused_theta, weight, scale, tau, torch.Generator().manual_seed(7))
    plain_mask, plain_masked, plain_sum, plain_norm = authors_mask_terms(plain_theta, weight, scale, tau, 7)
    assert mask.dtype == torch.bfloat16 and torch.equal(mask, plain_mask.detach())
    floored = plain_mask.detach().masked_fill(plain_mask.detach() < 2.0**-64, 0)
    assert torch.equal(fused.masked, weight * floored)
    assert (scale < 100) or (plain_mask < 2.0**-64).any()  # the late case does reach the floor
    for mine, theirs in ((fused.mask_sum, plain_sum), (fused.kept_norm, plain_norm)):
        assert mine.dtype == theirs.dtype == torch.bfloat16
        torch.testing.assert_close(mine.float(), theirs.float(), rtol=2.0**-8, atol=0)
    for masked, total, norm in ((fused.masked, fused.mask_sum, fused.kept_norm), (plain_masked, plain_sum, plain_norm)):
        ((masked.float() * upstream).sum() + 0.3 * total.float() - 2.0 * norm.float()).backward()
    assert fused_theta.grad.dtype == torch.bfloat16
    torch.testing.assert_close(fused_theta.grad.float(), plain_theta.grad.float(), rtol=0.01, atol=1e-3 * plain_theta.grad.float().abs().max().item())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="compares with torch's CUDA kernels, the authors' device")
def test_bfloat16_arithmetic_is_that_of_torch_cuda_gumbel_softmax():
    """On CUDA, given the Exp(1) draws F.gumbel_softmax makes (the same seed, the same
    exponential_ call), the sampler's arithmetic gives its channel 1 bit for bit."""
    device = torch.device("cuda")
    theta = (0.05 * torch.randn(256, 512, generator=torch.Generator().manual_seed(0))).bfloat16().to(device)
    for scale, tau in ((25.0, 4.0), (187.5, 2.025), (330.0, 0.177)):
        logits = torch.cat([torch.zeros_like(theta).unsqueeze(-1), theta.unsqueeze(-1)], dim=-1) * scale
        torch.cuda.manual_seed(1)
        expected = F.gumbel_softmax(logits, tau=tau)[..., 1]
        torch.cuda.manual_seed(1)
        noise = torch.empty_like(logits).exponential_().movedim(-1, 0)
        assert torch.equal(relaxed_mask.gumbel_softmax_of(theta, noise, scale, tau), expected), (scale, tau)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_mask_noise_is_logistic_so_keep_probability_is_sigmoid_of_scaled_logit(dtype):
    """In bfloat16 the noise is the difference of two Gumbel draws, with the same law."""
    theta = torch.tensor([-0.02, 0.0, 0.01, 0.03], dtype=dtype).repeat_interleave(50_000).view(4, -1)
    mask = sample_masked_weight(theta, torch.ones_like(theta), 25.0, 0.05, torch.Generator().manual_seed(3)).masked
    kept = (mask > 0.5).float().mean(dim=1)
    torch.testing.assert_close(kept, torch.sigmoid(25.0 * theta[:, 0].float()), atol=0.01, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_late_anneal_masks_hold_no_subnormal_numbers(dtype):
    """At τ ≈ 0.18 and s ≈ 330 a pruned weight's σ((s·θ + L)/τ) nears float32's underflow (and
    bfloat16's, the same range); the subnormals it would put into W ⊙ m and its gradient slow CPU
    matmuls about 100×."""
    theta = torch.full((64, 512), -0.05, dtype=dtype).requires_grad_()
    weight = torch.full((64, 512), 0.05, dtype=dtype)
    masked, _, norm, _ = sample_masked_weight(theta, weight, 330.0, 0.177, torch.Generator().manual_seed(0))
    (masked.sum() + norm).backward()
    tiny = torch.finfo(torch.float32).tiny
    for values in (masked, theta.grad):
        assert not ((values != 0) & (values.abs() < tiny)).any()
    assert (masked == 0).float().mean() > 0.5  # the regime is hit: these weights are off


def test_gradients_reach_the_logits_and_not_the_weights(tiny_model):
    linears, masks = attach(tiny_model)
    ids = markov_windows(2, 16)
    with masks.installed():
        masks.begin_forward((0, 0, 0), tau=2.0, scale=50.0)
        loss = tiny_model(input_ids=ids, labels=ids).loss
        stats = masks.end_forward()
        (loss + stats.density - stats.kept).backward()
        assert [n for n, p in tiny_model.named_parameters() if p.requires_grad] == [f"{n}.{LOGIT_PARAM}" for n in linears]
    for name in linears:
        grad = masks.logits[name].grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name
    assert all(p.grad is None for p in tiny_model.parameters())


def test_install_and_remove_leave_a_plain_model(tiny_model):
    before = {n: p.requires_grad for n, p in tiny_model.named_parameters()}
    ids = markov_windows(1, 16)
    dense_logits = tiny_model(input_ids=ids).logits
    linears, masks = attach(tiny_model)
    with masks.installed():
        assert sum(LOGIT_PARAM in n for n, _ in tiny_model.named_parameters()) == len(linears)
        masks.begin_forward((0,), 1.0, 1.0)
        assert not torch.allclose(tiny_model(input_ids=ids).logits, dense_logits)
        with masks.dense():
            torch.testing.assert_close(tiny_model(input_ids=ids).logits, dense_logits)
    assert {n: p.requires_grad for n, p in tiny_model.named_parameters()} == before
    assert all("forward" not in linear.__dict__ for linear in linears.values())
    torch.testing.assert_close(tiny_model(input_ids=ids).logits, dense_logits)


def test_noise_depends_only_on_the_position_in_training():
    assert noise_seed(0, 5, 1, 3) == noise_seed(0, 5, 1, 3)
    assert len({noise_seed(0, 5, 1, i) for i in range(50)} | {noise_seed(1, 5, 1, 3), noise_seed(0, 6, 1, 3)}) == 52


# --------------------------------------------------------------------------- schedules and init


def test_schedules_hit_their_endpoints():
    schedule = Schedule(steps=40, warmup_steps=5, tau=(4.0, 0.05), scale=(25.0, 350.0), end="last-step")
    assert schedule.tau_at(0) == 4.0 and schedule.tau_at(39) == pytest.approx(0.05)
    assert schedule.scale_at(0) == 25.0 and schedule.scale_at(39) == pytest.approx(350.0)
    taus = [schedule.tau_at(s) for s in range(40)]
    assert all(a > b for a, b in zip(taus, taus[1:]))
    assert [schedule.lr_factor(s) for s in range(6)] == pytest.approx([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    assert schedule.lr_factor(39) == pytest.approx(0.5 * (1 + math.cos(math.pi * 34 / 35)))
    assert schedule.weight_reg_factor(0) == 1.0 and schedule.weight_reg_factor(39) == pytest.approx(1 / 40)


def test_reference_schedule_follows_t_over_T_and_never_reaches_its_end():
    """The authors' controller: start + (end − start)·t/T at step t = 0 … T − 1."""
    schedule = Schedule(steps=4, warmup_steps=0, tau=(4.0, 0.05), scale=(25.0, 350.0), end="t/T")
    assert [schedule.tau_at(t) for t in range(4)] == pytest.approx([4.0, 3.0125, 2.025, 1.0375])
    assert [schedule.scale_at(t) for t in range(4)] == pytest.approx([25.0, 106.25, 187.5, 268.75])
    assert Schedule(4, 0, (4.0, 0.05), (25.0, 350.0), "last-step").tau_at(3) == pytest.approx(0.05)
    with pytest.raises(ValueError, match="resolve the config"):
        Schedule(4, 0, (4.0, 0.05), (25.0, 350.0), None)


def test_init_shifts_logits_by_three_standard_deviations_toward_the_prior():
    keep = torch.rand(300, 400, generator=torch.Generator().manual_seed(0)) > 0.5
    theta = init_logits(keep, 0.014, 3.0, torch.Generator().manual_seed(1), torch.empty(300, 400))
    assert theta[keep].mean() == pytest.approx(0.042, rel=0.02)
    assert theta[~keep].mean() == pytest.approx(-0.042, rel=0.02)
    assert theta[keep].std() == pytest.approx(0.014, rel=0.02)
    assert (theta > 0).eq(keep).float().mean() > 0.997  # a weight crosses 0 with p = 0.13% (3σ)


def test_prior_mask_bits_round_trip():
    keep = torch.rand(7, 13, generator=torch.Generator().manual_seed(0)) > 0.3
    assert torch.equal(unpack_mask(pack_mask(keep), keep), keep)


@pytest.mark.parametrize("ratio", [0.3, 0.5, 0.6, 0.77])
def test_hard_topk_mask_is_exact_even_with_ties(ratio):
    logits = {"a": torch.zeros(10, 7), "b": torch.randn(5, 9).round()}
    keep = hard_masks(logits, Sparsity(ratio))
    assert sum(int((~k).sum()) for k in keep.values()) == prune_count(115, ratio)
    threshold = hard_masks(logits, None)
    assert all(torch.equal(threshold[n], logits[n] > 0) for n in logits)


def test_hard_topk_of_bfloat16_logits_is_exact_and_that_of_their_float32_values():
    """bfloat16 logits tie often; their float32 values are exact, so the selection is the float32
    one: exact, ties dropped in matrix order, then index order."""
    g = torch.Generator().manual_seed(0)
    logits = {name: (0.042 * torch.randn(64, 48, generator=g)).bfloat16() for name in ("a", "b")}
    assert sum(t.unique().numel() for t in logits.values()) < 0.5 * 2 * 64 * 48  # many ties
    keep = hard_masks(logits, Sparsity(0.5))
    assert sum(int((~k).sum()) for k in keep.values()) == 64 * 48
    as_float = hard_masks({name: t.float() for name, t in logits.items()}, Sparsity(0.5))
    assert all(torch.equal(keep[n], as_float[n]) for n in logits)


# --------------------------------------------------------------------------- the pruner


@pytest.mark.parametrize("ratio", [0.5, 0.6, 0.37])
def test_final_mask_has_exactly_the_target_sparsity(ratio):
    model = tiny_llama()
    result = MarkovLEAP(**SMALL).run(model, Sparsity(ratio), context())
    total = sum(linear.weight.numel() for linear in target_linears(model).values())
    assert result.realized_sparsity == prune_count(total, ratio) / total
    assert result.stats["tokens_trained"] == 6 * 2 * 16
    assert len(result.stats["train_curve"]) == 6
    assert LOGIT_PARAM not in str([n for n, _ in model.named_parameters()])


@pytest.mark.parametrize("autocast", [False, True])
def test_bfloat16_model_trains_in_float32_logits_and_hits_the_sparsity(autocast):
    """The GPU dtype on CPU: bf16 weights stay frozen, logits and their moments stay float32."""
    model = tiny_llama().to(torch.bfloat16)
    result = MarkovLEAP(**SMALL, autocast_bf16=autocast).run(model, Sparsity(0.5), context())
    assert all(math.isfinite(point["loss"]) for point in result.stats["train_curve"])
    assert result.realized_sparsity == pytest.approx(0.5, abs=1e-3)
    assert all(linear.weight.dtype == torch.bfloat16 for linear in target_linears(model).values())


def test_threshold_mode_reports_its_realized_sparsity():
    pruner = resolved(MarkovLEAP, **SMALL, final_mask="threshold")
    assert not pruner.exact_sparsity() and resolved(MarkovLEAP, **SMALL).exact_sparsity()
    model = tiny_llama()
    result = pruner.run(model, Sparsity(0.5), context())
    assert 0.4 < result.realized_sparsity < 0.6
    assert result.realized_sparsity == count_zeros(target_linears(model))[1]


def test_reference_recipe_trains_bfloat16_logits_and_keeps_those_above_zero(monkeypatch):
    """recipe=reference: bfloat16 θ, τ and s at t/T, and the final mask θ > 0, whose sparsity is
    reported as realized."""
    final = {}

    def recording(logits, sparsity):
        final.update(logits={name: theta.detach().clone() for name, theta in logits.items()}, sparsity=sparsity)
        return hard_masks(logits, sparsity)

    monkeypatch.setattr(leap_pruner, "hard_masks", recording)
    pruner = resolved(MarkovLEAP, **SMALL, recipe="reference")
    assert not pruner.exact_sparsity()
    model = tiny_llama()
    result = pruner.run(model, Sparsity(0.5), context())
    assert final["sparsity"] is None and {theta.dtype for theta in final["logits"].values()} == {torch.bfloat16}
    linears = target_linears(model)
    assert all(torch.equal(linear.weight != 0, final["logits"][name] > 0) for name, linear in linears.items())
    pruned = sum(int((theta <= 0).sum()) for theta in final["logits"].values())
    assert result.realized_sparsity == pruned / sum(linear.weight.numel() for linear in linears.values())
    assert 0.4 < result.realized_sparsity < 0.6 and result.stats["final_mask"] == "threshold"
    assert [point["tau"] for point in result.stats["train_curve"]] == [round(4.0 + (0.05 - 4.0) * t / 6, 6) for t in range(6)]


def test_prior_dense_weights_restored_and_logits_follow_the_prior():
    model = tiny_llama()
    dense = {n: l.weight.detach().clone() for n, l in target_linears(model).items()}
    linears = target_linears(model)
    logits, extra = resolved(LEAPPruner, **SMALL)._logits_from_prior(model, linears, Sparsity(0.5), context())
    pruned = tiny_llama()
    MagnitudePruner().run(pruned, Sparsity(0.5), context())
    for (name, linear), prior_linear in zip(linears.items(), target_linears(pruned).values()):
        assert torch.equal(linear.weight, dense[name])
        assert torch.equal(unpack_mask(extra["prior_bits"][name], linear.weight), prior_linear.weight != 0)
        assert (logits[name] > 0).eq(prior_linear.weight != 0).float().mean() > 0.99
    assert extra["prior"]["realized_sparsity"] == pytest.approx(0.5)


def kept_per_group(model, m: int) -> dict[str, torch.Tensor]:
    return {name: in_groups(linear.weight != 0, m).sum(-1) for name, linear in target_linears(model).items()}


def _training_ce(model, windows: torch.Tensor) -> float:
    with torch.no_grad():
        return float(model(input_ids=windows, labels=windows).loss)


@pytest.mark.parametrize("pattern", ["0.5", "2:4"])
def test_short_training_lowers_the_training_loss_below_its_prior_mask(pattern):
    """Weights scaled ×5 so that the random model's predictions depend on which weights it keeps.
    Under 2:4 the per-group relaxation learns too, and every group keeps exactly 2."""
    sparsity = Sparsity.parse(pattern)
    models = {}
    for method in ("prior", "leap"):
        models[method] = tiny_llama()
        with torch.no_grad():
            for linear in [*target_linears(models[method]).values(), models[method].lm_head]:
                linear.weight.mul_(5)
    leap = MarkovLEAP(prior="magnitude", steps=30, batch_size=4, seqlen=32, warmup_steps=3, lr=1e-2, recipe="paper")
    data = leap.training_windows(context(), Budget(30, 4, 1, 32))(0, 120)
    MagnitudePruner().run(models["prior"], sparsity, context())
    result = leap.run(models["leap"], sparsity, context())
    assert result.realized_sparsity == pytest.approx(0.5, abs=1e-6)
    if sparsity.is_nm:
        assert all((kept == 2).all() for kept in kept_per_group(models["leap"], 4).values())
    assert result.stats["mask_changed"] > 0.05
    assert _training_ce(models["leap"], data) < _training_ce(models["prior"], data) - 0.5


@pytest.mark.parametrize("pattern,recipe", [("0.5", "paper"), ("2:4", "paper"), ("0.5", "reference")])
def test_interrupted_run_resumes_to_the_same_weights(tmp_path, pattern, recipe):
    sparsity = Sparsity.parse(pattern)
    settings = {**SMALL, "checkpoint_every": 2, "recipe": recipe}
    uninterrupted = tiny_llama()
    MarkovLEAP(**settings).run(uninterrupted, sparsity, context(tmp_path / "a"))
    assert not (tmp_path / "a" / CHECKPOINT_FILE).exists()

    with pytest.raises(Interrupted):
        InterruptedLEAP(**settings).run(tiny_llama(), sparsity, context(tmp_path / "b"))
    assert torch.load(tmp_path / "b" / CHECKPOINT_FILE, weights_only=False)["step"] == 4
    model = tiny_llama()
    result = MarkovLEAP(**settings).run(model, sparsity, context(tmp_path / "b"))
    assert result.stats["resumed_from_step"] == 4
    assert result.stats["prior_realized_sparsity"] == pytest.approx(0.5)
    for a, b in zip(target_linears(uninterrupted).values(), target_linears(model).values()):
        assert torch.equal(a.weight, b.weight)


def train_logits(config, windows, init_seed=0, seed=0, path=None, resume=None):
    """`train_masks` of a fresh tiny Llama with `attach`ed logits of the config's dtype: (trained
    logits, curve)."""
    model = tiny_llama()
    _, masks = attach(model, init_seed, config.logit_torch_dtype)
    with masks.installed():
        outcome = train_masks(model, masks, windows, config, 0.5, seed, path, resume, {"run": 1}, progress=False)
    return masks.logits, outcome.curve


def tensor_windows(config) -> tuple[torch.Tensor, object]:
    """The budget's Markov windows and a window source over them."""
    budget = Budget.of(config)
    data = markov_windows(budget.sequences, budget.seqlen)
    return data, lambda start, count: data[start : start + count]


@pytest.mark.parametrize("sampling,recipe", [("sequence", "paper"), ("micro-batch", "paper"), ("sequence", "reference")])
def test_resumed_training_gives_the_same_logits(tmp_path, sampling, recipe):
    """Bit for bit, also with the reference's bfloat16 logits and AdamW moments."""
    config = LEAPConfig(**SMALL, checkpoint_every=3, sampling=sampling, recipe=recipe).resolve(torch.device("cpu"))
    _, source = tensor_windows(config)
    path = tmp_path / "ckpt.pt"
    logits_a, curve_a = train_logits(config, source, path=path)
    with pytest.raises(Interrupted):
        train_logits(config, interrupted(source, stop=4 * 2), path=path)
    resume = Checkpoint.load(path, {"run": 1})
    assert resume.step == 3
    moments = [tensor for state in resume.optimizer["state"].values() for key, tensor in state.items() if key != "step"]
    assert {t.dtype for t in [*resume.logits.values(), *moments]} == {config.logit_torch_dtype}
    logits_b, curve_b = train_logits(config, source, init_seed=5, path=path, resume=resume)  # all state from the checkpoint
    assert [drop_time(p) for p in curve_a] == [drop_time(p) for p in curve_b]
    assert all(torch.equal(logits_a[n], logits_b[n]) for n in logits_a)


def drop_time(point: dict) -> dict:
    return {key: value for key, value in point.items() if key != "seconds"}


def test_checkpoint_of_another_run_is_refused(tmp_path):
    Checkpoint(1, {}, {}, [], 0.0, {}, {"seed": 0}).save(tmp_path / "c.pt")
    with pytest.raises(HarnessError, match="different run"):
        Checkpoint.load(tmp_path / "c.pt", {"seed": 1})


def test_nan_loss_stops_with_the_step_named():
    model = tiny_llama()
    with torch.no_grad():
        target_linears(model)["model.layers.1.mlp.down_proj"].weight[0, 0] = float("nan")
    with pytest.raises(HarnessError, match="diverged at step 0"):
        MarkovLEAP(**SMALL).run(model, Sparsity(0.5), context())


def test_gradient_checkpointing_gives_the_same_gradients():
    """Checkpointed layers re-run their forward in backward: the same noise must come back and
    the regularizer statistics must not be recorded twice."""
    ids = markov_windows(2, 16)
    grads = []
    for checkpointing in (False, True):
        model = tiny_llama()
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()
        _, masks = attach(model)
        with masks.installed():
            masks.begin_forward((0, 1, 0), tau=3.0, scale=40.0)
            loss = model(input_ids=ids, labels=ids).loss
            stats = masks.end_forward()
            (loss + 7 * stats.density - stats.kept).backward()
            assert len(masks.state.mask_sums) == len(masks.linears)
        grads.append([t.grad for t in masks.logits.values()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


def test_training_with_checkpointing_leaves_it_off():
    model = tiny_llama()
    MarkovLEAP(**SMALL, grad_checkpointing=True).run(model, Sparsity(0.5), context())
    assert not model.is_gradient_checkpointing and not model.training


def test_distillation_adds_a_kl_term_against_the_dense_model():
    model = tiny_llama()
    result = MarkovLEAP(**SMALL, distill=1.0).run(model, Sparsity(0.5), context())
    curve = result.stats["train_curve"]
    assert all(point["kl"] > 0 for point in curve)
    assert "kl" not in MarkovLEAP(**SMALL).run(tiny_llama(), Sparsity(0.5), context()).stats["train_curve"][0]


def test_refit_keeps_the_mask_and_reduces_output_error():
    dense = tiny_llama()
    calibration = context().calibration
    models = {}
    for refit in (False, True):
        models[refit] = tiny_llama()
        result = MarkovLEAP(**SMALL, refit=refit).run(models[refit], Sparsity(0.5), context())
        assert result.realized_sparsity == pytest.approx(0.5, abs=1e-6)
        assert ("refit" in result.stats) == refit
    for a, b in zip(target_linears(models[False]).values(), target_linears(models[True]).values()):
        assert torch.equal(a.weight != 0, b.weight != 0)
        assert not torch.equal(a.weight, b.weight)
    with torch.no_grad():
        reference = dense(input_ids=calibration).logits
        error = {refit: float((m(input_ids=calibration).logits - reference).square().mean()) for refit, m in models.items()}
    assert error[True] < error[False]


# --------------------------------------------------------------------------- one mask sample per sequence


def record_forwards(monkeypatch, model) -> tuple[list[torch.Tensor], list[int]]:
    """Filled during training: the masked weight of the first targeted linear at every forward,
    and the number of sequences in every forward of the model."""
    first = next(iter(target_linears(model).values())).weight
    masked, rows = [], []
    sample = relaxed_mask.sample_masked_weight

    def recording(logits, weight, *args):
        result = sample(logits, weight, *args)
        if weight is first:
            masked.append(result.masked.detach().clone())
        return result

    monkeypatch.setattr(relaxed_mask, "sample_masked_weight", recording)
    model.register_forward_pre_hook(lambda module, args, kwargs: rows.append(len(kwargs["input_ids"])), with_kwargs=True)
    return masked, rows


def sampled_masks(monkeypatch, config, source, seed: int) -> tuple[list[torch.Tensor], list[int]]:
    model = tiny_llama()
    _, masks = attach(model)
    recorded = record_forwards(monkeypatch, model)
    with masks.installed():
        train_masks(model, masks, source, config, 0.5, seed, progress=False)
    return recorded


@pytest.mark.parametrize("sampling,rows", [("sequence", 1), ("micro-batch", 3)])
def test_each_sequence_gets_its_own_mask_unless_sampling_per_micro_batch(monkeypatch, sampling, rows):
    config = LEAPConfig(**MICRO_BATCHES, sampling=sampling).resolve(torch.device("cpu"))
    _, source = tensor_windows(config)
    masked, forward_rows = sampled_masks(monkeypatch, config, source, seed=0)
    assert forward_rows == [rows] * (2 * 2 * 3 // rows)  # a forward per sequence, or one per micro-batch
    assert len(masked) == len(forward_rows)  # so the sequences of a forward share its one mask
    assert all(not torch.equal(a, b) for i, a in enumerate(masked) for b in masked[i + 1 :])
    again, _ = sampled_masks(monkeypatch, config, source, seed=0)
    assert all(torch.equal(a, b) for a, b in zip(masked, again, strict=True))
    other_seed, _ = sampled_masks(monkeypatch, config, source, seed=1)
    assert not any(torch.equal(a, b) for a, b in zip(masked, other_seed, strict=True))


def first_step_gradients(config, source) -> tuple[list[torch.Tensor], float]:
    """The accumulated gradient of the logits at the first optimizer step of `train_masks`, and
    the step's logged loss."""
    grads = []

    def capture(optimizer, args, kwargs):
        if not grads:
            grads.extend(p.grad.clone() for group in optimizer.param_groups for p in group["params"])

    handle = register_optimizer_step_pre_hook(capture)
    try:
        _, curve = train_logits(config, source)
    finally:
        handle.remove()
    return grads, curve[0]["loss"]


@pytest.mark.parametrize("sampling", ["sequence", "micro-batch"])
def test_step_loss_and_gradient_are_the_mean_over_sequences(sampling):
    """Each sequence's loss under the mask it saw (its own, or its micro-batch's), averaged over
    the step's sequences: CE + λ_s·|density − target| − λ_w·kept at step 0."""
    config = LEAPConfig(**MICRO_BATCHES, max_grad_norm=0.0, sampling=sampling).resolve(torch.device("cpu"))
    data, source = tensor_windows(config)
    grads, logged_loss = first_step_gradients(config, source)

    model = tiny_llama()
    _, masks = attach(model)
    model.train()
    losses = []
    with masks.installed():
        for sequence in range(6):
            masks.begin_forward((0, 0, sequence if sampling == "sequence" else sequence // 3), config.tau_start, config.scale_start)
            ids = data[sequence : sequence + 1]
            ce = model(input_ids=ids, labels=ids).loss
            stats = masks.end_forward()
            loss = ce + config.sparse_reg * (stats.density - 0.5).abs() - config.weight_reg * stats.kept
            (loss / 6).backward()
            losses.append(loss.item())
    assert logged_loss == pytest.approx(sum(losses) / 6, abs=1e-5)
    for grad, theta in zip(grads, masks.logits.values(), strict=True):
        torch.testing.assert_close(grad, theta.grad, rtol=1e-4, atol=1e-9)


# --------------------------------------------------------------------------- N:M


@pytest.mark.parametrize("pattern", ["2:4", "1:4", "4:8"])
def test_nm_mask_keeps_exactly_n_in_every_group_of_every_matrix(pattern):
    sparsity = Sparsity.parse(pattern)
    model = tiny_llama()
    result = MarkovLEAP(**SMALL).run(model, sparsity, context())
    for name, kept in kept_per_group(model, sparsity.m).items():
        assert (kept == sparsity.n).all(), name
    assert result.realized_sparsity == sparsity.ratio
    assert all(0 <= point["group_gap"] < 1 for point in result.stats["train_curve"])


def test_nm_masks_are_deterministic_per_seed():
    masks = []
    for seed in (0, 0, 1):
        model = tiny_llama()
        MarkovLEAP(**SMALL).run(model, Sparsity.parse("2:4"), context(seed=seed))
        masks.append([linear.weight != 0 for linear in target_linears(model).values()])
    assert all(torch.equal(a, b) for a, b in zip(masks[0], masks[1]))
    assert not all(torch.equal(a, c) for a, c in zip(masks[0], masks[2]))


def test_nm_logits_start_from_the_wanda_nm_mask():
    model = tiny_llama()
    linears = target_linears(model)
    logits, extra = resolved(LEAPPruner, **{**SMALL, "prior": "wanda"})._logits_from_prior(model, linears, Sparsity.parse("2:4"), context())
    for name, linear in linears.items():
        prior = unpack_mask(extra["prior_bits"][name], linear.weight)
        assert (in_groups(prior, 4).sum(-1) == 2).all(), name
        assert (logits[name] > 0).eq(prior).float().mean() > 0.99


def test_hard_nm_mask_keeps_the_largest_logits_of_every_group():
    theta = torch.randn(6, 16, generator=torch.Generator().manual_seed(0))
    keep = in_groups(hard_masks({"a": theta}, Sparsity.parse("2:4"))["a"], 4)
    groups = in_groups(theta, 4)
    assert (keep.sum(-1) == 2).all()
    assert (groups.masked_fill(~keep, math.inf).amin(-1) > groups.masked_fill(keep, -math.inf).amax(-1)).all()


def test_nm_is_refused_only_where_leap_cannot_give_it():
    nm = Sparsity.parse("2:4")
    resolved(LEAPPruner).check_sparsity(nm)
    resolved(LEAPPruner, final_mask="threshold").check_sparsity(Sparsity(0.5))
    resolved(LEAPPruner, recipe="reference", final_mask="topk").check_sparsity(nm)
    for refused in (resolved(LEAPPruner, final_mask="threshold"), resolved(LEAPPruner, recipe="reference")):
        with pytest.raises(HarnessError, match="leap.final_mask=threshold cannot give N:M sparsity .* use leap.final_mask=topk"):
            refused.check_sparsity(nm)
    with pytest.raises(HarnessError, match="leap.prior=dsnot does not support N:M"):
        resolved(LEAPPruner, prior="dsnot").check_sparsity(nm)


def test_nm_needs_input_sizes_divisible_by_m(tiny_model):
    linears, masks = attach(tiny_model)
    logits = {name: theta.detach() for name, theta in masks.logits.items()}
    with pytest.raises(HarnessError, match="divisible by 3"):
        LearnableMasks(tiny_model, linears, logits, nm=(2, 3))


# --------------------------------------------------------------------------- config, budget, data


def test_config_from_the_command_line():
    config = build_config(LEAPConfig, {"steps": "10", "seqlen": "none", "autocast_bf16": "true", "final_mask": "threshold", "prior": "magnitude", "sampling": "micro-batch"}, "leap")
    assert (config.steps, config.seqlen, config.autocast_bf16, config.final_mask, config.sampling) == (10, None, True, "threshold", "micro-batch")
    assert LEAPConfig().sampling is None and LEAPConfig().tau_start is None  # the recipe's
    bad_values = ({"steps": "0"}, {"tau_end": "0"}, {"beta2": "1"}, {"prior": "leap"}, {"final_mask": "top"}, {"sampling": "batch"})
    for bad in (*bad_values, {"logit_dtype": "float16"}, {"schedule_end": "t"}):
        with pytest.raises(HarnessError):
            build_config(LEAPConfig, bad, "leap")
    with pytest.raises(HarnessError, match="unknown method"):
        build_config(LEAPConfig, {"prior": "wandaa"}, "leap")


def test_recipes_fill_the_fields_left_unset_and_explicit_values_win():
    cpu = torch.device("cpu")
    paper, reference = LEAPConfig(recipe="paper").resolve(cpu), LEAPConfig(recipe="reference").resolve(cpu)
    assert (paper.recipe, paper.logit_dtype, paper.schedule_end, paper.final_mask) == ("paper", "float32", "last-step", "topk")
    assert (paper.tau_start, paper.sampling) == (reference.tau_start, reference.sampling) == (4.0, "sequence")
    assert (reference.logit_dtype, reference.schedule_end, reference.final_mask) == ("bfloat16", "t/T", "threshold")
    assert dataclasses.replace(reference, recipe="paper", **RECIPES["paper"]) == paper  # nothing else differs
    small = LEAPConfig(recipe="small-budget").resolve(cpu)
    assert dataclasses.replace(small, recipe="paper", tau_start=4.0, sampling="sequence") == paper  # only τ_start and sampling differ
    assert (small.tau_start, small.sampling) == (1.0, "micro-batch")
    forced = build_config(LEAPConfig, {"recipe": "reference", "final_mask": "topk", "logit_dtype": "float32"}, "leap").resolve(cpu)
    assert (forced.logit_dtype, forced.schedule_end, forced.final_mask) == ("float32", "t/T", "topk")
    assert LEAPConfig(recipe="reference").final_mask is None  # the original is left as it was
    defaults = {f.name: f.default for f in dataclasses.fields(LEAPConfig)}
    assert all(values.keys() == RECIPES["paper"].keys() for values in RECIPES.values())  # so every record names each value
    assert all(defaults[name] is None for name in RECIPES["paper"])


def test_unset_recipe_follows_the_number_of_steps():
    """A short schedule trains with the small-budget recipe on any device (the CPU's 128 steps, a
    200-step GPU check), the paper's 2000 steps on CUDA with the paper's; a named recipe or an
    explicit field wins."""
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert (LEAPConfig().resolve(cpu).recipe, LEAPConfig().resolve(cuda).recipe) == ("small-budget", "paper")
    assert LEAPConfig(steps=200).resolve(cuda).recipe == "small-budget"
    assert LEAPConfig(steps=SMALL_BUDGET_MAX_STEPS).resolve(cpu).recipe == "small-budget"
    assert LEAPConfig(steps=SMALL_BUDGET_MAX_STEPS + 1).resolve(cpu).recipe == "paper"
    assert LEAPConfig().resolve(cpu) == LEAPConfig(recipe="small-budget").resolve(cpu)
    assert LEAPConfig().resolve(cuda) == LEAPConfig(recipe="paper").resolve(cuda)
    assert LEAPConfig(recipe="paper").resolve(cpu).tau_start == 4.0
    assert LEAPConfig(steps=200, recipe="paper").resolve(cuda).tau_start == 4.0
    assert LEAPConfig(tau_start=2.0).resolve(cpu).tau_start == 2.0
    assert LEAPConfig().resolve(torch.device("mps")).recipe == "small-budget"  # any other device: the CPU's budget


def test_unknown_recipe_is_refused_with_the_names():
    for make in (lambda: build_config(LEAPConfig, {"recipe": "budget"}, "leap"), lambda: LEAPPruner(recipe="budget")):
        with pytest.raises(HarnessError) as error:
            make()
        assert str(error.value) == "leap.recipe must be one of paper, reference, small-budget; got 'budget'"


def test_budget_resolves_by_device_and_keeps_explicit_values():
    cpu = Budget.resolve(LEAPConfig(), torch.device("cpu"))
    gpu = Budget.resolve(LEAPConfig(), torch.device("cuda"))
    assert (gpu.steps, gpu.batch_size * gpu.grad_accum, gpu.seqlen) == (2000, 128, 4096)
    assert cpu.tokens < gpu.tokens
    assert Budget.resolve(LEAPConfig(steps=7, seqlen=64), torch.device("cuda")) == Budget(7, 4, 32, 64)


def test_resolved_config_names_the_budget_and_autocast_it_runs_with():
    config = LEAPConfig(steps=7)
    cpu, gpu = config.resolve(torch.device("cpu")), config.resolve(torch.device("cuda"))
    assert (cpu.steps, cpu.batch_size, cpu.grad_accum, cpu.seqlen, cpu.autocast_bf16) == (7, *Budget.CPU[1:], False)
    assert (gpu.steps, gpu.batch_size, gpu.grad_accum, gpu.seqlen, gpu.autocast_bf16) == (7, *Budget.GPU[1:], True)
    assert LEAPConfig(autocast_bf16=False).resolve(torch.device("cuda")).autocast_bf16 is False
    assert cpu.resolve(torch.device("cuda")) == cpu  # resolving twice changes nothing
    assert config.steps == 7 and config.seqlen is None  # the original is left as it was


def test_block_windows_are_bounded_and_deterministic():
    calls = []

    def make(count, seed):
        calls.append((count, seed))
        return torch.arange(count)[:, None] + 1000 * len(calls)

    source = BlockWindows(make, total=10, seed=3, block_size=4)
    assert source(0, 3).flatten().tolist() == [1000, 1001, 1002]
    assert source(3, 2).flatten().tolist() == [1003, 2000]
    assert calls[0] == (4, 3) and calls[1][0] == 4 and calls[1][1] != 3
    assert source(8, 2).shape == (2, 1)
    with pytest.raises(IndexError):
        source(9, 2)


def test_curve_is_subsampled_keeping_both_ends():
    curve = [{"step": i} for i in range(2001)]
    sub = subsample_curve(curve, 500)
    assert len(sub) <= 500 and sub[0]["step"] == 0 and sub[-1]["step"] == 2000
