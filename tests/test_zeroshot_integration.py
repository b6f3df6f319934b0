"""Zero-shot evaluation of the real SmolLM2-135M on a small limit: the dense model beats chance on
PIQA and ARC-Easy, and magnitude pruning to 60% lowers the LEAP six-task average. MMLU runs on
its first item per subject (57 questions) to keep this under a few minutes on 2 cores."""

from __future__ import annotations

import copy

import pytest

from harness.evaluation.suites import SUITES
from harness.evaluation.zeroshot import ZeroShotResult, evaluate_zeroshot
from harness.methods.magnitude import MagnitudePruner
from harness.pruner import PruneContext
from harness.sparsity import Sparsity

LIMIT = 30
MMLU_LIMIT = 1
CHANCE = {"piqa": 0.5, "arc_easy": 0.25}


def leap6(model, tokenizer, data_dir) -> ZeroShotResult:
    """The six tasks, MMLU on fewer items than the other five (the same items every call)."""
    others = [name for name in SUITES["leap6"] if name != "mmlu"]
    result = evaluate_zeroshot(model, tokenizer, others, data_dir=data_dir, limit=LIMIT, progress=False)
    mmlu = evaluate_zeroshot(model, tokenizer, ["mmlu"], data_dir=data_dir, limit=MMLU_LIMIT, progress=False)
    result.metrics.update({key: value for key, value in mmlu.metrics.items() if key != "avg_acc"})
    result.per_item.update(mmlu.per_item)
    result.metrics["avg_acc"] = sum(result.metrics[f"{name}_acc"] for name in SUITES["leap6"]) / len(SUITES["leap6"])
    return result


@pytest.mark.slow
def test_dense_beats_chance_and_magnitude_60_lowers_leap6_average(smollm2, data_dir):
    model, tokenizer = smollm2
    dense = leap6(model, tokenizer, data_dir)
    for name, chance in CHANCE.items():
        assert dense.metrics[f"{name}_acc"] > chance, (name, dense.metrics)
    assert dense.n_items["piqa"] == LIMIT

    pruned_model = copy.deepcopy(model)
    MagnitudePruner().run(pruned_model, Sparsity(0.6), PruneContext())
    pruned = leap6(pruned_model, tokenizer, data_dir)

    assert pruned.metrics["avg_acc"] < dense.metrics["avg_acc"], (dense.metrics, pruned.metrics)
    assert {name: set(items) for name, items in pruned.per_item.items()} == {
        name: set(items) for name, items in dense.per_item.items()
    }
    for label, result in (("dense", dense), ("magnitude 60%", pruned)):
        print(
            f"\n{label}, limit {LIMIT} (mmlu {MMLU_LIMIT}/subject):",
            {key: round(value, 4) for key, value in result.metrics.items() if not key.endswith("_stderr")},
        )
