"""DSnoT against a per-row, list-by-list re-implementation of the reference's unstructured loop,
the exact counts it keeps, its skip rule, and the error it removes."""

from __future__ import annotations

import pytest
import torch

from harness.masks import lowest_mask_rows, prune_count
from harness.methods.dsnot import DSnoTConfig, DSnoTPruner, SequenceStatistics, refine_mask
from harness.pruner import PruneContext
from harness.sparsity import Sparsity
from harness.targets import target_linears
from tests.conftest import tiny_llama


def reference_row_loop(W, mean_sum, var, keep0, metric, cycles, threshold):
    """zyxxmu/DSnoT's swaps for one row at a time with Python lists, in float64."""
    W, mean_sum, var, metric = W.double(), mean_sum.double(), var.double(), metric.double()
    keep = keep0.clone()
    D = W * mean_sum
    for r in range(W.shape[0]):
        pruned = ~keep0[r]
        error = float((D[r] * pruned).sum())
        regrow = sorted(range(W.shape[1]), key=lambda j: (float(D[r, j] / var[j]) if pruned[j] else 0.0, j))
        kept = sorted((j for j in range(W.shape[1]) if keep0[r, j]), key=lambda j: (float(metric[r, j]), j))
        negatives = [j for j in kept if D[r, j] < 0]
        positives = [j for j in kept if D[r, j] > 0]
        low, high, neg, pos = 0, W.shape[1] - 1, 0, 0
        for _ in range(cycles):
            if abs(error) <= threshold:
                break
            if error > 0:
                j, high = regrow[high], high - 1
            else:
                j, low = regrow[low], low + 1
            if error < 0:
                if pos >= len(positives):
                    break
                p, pos = positives[pos], pos + 1
            else:
                if neg >= len(negatives):
                    break
                p, neg = negatives[neg], neg + 1
            keep[r, j], keep[r, p] = True, False
            error += float(D[r, p] - D[r, j])
    return keep


def _stats(seed: int, features: int = 40) -> tuple[SequenceStatistics, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(6, 30, features, generator=g) + torch.randn(features, generator=g)  # nonzero means
    stats = SequenceStatistics(features, torch.device("cpu"))
    stats.add(x[:2])
    stats.add(x[2:])
    return stats, x


@pytest.mark.parametrize("ratio", [0.5, 0.6])
def test_refinement_matches_the_reference_loop(ratio):
    """Rows of 200 weights: the candidate lists outlast the 50 cycles, as on LLM rows."""
    stats, _ = _stats(0, features=200)
    weight = torch.randn(16, 200, generator=torch.Generator().manual_seed(1))
    metric = weight.abs() * stats.norms()[None, :]
    keep0 = lowest_mask_rows(metric, ratio)
    cfg = DSnoTConfig(update_threshold=0.1)
    got = refine_mask(weight, stats, keep0, metric, cfg)
    expected = reference_row_loop(weight, stats.mean_sum(), stats.variance(), keep0, metric, cfg.max_cycles, cfg.update_threshold)
    assert torch.equal(got, expected)
    assert torch.equal(got.sum(dim=1), keep0.sum(dim=1))  # every row keeps its count
    assert not torch.equal(got, keep0)  # it did swap
    error = lambda keep: (weight.double() * stats.mean_sum().double() * ~keep).sum(dim=1).abs()  # noqa: E731
    assert float(error(got).sum()) < float(error(keep0).sum())


def test_short_rows_stop_before_their_lists_run_out():
    stats, _ = _stats(3, features=12)
    weight = torch.randn(8, 12, generator=torch.Generator().manual_seed(4))
    keep0 = lowest_mask_rows(weight.abs() * stats.norms()[None, :], 0.5)
    got = refine_mask(weight, stats, keep0, weight.abs() * stats.norms()[None, :], DSnoTConfig(update_threshold=0.0))
    assert torch.equal(got.sum(dim=1), keep0.sum(dim=1))


def test_statistics_are_the_references_per_sequence_ones():
    stats, x = _stats(2, features=8)
    flat = x.reshape(-1, 8).double()
    assert torch.allclose(stats.norms().double(), (flat.square().sum(0) / 6).sqrt(), rtol=1e-5)
    assert torch.allclose(stats.mean_sum().double(), flat.sum(0) / 6, rtol=1e-5)
    assert torch.allclose(stats.variance().double(), x.double().var(dim=1, unbiased=False).mean(0), rtol=1e-5)


def test_dsnot_keeps_exact_counts_and_skips_the_mlp_by_default(monkeypatch):
    calibration = torch.randint(0, 256, (4, 24), generator=torch.Generator().manual_seed(0))
    refined: list[tuple[int, ...]] = []
    original = DSnoTPruner.prune_matrix
    monkeypatch.setattr(DSnoTPruner, "prune_matrix", lambda self, w, s, sp: refined.append(tuple(w.shape)) or original(self, w, s, sp))
    for skip, expected in (("mlp", 2 * 4), ("none", 2 * 7)):  # 2 layers: 4 attention and 3 MLP linears each
        refined.clear()
        model = tiny_llama()
        DSnoTPruner(skip=skip).run(model, Sparsity(0.5), PruneContext(calibration=calibration, progress=False))
        assert len(refined) == expected
        for linear in target_linears(model).values():
            assert int((linear.weight == 0).sum()) == prune_count(linear.weight.numel(), 0.5)
