"""Wanda, SparseGPT and ADMM: exact sparsity (N:M included), agreement of SparseGPT with a plain
one-column-at-a-time OBS in float64, determinism, and, on real SmolLM2 data, the orderings of
layer reconstruction error and perplexity that the papers report."""

from __future__ import annotations

import copy

import pytest
import torch

from harness.accumulators import GramAccumulator, InputNormAccumulator
from harness.engine import LayerwiseEngine
from harness.errors import HarnessError
from harness.masks import lowest_mask_matrix, nm_mask, prune_count, select_mask
from harness.methods.admm import ADMMPruner
from harness.methods.sparsegpt import SparseGPTPruner, block_quotas, inverse_hessian_factor
from harness.methods.thanos import ThanosPruner
from harness.methods.wanda import WandaPruner
from harness.pruner import PruneContext
from harness.sparsity import Sparsity
from harness.targets import find_linears, target_linears
from tests.conftest import tiny_gemma3, tiny_llama
from tests.test_engine import recorded_inputs

LAYERWISE = [WandaPruner, SparseGPTPruner, ThanosPruner, ADMMPruner]


def correlated_inputs(tokens: int, features: int, seed: int = 0) -> torch.Tensor:
    """Inputs with correlated features and a few outlier channels, like LLM activations."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, features, generator=g) @ torch.randn(features, features, generator=g) / features**0.5
    return x * (1 + 9 * (torch.rand(features, generator=g) < 0.05))


def stats_of(x: torch.Tensor) -> tuple[GramAccumulator, InputNormAccumulator]:
    gram, norms = GramAccumulator(x.shape[1], x.device), InputNormAccumulator(x.shape[1], x.device)
    gram.add(x)
    norms.add(x)
    return gram, norms


def reconstruction_error(weight: torch.Tensor, pruned: torch.Tensor, x: torch.Tensor) -> float:
    """‖WXᵀ − ŴXᵀ‖² over the calibration tokens, in float64."""
    return float(((weight.double() - pruned.double()) @ x.double().T).square().sum())


def assert_nm(weight: torch.Tensor, n: int, m: int) -> None:
    groups = weight.reshape(weight.shape[0], -1, m)
    assert int((groups != 0).sum(-1).max()) <= n
    assert int((weight == 0).sum()) == weight.numel() * (m - n) // m


def calibration(seed: int = 0, n: int = 6, seqlen: int = 24) -> torch.Tensor:
    return torch.randint(0, 256, (n, seqlen), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("pruner_cls", LAYERWISE, ids=lambda c: c.name)
@pytest.mark.parametrize("spec", ["0.5", "0.6", "0.37", "2:4", "4:8", "1:4"])
def test_every_matrix_hits_its_sparsity_exactly(pruner_cls, spec):
    model = tiny_llama()
    sparsity = Sparsity.parse(spec)
    pruner_cls(batch_size=4).run(model, sparsity, PruneContext(calibration=calibration(), progress=False))
    for name, linear in target_linears(model).items():
        weight = linear.weight
        if sparsity.is_nm:
            assert_nm(weight, sparsity.n, sparsity.m)
        else:
            assert int((weight == 0).sum()) == prune_count(weight.numel(), sparsity.ratio), name


@pytest.mark.parametrize("pruner_cls", LAYERWISE, ids=lambda c: c.name)
def test_same_seed_and_data_give_identical_masks(pruner_cls):
    masks = []
    for _ in range(2):
        model = tiny_gemma3()
        pruner_cls(batch_size=4).run(model, Sparsity(0.5), PruneContext(calibration=calibration(1), progress=False))
        masks.append([linear.weight != 0 for linear in target_linears(model).values()])
    assert all(torch.equal(a, b) for a, b in zip(*masks))


def test_wanda_prunes_lowest_weight_times_input_norm_per_row():
    x = correlated_inputs(256, 32)
    weight = torch.randn(16, 32, generator=torch.Generator().manual_seed(1))
    _, norms = stats_of(x)
    pruned = WandaPruner().prune_matrix(weight.clone(), norms, Sparsity(0.5))
    scores = weight.abs() * x.norm(dim=0)
    kept_min = torch.where(pruned != 0, scores, torch.inf).min(dim=1).values
    dropped_max = torch.where(pruned == 0, scores, -torch.inf).max(dim=1).values
    assert torch.all(dropped_max < kept_min)
    assert torch.all((pruned == 0).sum(dim=1) == 16)
    torch.testing.assert_close(pruned[pruned != 0], weight[pruned != 0], rtol=0, atol=0)


def test_inverse_hessian_factor_equals_the_reference_triple_factorization():
    x = correlated_inputs(200, 48).double()
    hessian = x.T @ x + 0.1 * torch.eye(48, dtype=torch.float64)
    expected = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(hessian)), upper=True)
    torch.testing.assert_close(inverse_hessian_factor(hessian), expected, rtol=1e-10, atol=1e-12)


def test_block_quotas_sum_exactly_and_follow_the_live_columns():
    live = torch.ones(300, dtype=torch.bool)
    assert block_quotas(live, 128, 1000) == [427, 426, 147]
    live[:100] = False
    quotas = block_quotas(live, 128, 1000)
    assert sum(quotas) == 1000 and quotas[0] == round(1000 * 28 / 200)


def straightforward_obs(weight, gram, sparsity: Sparsity, blocksize: int, percdamp: float) -> torch.Tensor:
    """SparseGPT without its tricks, in float64: for each column in order, invert the Hessian of
    the columns not yet processed, zero the column where masked and move the remaining columns
    by the OBS update. Masks are chosen, per block or per M columns, on w²/[H_rest⁻¹]₀₀."""
    W = weight.double().clone()
    H = gram.double().clone()
    rows, cols = W.shape
    dead = H.diagonal() == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    H += percdamp * H.diagonal().mean() * torch.eye(cols, dtype=torch.float64)
    inverse_rest = [torch.linalg.inv(H[j:, j:]) for j in range(cols)]
    d2 = torch.tensor([inv[0, 0] for inv in inverse_rest], dtype=torch.float64)

    def scores(columns: slice) -> torch.Tensor:
        s = W[:, columns].square() / d2[columns]
        s[:, dead[columns]] = -torch.inf
        return s

    keep = torch.ones_like(W, dtype=torch.bool)
    if not sparsity.is_nm:
        target = round(W.numel() * sparsity.ratio) - rows * int(dead.sum())
        quotas = block_quotas(~dead, blocksize, target)
    for i in range(cols):
        if sparsity.is_nm and i % sparsity.m == 0:
            group = slice(i, i + sparsity.m)
            keep[:, group] = nm_mask(scores(group), sparsity.n, sparsity.m)
        elif not sparsity.is_nm and i % blocksize == 0:
            block = slice(i, min(i + blocksize, cols))
            count = quotas[i // blocksize] + rows * int(dead[block].sum())
            keep[:, block] = lowest_mask_matrix(scores(block), count / W[:, block].numel())
        inv = inverse_rest[i]
        q = W[:, i] * keep[:, i]
        W[:, i + 1 :] -= torch.outer((W[:, i] - q) / inv[0, 0], inv[0, 1:])
        W[:, i] = q
    return W


@pytest.mark.parametrize("spec", ["0.5", "2:4"])
@pytest.mark.parametrize("dead_column", [False, True])
def test_sparsegpt_matches_straightforward_obs_in_float64(spec, dead_column):
    x = correlated_inputs(400, 40, seed=2)
    if dead_column:
        x[:, 7] = 0
    weight = torch.randn(12, 40, generator=torch.Generator().manual_seed(3))
    gram, _ = stats_of(x)
    sparsity = Sparsity.parse(spec)
    pruner = SparseGPTPruner(blocksize=8)
    got = pruner.prune_matrix(weight.clone(), gram, sparsity)
    expected = straightforward_obs(weight, gram.gram, sparsity, blocksize=8, percdamp=0.01)
    assert torch.equal(got == 0, expected == 0)
    torch.testing.assert_close(got.double(), expected, rtol=1e-4, atol=1e-4)
    if dead_column:
        assert torch.all(got[:, 7] == 0)
    if not sparsity.is_nm:
        assert int((got == 0).sum()) == prune_count(got.numel(), 0.5)


def test_sparsegpt_rejects_blocks_that_split_nm_groups():
    pruner = SparseGPTPruner(blocksize=6)
    with pytest.raises(HarnessError, match="multiple of M=4"):
        pruner.check_sparsity(Sparsity.parse("2:4"))


def test_admm_without_iterations_is_the_layer_wide_wanda_mask():
    x = correlated_inputs(300, 32, seed=4)
    weight = torch.randn(24, 32, generator=torch.Generator().manual_seed(5))
    gram, norms = stats_of(x)
    pruned = ADMMPruner(iters=0, iterative_prune=0).prune_matrix(weight.clone(), gram, Sparsity(0.5))
    wanda_layer_wide = WandaPruner(group="matrix").prune_matrix(weight.clone(), norms, Sparsity(0.5))
    assert torch.equal(pruned == 0, wanda_layer_wide == 0)
    torch.testing.assert_close(pruned, wanda_layer_wide, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("options", [{}, {"gradual": True}, {"per_out": True}, {"iterative_prune": 0}])
def test_admm_keeps_its_updated_weights_and_beats_its_own_mask(options):
    x = correlated_inputs(300, 32, seed=6)
    weight = torch.randn(24, 32, generator=torch.Generator().manual_seed(7))
    gram, _ = stats_of(x)
    pruned = ADMMPruner(**options).prune_matrix(weight.clone(), gram, Sparsity(0.5))
    assert int((pruned == 0).sum()) == prune_count(weight.numel(), 0.5)
    if options.get("per_out"):
        assert torch.all((pruned == 0).sum(dim=1) == 16)
    mask_only = weight * (pruned != 0)
    assert not torch.allclose(pruned[pruned != 0], weight[pruned != 0])
    assert reconstruction_error(weight, pruned, x) < reconstruction_error(weight, mask_only, x)


def test_admm_config_is_validated():
    with pytest.raises(HarnessError, match="iterative_prune"):
        ADMMPruner(iters=10, iterative_prune=15)
    with pytest.raises(HarnessError, match="rho"):
        ADMMPruner(rho=0.0)


# ---------------------------------------------------------------- real model (slow) ------------


@pytest.fixture(scope="module")
def smollm2_layer_inputs(smollm2, data_dir):
    """Real calibration inputs of the linears of SmolLM2's decoder layer 3 (8 x 256 C4 tokens)."""
    from harness.data import c4_windows

    model, tokenizer = smollm2
    engine = LayerwiseEngine(model, c4_windows(tokenizer, 8, 256, seed=0, data_dir=data_dir), batch_size=4)
    for index, layer in engine.steps(4):
        if index == 3:
            linears = find_linears(layer)
            with recorded_inputs(linears) as inputs:
                engine.forward(index)
            return {name: (linears[name].weight.detach().clone(), torch.cat(xs)) for name, xs in inputs.items()}


@pytest.mark.slow
@pytest.mark.parametrize("ratio", [0.5, 0.6])
@pytest.mark.parametrize("name", ["self_attn.q_proj", "self_attn.o_proj", "mlp.up_proj", "mlp.down_proj"])
def test_reconstruction_error_orders_as_theory_on_a_real_layer(smollm2_layer_inputs, name, ratio):
    weight, x = smollm2_layer_inputs[name]
    gram, norms = stats_of(x)
    sparsity = Sparsity(ratio)
    pruned = {
        "admm": ADMMPruner().prune_matrix(weight.clone(), gram, sparsity),
        "sparsegpt": SparseGPTPruner().prune_matrix(weight.clone(), gram, sparsity),
        "wanda": WandaPruner().prune_matrix(weight.clone(), norms, sparsity),
        "magnitude_row": weight * select_mask(weight.abs(), sparsity, "row"),
    }
    error = {method: reconstruction_error(weight, w, x) for method, w in pruned.items()}
    for method, w in pruned.items():
        assert int((w == 0).sum()) == prune_count(w.numel(), ratio), method
    assert error["admm"] <= error["sparsegpt"] < error["wanda"] <= error["magnitude_row"], error


@pytest.fixture(scope="module")
def half_sparsity_ppl(smollm2, data_dir):
    """WikiText-2 perplexity (8192 tokens) of SmolLM2 pruned to 50% by a method, 8 x 256 C4
    calibration; computed on first use so that each method's cost falls in its own test."""
    from harness.data import c4_windows
    from harness.evaluation.perplexity import wikitext2_windows, window_perplexity
    from harness.registry import get_pruner

    dense, tokenizer = smollm2
    ids = c4_windows(tokenizer, 8, 256, seed=0, data_dir=data_dir)
    windows = wikitext2_windows(tokenizer, 256, max_tokens=8192, data_dir=data_dir)
    cache: dict[str, float] = {}

    def ppl(method: str) -> float:
        if method not in cache:
            model = copy.deepcopy(dense)
            result = get_pruner(method)().run(model, Sparsity(0.5), PruneContext(calibration=ids, progress=False))
            assert result.realized_sparsity == pytest.approx(0.5, abs=1e-9)
            cache[method] = window_perplexity(model, windows, batch_size=8)
        return cache[method]

    return ppl


@pytest.mark.slow
@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt", "admm"])
def test_half_sparsity_perplexity_is_finite(half_sparsity_ppl, method):
    assert 1 < half_sparsity_ppl(method) < 1e5


@pytest.mark.slow
def test_perplexity_at_half_sparsity_orders_as_in_the_papers(half_sparsity_ppl):
    """ADMM <= SparseGPT ~ Wanda << magnitude."""
    ppl = {method: half_sparsity_ppl(method) for method in ("magnitude", "wanda", "sparsegpt", "admm")}
    assert ppl["admm"] <= ppl["sparsegpt"] * 1.02, ppl
    assert 0.67 < ppl["sparsegpt"] / ppl["wanda"] < 1.5, ppl
    assert ppl["magnitude"] > 2 * max(ppl["wanda"], ppl["sparsegpt"]), ppl


def test_methods_are_registered_and_record_their_hyperparameters():
    from harness.registry import get_pruner

    assert get_pruner("wanda") is WandaPruner and get_pruner("sparsegpt") is SparseGPTPruner
    assert get_pruner("admm") is ADMMPruner
    assert ADMMPruner().config.to_dict() == {
        "batch_size": 8, "offload": True, "iters": 20, "iterative_prune": 15, "percdamp": 0.1, "rho": 1.0,
        "gradual": False, "per_out": False,
    }
    assert SparseGPTPruner().config.to_dict()["percdamp"] == 0.01 and SparseGPTPruner().config.blocksize == 128
