"""Layer-wise sparsity profiles (OWL): the math against the reference's lines, exact totals, every
method following the per-matrix targets, the record, the refusals, and llm-compressor's OWL."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from harness.masks import prune_count
from harness.profiles import ProfileSettings, exact_zero_counts, outlier_ratio, owl_layer_sparsities, owl_profile
from harness.pruner import PruneContext
from harness.registry import get_pruner
from harness.runner import run_sweep
from harness.settings import RunSettings
from harness.sparsity import Sparsity
from harness.targets import decoder_layers, target_linears
from tests.conftest import tiny_llama
from tests.helpers import InertPruner, run_cli, tiny_model_folder

OWL = ProfileSettings("owl", 0.08, 5.0)


def reference_owl(ratios: list[float], sparsity: float, lamda: float) -> list[float]:
    """luuyin/OWL `prune_wanda_outlier`, its lines on `all_layer_ratio`, in float64 numpy."""
    all_layer_ratio = np.array(ratios)
    all_layer_ratio = (all_layer_ratio - all_layer_ratio.min()) * (1 / (all_layer_ratio.max() - all_layer_ratio.min()) * lamda * 2)
    all_layer_ratio = all_layer_ratio - np.mean(all_layer_ratio) + (1 - sparsity)
    return [1 - ratio for ratio in all_layer_ratio]


def test_outlier_ratio_counts_scores_above_m_times_the_mean() -> None:
    scores = torch.tensor([1.0] * 18 + [20.0, 30.0])  # mean 3.4: 20 and 30 exceed 5 × 3.4 = 17
    assert outlier_ratio(scores, 5.0) == pytest.approx(10.0)
    assert outlier_ratio(scores, 10.0) == pytest.approx(0.0)


def test_layer_sparsities_follow_the_reference_lines() -> None:
    ratios = [0.4, 1.7, 0.9, 2.3, 0.2]
    ours = owl_layer_sparsities(ratios, 0.6, 0.08)
    assert ours == pytest.approx(reference_owl(ratios, 0.6, 0.08), abs=1e-12)
    assert np.mean(ours) == pytest.approx(0.6) and max(ours) - min(ours) == pytest.approx(0.16)
    assert ours[ratios.index(max(ratios))] == min(ours)  # the layer richest in outliers keeps the most
    assert owl_layer_sparsities([1.0, 1.0], 0.5, 0.08) == [0.5, 0.5]


def test_weighted_centre_keeps_the_mean_over_weights() -> None:
    sizes = [100, 300, 600]
    ours = owl_layer_sparsities([3.0, 1.0, 2.0], 0.5, 0.1, sizes)
    assert np.average(ours, weights=sizes) == pytest.approx(0.5)


def test_zero_counts_sum_exactly() -> None:
    sizes = {"a": 7, "b": 11, "c": 13}
    ratios = {"a": 0.55, "b": 0.45, "c": 0.5 - (0.05 * 7 - 0.05 * 11) / 13}
    counts = exact_zero_counts(sizes, ratios, 0.5)
    assert sum(counts.values()) == prune_count(31, 0.5)
    assert all(abs(counts[name] - sizes[name] * ratios[name]) < 1 for name in sizes)


def calibration(seed: int = 3, samples: int = 4, tokens: int = 24) -> torch.Tensor:
    return torch.randint(0, 256, (samples, tokens), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def dense_norms(model, data: torch.Tensor) -> dict[str, torch.Tensor]:
    """‖X_j‖₂ of every decoder linear's inputs, from hooks on one whole-model forward: an
    implementation independent of the layer-wise engine."""
    norms, hooks = {}, []
    for name, linear in target_linears(model).items():
        def hook(_module, args, _out, name=name):
            norms[name] = args[0].float().pow(2).sum(dim=(0, 1)).sqrt()
        hooks.append(linear.register_forward_hook(hook))
    model(input_ids=data)
    for handle in hooks:
        handle.remove()
    return norms


def test_owl_profile_matches_an_independent_computation() -> None:
    model, data = tiny_llama(seed=1, layers=4), calibration()
    linears = target_linears(model)
    profile = owl_profile(model, linears, data, Sparsity(0.5), OWL)
    norms = dense_norms(model, data)
    ratios = []
    for index in range(4):
        prefix = f"model.layers.{index}."
        scores = torch.cat([(l.weight.abs() * norms[n][None, :]).flatten() for n, l in linears.items() if n.startswith(prefix)])
        ratios.append(outlier_ratio(scores, 5.0))
    assert profile.outlier_ratio == pytest.approx(ratios)
    assert profile.layer_sparsity == pytest.approx(reference_owl(ratios, 0.5, 0.08), abs=1e-9)
    zeros = sum(prune_count(linears[name].weight.numel(), target.ratio) for name, target in profile.matrices.items())
    assert zeros == prune_count(sum(l.weight.numel() for l in linears.values()), 0.5)


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt", "thanos", "admm", "dsnot"])
def test_every_method_follows_the_per_matrix_targets(method: str) -> None:
    model, data = tiny_llama(seed=2, layers=4), calibration(samples=8)
    linears = target_linears(model)
    profile = owl_profile(model, linears, data, Sparsity(0.6), OWL)
    ctx = PruneContext(calibration=data, seed=0, progress=False, matrix_sparsity=profile.matrices)
    result = get_pruner(method)().run(model, Sparsity(0.6), ctx)
    for name, linear in linears.items():
        assert int((linear.weight == 0).sum()) == prune_count(linear.weight.numel(), profile.matrices[name].ratio), name
    total = sum(l.weight.numel() for l in linears.values())
    assert result.realized_sparsity * total == pytest.approx(prune_count(total, 0.6))
    per_layer = [np.mean([s for n, s in result.layer_sparsity.items() if n.startswith(f"model.layers.{i}.")]) for i in range(4)]
    assert max(per_layer) - min(per_layer) > 0.1  # the layers really differ


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return str(tiny_model_folder(tmp_path_factory.mktemp("tiny")))


def _settings(model_dir, out, **changes) -> RunSettings:
    base = dict(
        models=[model_dir], methods=["wanda"], sparsities=["0.5"], out=out, nsamples=4, seqlen=32,
        ppl_tokens=512, tasks="none", device="cpu", dtype="float32", progress=False, include_dense=False,
    )
    return RunSettings(**{**base, **changes})


def test_owl_cell_records_its_profile_and_is_its_own_cell(model_dir, tmp_path, data_dir) -> None:
    owl = run_sweep(_settings(model_dir, tmp_path, profile="owl", methods=["magnitude", "wanda"]), log=lambda _: None).records
    uniform = run_sweep(_settings(model_dir, tmp_path, methods=["wanda"]), log=lambda _: None).records
    assert len(list(tmp_path.rglob("*.json"))) == 3
    for record in owl:
        profile = record["profile"]
        assert profile["name"] == "owl" and profile["lambda"] == 0.08 and profile["m"] == 5.0
        assert profile["layers"] == [0, 1] and len(profile["layer_sparsity"]) == 2 and np.mean(profile["layer_sparsity"]) == pytest.approx(0.5)
        assert record["realized_sparsity"] == pytest.approx(0.5, abs=1e-9)
        assert record["calibration"]["nsamples"] == 4  # magnitude too: OWL scores on calibration
        assert "profile" in record["timings"]
    assert uniform[0]["profile"] is None and "profile" not in uniform[0]["timings"]


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--profile", "owl", "--sparsity", "2:4"], "cannot apply to --sparsity 2:4"),
        (["--profile", "owl", "--set", "magnitude.scope=global"], "magnitude.scope=global sets its own layer sparsities"),
        (["--profile", "outliers"], "--profile takes one of uniform, owl"),
        (["--profile", "owl", "--owl-lambda", "0.9"], "--owl-lambda takes a number in [0, 0.5]"),
        (["--owl-m", "zero"], "--owl-m takes a number"),
        (["--owl-lambda", "0.1"], "--owl-lambda set the OWL profile; add --profile owl"),
    ],
)
def test_bad_profile_input_is_refused(monkeypatch, capsys, tmp_path, args, needle) -> None:
    code, _, err = run_cli(monkeypatch, capsys, "run", "--out", str(tmp_path), "--tasks", "none", *args)
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1
    assert needle in err


def test_leap_takes_the_profile_through_its_prior() -> None:
    from harness.methods.leap import LEAPPruner
    from tests.test_leap import resolved
    from harness.methods.leap.relaxed_mask import unpack_mask

    model, data = tiny_llama(seed=2, layers=4), calibration(samples=8)
    linears = target_linears(model)
    profile = owl_profile(model, linears, data, Sparsity(0.6), OWL)
    ctx = PruneContext(calibration=data, seed=0, progress=False, matrix_sparsity=profile.matrices)
    _, extra = resolved(LEAPPruner)._logits_from_prior(model, linears, Sparsity(0.6), ctx)
    for name, linear in linears.items():
        prior_keep = unpack_mask(extra["prior_bits"][name], linear.weight)
        assert int((~prior_keep).sum()) == prune_count(linear.weight.numel(), profile.matrices[name].ratio), name


def test_run_with_owl_reports_against_the_owl_baseline(monkeypatch, capsys, model_dir, tmp_path, data_dir) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(
        monkeypatch, capsys, "run", "--model", model_dir, "--methods", "wanda,admm", "--profile", "owl", "--owl-m", "4",
        "--no-dense", "--tasks", "none", "--nsamples", "4", "--seqlen", "32", "--ppl-tokens", "512", "--device", "cpu",
        "--dtype", "float32", "--out", str(tmp_path / "results"),
    )
    assert code == 0, err
    assert "baseline: **admm+owl(m=4)**" in (tmp_path / "reports" / "latest" / "README.md").read_text()
    assert "wanda+owl(m=4)" in out


def test_a_pruner_without_profiles_refuses_per_matrix_targets() -> None:
    with pytest.raises(Exception, match="does not follow per-matrix targets"):
        InertPruner().run(tiny_llama(), Sparsity(0.5), PruneContext(matrix_sparsity={}))


def test_owl_refuses_a_layer_pushed_past_dense() -> None:
    model, data = tiny_llama(seed=1, layers=4), calibration()
    with pytest.raises(Exception, match="lower --owl-lambda"):
        owl_profile(model, target_linears(model), data, Sparsity(0.05), ProfileSettings("owl", 0.5, 5.0))


def test_llmcompressor_owl_gives_the_same_layer_sparsities(monkeypatch) -> None:
    """llm-compressor's `_infer_owl_layer_sparsity` (its activations and its formula) on one batch
    holding every sample (its activation statistic then equals ours up to scale), against ours on
    the same model. Only its session's lifecycle events are silenced: no session runs here."""
    pytest.importorskip("llmcompressor")
    from llmcompressor.core import LifecycleCallbacks
    from llmcompressor.modifiers.pruning.wanda import WandaPruningModifier

    for event in ("calibration_start", "sequential_epoch_end", "calibration_end"):
        monkeypatch.setattr(LifecycleCallbacks, event, classmethod(lambda cls, *args, **kwargs: None))

    model, data = tiny_llama(seed=4, layers=4), calibration(samples=6)
    ours = owl_profile(model, target_linears(model), data, Sparsity(0.5), OWL).layer_sparsity
    modifier = WandaPruningModifier(sparsity=0.5, sparsity_profile="owl", owl_m=5, owl_lmbda=0.08)
    layers = {f"model.layers.{index}": layer for index, layer in enumerate(decoder_layers(model))}
    theirs = modifier._infer_owl_layer_sparsity(model, layers, [{"input_ids": data}])
    assert list(theirs.values()) == pytest.approx(ours, abs=1e-6)
