"""Integration on the real bundled SmolLM2-135M: perplexity protocol, magnitude, save and reload."""

from __future__ import annotations

import copy

import pytest
import torch

from harness.evaluation.perplexity import wikitext2_windows, window_perplexity
from harness.methods.magnitude import MagnitudePruner
from harness.pruner import PruneContext
from harness.sparsity import Sparsity
from harness.targets import count_zeros, target_linears

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def windows(smollm2, data_dir):
    _, tokenizer = smollm2
    return wikitext2_windows(tokenizer, seqlen=512, max_tokens=20_000, data_dir=data_dir)


@pytest.fixture(scope="module")
def dense_ppl(smollm2, windows):
    return window_perplexity(smollm2[0], windows)


def test_dense_perplexity_is_sane(windows, dense_ppl):
    assert windows.shape == (39, 512)
    assert 25 < dense_ppl < 34  # about 29 for this slice


def test_magnitude_hurts_and_survives_a_save(smollm2, windows, dense_ppl, tmp_path):
    from transformers import AutoModelForCausalLM

    model, tokenizer = smollm2
    pruned = copy.deepcopy(model)
    result = MagnitudePruner().run(pruned, Sparsity(0.5), PruneContext())
    assert result.realized_sparsity == pytest.approx(0.5, abs=1e-6)
    pruned_ppl = window_perplexity(pruned, windows)
    assert pruned_ppl > 1.5 * dense_ppl

    pruned.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    _, overall = count_zeros(target_linears(reloaded))
    assert overall == pytest.approx(result.realized_sparsity)
    assert window_perplexity(reloaded, windows) == pytest.approx(pruned_ppl, rel=1e-5)
