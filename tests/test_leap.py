"""LEAP on tiny random Llamas: the relaxed mask and its hand-written gradient, schedules, exact
final sparsity, training beating its prior mask, one mask per sequence, bit-exact resume, the NaN
guard, gradient checkpointing, distillation, refit, N:M, and the config. Training data are token
ids made here."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

from harness.config import build_config
from harness.errors import HarnessError
from harness.methods.leap import relaxed_mask
from harness.methods.leap.checkpoint import Checkpoint
from harness.methods.leap.config import Budget
from harness.methods.leap.relaxed_mask import (
    LOGIT_PARAM,
    LearnableMasks,
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


def attach(model, seed: int = 0) -> tuple[dict, LearnableMasks]:
    linears = target_linears(model)
    g = torch.Generator().manual_seed(seed)
    logits = {
        name: init_logits(linear.weight.abs() > linear.weight.abs().median(), 0.014, 3.0, g, torch.empty(linear.weight.shape))
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


def test_mask_noise_is_logistic_so_keep_probability_is_sigmoid_of_scaled_logit():
    theta = torch.tensor([-0.02, 0.0, 0.01, 0.03]).repeat_interleave(50_000).view(4, -1)
    mask = sample_masked_weight(theta, torch.ones_like(theta), 25.0, 0.05, torch.Generator().manual_seed(3)).masked
    kept = (mask > 0.5).float().mean(dim=1)
    torch.testing.assert_close(kept, torch.sigmoid(25.0 * theta[:, 0]), atol=0.01, rtol=0)


def test_late_anneal_masks_hold_no_subnormal_numbers():
    """At τ ≈ 0.18 and s ≈ 330 a pruned weight's σ((s·θ + L)/τ) nears float32's underflow; the
    subnormals it would put into W ⊙ m and its gradient slow CPU matmuls about 100×."""
    theta = torch.full((64, 512), -0.05).requires_grad_()
    weight = torch.full((64, 512), 0.05)
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
    schedule = Schedule(steps=40, warmup_steps=5, tau=(4.0, 0.05), scale=(25.0, 350.0))
    assert schedule.tau_at(0) == 4.0 and schedule.tau_at(39) == pytest.approx(0.05)
    assert schedule.scale_at(0) == 25.0 and schedule.scale_at(39) == pytest.approx(350.0)
    taus = [schedule.tau_at(s) for s in range(40)]
    assert all(a > b for a, b in zip(taus, taus[1:]))
    assert [schedule.lr_factor(s) for s in range(6)] == pytest.approx([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    assert schedule.lr_factor(39) == pytest.approx(0.5 * (1 + math.cos(math.pi * 34 / 35)))
    assert schedule.weight_reg_factor(0) == 1.0 and schedule.weight_reg_factor(39) == pytest.approx(1 / 40)


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
    pruner = MarkovLEAP(**SMALL, final_mask="threshold")
    assert not pruner.exact_sparsity() and MarkovLEAP(**SMALL).exact_sparsity()
    model = tiny_llama()
    result = pruner.run(model, Sparsity(0.5), context())
    assert 0.4 < result.realized_sparsity < 0.6
    assert result.realized_sparsity == count_zeros(target_linears(model))[1]


def test_prior_dense_weights_restored_and_logits_follow_the_prior():
    model = tiny_llama()
    dense = {n: l.weight.detach().clone() for n, l in target_linears(model).items()}
    linears = target_linears(model)
    logits, extra = LEAPPruner(**SMALL)._logits_from_prior(model, linears, Sparsity(0.5), context())
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
    leap = MarkovLEAP(prior="magnitude", steps=30, batch_size=4, seqlen=32, warmup_steps=3, lr=1e-2)
    data = leap.training_windows(context(), Budget(30, 4, 1, 32))(0, 120)
    MagnitudePruner().run(models["prior"], sparsity, context())
    result = leap.run(models["leap"], sparsity, context())
    assert result.realized_sparsity == pytest.approx(0.5, abs=1e-6)
    if sparsity.is_nm:
        assert all((kept == 2).all() for kept in kept_per_group(models["leap"], 4).values())
    assert result.stats["mask_changed"] > 0.05
    assert _training_ce(models["leap"], data) < _training_ce(models["prior"], data) - 0.5


@pytest.mark.parametrize("pattern", ["0.5", "2:4"])
def test_interrupted_run_resumes_to_the_same_weights(tmp_path, pattern):
    sparsity = Sparsity.parse(pattern)
    uninterrupted = tiny_llama()
    MarkovLEAP(**SMALL, checkpoint_every=2).run(uninterrupted, sparsity, context(tmp_path / "a"))
    assert not (tmp_path / "a" / CHECKPOINT_FILE).exists()

    with pytest.raises(Interrupted):
        InterruptedLEAP(**SMALL, checkpoint_every=2).run(tiny_llama(), sparsity, context(tmp_path / "b"))
    assert torch.load(tmp_path / "b" / CHECKPOINT_FILE, weights_only=False)["step"] == 4
    model = tiny_llama()
    result = MarkovLEAP(**SMALL, checkpoint_every=2).run(model, sparsity, context(tmp_path / "b"))
    assert result.stats["resumed_from_step"] == 4
    assert result.stats["prior_realized_sparsity"] == pytest.approx(0.5)
    for a, b in zip(target_linears(uninterrupted).values(), target_linears(model).values()):
        assert torch.equal(a.weight, b.weight)


def train_logits(config, windows, init_seed=0, seed=0, path=None, resume=None):
    """`train_masks` of a fresh tiny Llama with `attach`ed logits: (trained logits, curve)."""
    model = tiny_llama()
    _, masks = attach(model, init_seed)
    with masks.installed():
        outcome = train_masks(model, masks, windows, config, 0.5, seed, path, resume, {"run": 1}, progress=False)
    return masks.logits, outcome.curve


def tensor_windows(config) -> tuple[torch.Tensor, object]:
    """The budget's Markov windows and a window source over them."""
    budget = Budget.of(config)
    data = markov_windows(budget.sequences, budget.seqlen)
    return data, lambda start, count: data[start : start + count]


@pytest.mark.parametrize("sampling", ["sequence", "micro-batch"])
def test_resumed_training_gives_the_same_logits(tmp_path, sampling):
    config = LEAPConfig(**SMALL, checkpoint_every=3, sampling=sampling).resolve(torch.device("cpu"))
    _, source = tensor_windows(config)
    path = tmp_path / "ckpt.pt"
    logits_a, curve_a = train_logits(config, source, path=path)
    with pytest.raises(Interrupted):
        train_logits(config, interrupted(source, stop=4 * 2), path=path)
    resume = Checkpoint.load(path, {"run": 1})
    assert resume.step == 3
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
    logits, extra = LEAPPruner(**{**SMALL, "prior": "wanda"})._logits_from_prior(model, linears, Sparsity.parse("2:4"), context())
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
    LEAPPruner().check_sparsity(nm)
    LEAPPruner(final_mask="threshold").check_sparsity(Sparsity(0.5))
    with pytest.raises(HarnessError, match="use leap.final_mask=topk"):
        LEAPPruner(final_mask="threshold").check_sparsity(nm)
    with pytest.raises(HarnessError, match="leap.prior=dsnot does not support N:M"):
        LEAPPruner(prior="dsnot").check_sparsity(nm)


def test_nm_needs_input_sizes_divisible_by_m(tiny_model):
    linears, masks = attach(tiny_model)
    logits = {name: theta.detach() for name, theta in masks.logits.items()}
    with pytest.raises(HarnessError, match="divisible by 3"):
        LearnableMasks(tiny_model, linears, logits, nm=(2, 3))


# --------------------------------------------------------------------------- config, budget, data


def test_config_from_the_command_line():
    config = build_config(LEAPConfig, {"steps": "10", "seqlen": "none", "autocast_bf16": "true", "final_mask": "threshold", "prior": "magnitude", "sampling": "micro-batch"}, "leap")
    assert (config.steps, config.seqlen, config.autocast_bf16, config.final_mask, config.sampling) == (10, None, True, "threshold", "micro-batch")
    assert LEAPConfig().sampling == "sequence"
    for bad in ({"steps": "0"}, {"tau_end": "0"}, {"beta2": "1"}, {"prior": "leap"}, {"final_mask": "top"}, {"sampling": "batch"}):
        with pytest.raises(HarnessError):
            build_config(LEAPConfig, bad, "leap")
    with pytest.raises(HarnessError, match="unknown method"):
        build_config(LEAPConfig, {"prior": "wandaa"}, "leap")


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
