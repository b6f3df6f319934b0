"""Cross-check against llmcompressor (vLLM project), the maintained successor of sparseml.

The same weight matrix and the same accumulated statistics (Gram matrix for SparseGPT, input
norms for Wanda) go to our `prune_matrix` and to llmcompressor's per-module `sparsify_weight`;
masks and layer reconstruction errors must agree. Known, expected difference: llmcompressor's
SparseGPT keeps the reference's `<=` threshold, which prunes int(numel·s)+1 entries per
128-column block, while ours hits round(numel·s) per matrix exactly; so its masks differ in a
handful of entries and its error is slightly higher. Skipped unless `pip install
leap-harness[crosscheck]`."""

from __future__ import annotations

import pytest
import torch
from torch import nn

pytest.importorskip("llmcompressor")
from llmcompressor.modifiers.pruning.sparsegpt import sgpt_sparsify  # noqa: E402
from llmcompressor.modifiers.pruning.wanda import wanda_sparsify  # noqa: E402

from harness.masks import prune_count  # noqa: E402
from harness.methods.sparsegpt import SparseGPTPruner  # noqa: E402
from harness.methods.wanda import WandaPruner  # noqa: E402
from harness.sparsity import Sparsity  # noqa: E402
from tests.test_layerwise_methods import correlated_inputs, reconstruction_error, stats_of  # noqa: E402

ROWS, COLUMNS, TOKENS = 96, 384, 2048  # three 128-column SparseGPT blocks


@pytest.fixture(scope="module")
def problem():
    x = correlated_inputs(TOKENS, COLUMNS, seed=11)
    linear = nn.Linear(COLUMNS, ROWS, bias=False)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(ROWS, COLUMNS, generator=torch.Generator().manual_seed(12)))
    gram, norms = stats_of(x)
    return linear, x, gram, norms


def nm_args(sparsity: Sparsity) -> tuple[int, int]:
    """llmcompressor's (prune_n, prune_m): it counts the pruned entries of each group."""
    return (sparsity.m - sparsity.n, sparsity.m) if sparsity.is_nm else (0, 0)


@pytest.mark.parametrize("spec", ["0.5", "0.625", "2:4"])
def test_wanda_masks_are_identical(problem, spec):
    linear, x, _, norms = problem
    sparsity = Sparsity.parse(spec)
    # llmcompressor's row scalars are mean squared norms per sample: the same up to scale.
    scalars = {linear: norms.sq_sum.clone() / TOKENS}
    theirs = wanda_sparsify.sparsify_weight(linear, scalars, sparsity.ratio, *nm_args(sparsity))
    ours = WandaPruner().prune_matrix(linear.weight.detach().clone(), norms, sparsity)
    assert torch.equal(ours == 0, theirs == 0)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


@pytest.mark.parametrize("spec", ["0.5", "0.625", "2:4"])
def test_sparsegpt_masks_and_errors_agree(problem, spec):
    linear, x, gram, _ = problem
    sparsity = Sparsity.parse(spec)
    # llmcompressor's Hessian is 2/n XᵀX; SparseGPT is invariant to that scale, so pass the same.
    hessians = {linear: 2 * gram.gram.clone() / TOKENS}
    _, theirs = sgpt_sparsify.sparsify_weight(
        linear, hessians, sparsity.ratio, *nm_args(sparsity),
        block_size=128, dampening_frac=0.01, preserve_sparsity_mask=False,
    )
    theirs = theirs.detach()
    ours = SparseGPTPruner().prune_matrix(linear.weight.detach().clone(), gram, sparsity)
    weight = linear.weight.detach()
    ours_error, their_error = reconstruction_error(weight, ours, x), reconstruction_error(weight, theirs, x)
    agreement = float(((ours == 0) == (theirs == 0)).float().mean())
    if sparsity.is_nm:
        assert agreement == 1.0
        assert ours_error == pytest.approx(their_error, rel=1e-3)
    else:
        blocks = COLUMNS // 128
        assert int((ours == 0).sum()) == prune_count(ours.numel(), sparsity.ratio)
        assert int((theirs == 0).sum()) - int((ours == 0).sum()) == blocks
        assert agreement > 0.99
        assert ours_error <= their_error * 1.01
        assert ours_error == pytest.approx(their_error, rel=0.05)
