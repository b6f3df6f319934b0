"""Fidelity to the dense model: KL_k and top-1 agreement on hand-made distributions, and the
dense reference computed once and reused by the pruned cells of a sweep."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from harness.evaluation import fidelity
from harness.evaluation.fidelity import DenseReference, FidelityMeter, ReferenceBuilder, kl_topk
from tests.helpers import tiny_model_folder


def _reference(logits: torch.Tensor, k: int) -> DenseReference:
    top = F.log_softmax(logits, -1).topk(k, -1)
    return DenseReference(top.values.half(), top.indices.int(), fidelity._log_tail(top.values))


def test_kl_is_exact_when_the_top_k_holds_the_vocabulary(monkeypatch):
    g = torch.Generator().manual_seed(0)
    p_logits, q_logits = torch.randn(1, 5, 8, generator=g), torch.randn(1, 5, 8, generator=g)
    monkeypatch.setattr(fidelity, "TOPK", 8)
    builder = ReferenceBuilder()
    builder(0, 1, p_logits)
    meter = FidelityMeter(builder.reference())
    meter(0, 1, q_logits)
    p, q = F.log_softmax(p_logits, -1), F.log_softmax(q_logits, -1)
    exact = (p.exp() * (p - q)).sum(-1).sum()
    assert meter.kl[0] == pytest.approx(float(exact), rel=2e-3)  # float16 log-probs
    assert meter.agree[0] == int((p.argmax(-1) == q.argmax(-1)).sum())


def test_kl_with_a_tail_bucket_is_a_lower_bound_and_zero_for_the_same_model():
    g = torch.Generator().manual_seed(1)
    p_logits, q_logits = torch.randn(200, 50, generator=g) * 3, torch.randn(200, 50, generator=g) * 3
    p, q = F.log_softmax(p_logits, -1), F.log_softmax(q_logits, -1)
    exact = (p.exp() * (p - q)).sum(-1)
    reference = _reference(p_logits, 5)
    bound = kl_topk(reference.logp, reference.tail, q.gather(-1, reference.ids.long()))
    assert (bound <= exact + 1e-3).all() and (bound > 0).all()
    same = kl_topk(reference.logp, reference.tail, p.gather(-1, reference.ids.long()))
    assert same.abs().max() < 2e-3  # float16 rounding of the stored log-probs only


def test_hand_made_two_outcome_case():
    """p = (0.9, 0.1) with k = 1: KL_1 = 0.9 log(0.9/q1) + 0.1 log(0.1/(1 − q1)), the exact KL."""
    p_logits = torch.log(torch.tensor([[0.9, 0.1]]))
    q = torch.tensor([[0.6, 0.4]])
    reference = _reference(p_logits, 1)
    got = kl_topk(reference.logp, reference.tail, torch.log(q).gather(-1, reference.ids.long()))
    assert float(got) == pytest.approx(0.9 * math.log(0.9 / 0.6) + 0.1 * math.log(0.1 / 0.4), rel=1e-3)


def test_sweep_stores_fidelity_and_reuses_the_dense_reference(tmp_path, monkeypatch, data_dir):
    from harness.runner import run_sweep
    from harness.settings import RunSettings

    monkeypatch.setenv("HARNESS_CACHE_DIR", str(tmp_path / "cache"))
    model = str(tiny_model_folder(tmp_path / "tiny"))
    settings = RunSettings(models=model, methods="magnitude", sparsities="0.3,0.6", out=tmp_path / "res", nsamples=2, seqlen=32,
                           ppl_tokens=256, tasks="none", device="cpu", dtype="float32", progress=False)
    dense, light, heavy = run_sweep(settings, log=lambda _: None).records
    assert "kl_to_dense" not in dense["metrics"] and len(list((tmp_path / "cache" / "dense-reference").iterdir())) == 1
    for record in (light, heavy):
        assert "dense_reference" not in record["timings"]  # the dense cell's pass built it
        assert 0 < record["metrics"]["kl_to_dense"] and 0 <= record["metrics"]["top1_agreement"] <= 1
        assert len(record["fidelity_per_window"]["kl"]) == record["evaluation"]["ppl_windows"]
        assert record["evaluation"]["fidelity_reference"] == dense["evaluation"]["fidelity_reference"]
    assert light["metrics"]["kl_to_dense"] < heavy["metrics"]["kl_to_dense"]
    outcome = run_sweep(dataclasses.replace(settings, sparsities="0.45", include_dense=False), log=lambda _: None)
    assert not outcome.failures, outcome.failures
    alone = outcome.records[0]
    assert "dense_reference" not in alone["timings"]  # reused from the cache, not recomputed
    for path in (tmp_path / "cache" / "dense-reference").iterdir():
        path.unlink()
    recomputed = run_sweep(dataclasses.replace(settings, sparsities="0.55", include_dense=False), log=lambda _: None).records[0]
    assert "dense_reference" in recomputed["timings"] and recomputed["metrics"]["kl_to_dense"] > 0
