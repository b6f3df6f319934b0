"""Sweep files, cell filters and failure handling of the local executor."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.errors import HarnessError
from harness.plan import plan_cells
from harness.runner import run_sweep
from harness.settings import RunSettings
from harness.sparsity import Sparsity
from harness.sweep import load_sweep
from tests.helpers import tiny_model_folder

SWEEPS = Path(__file__).resolve().parent.parent / "sweeps"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return str(tiny_model_folder(tmp_path_factory.mktemp("tiny")))


@pytest.mark.parametrize("name", ["cpu-smoke.yaml", "paper.yaml"])
def test_shipped_sweeps_validate(name):
    settings = load_sweep(SWEEPS / name)
    cells = plan_cells(RunSettings(**settings).resolved())
    assert {"magnitude", "wanda", "sparsegpt", "admm", "leap"} <= {c.cell.method for c in cells}


def _write(tmp_path, text: str) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(text)
    return path


def test_sweep_file_sets_methods_and_overrides(tmp_path):
    settings = load_sweep(_write(tmp_path, "models: smollm2-135m\nmethods:\n  magnitude: {scope: row}\n  wanda:\nsparsities: [0.5, '2:4']\nseeds: [0, 1]\nlimit: 20\n"))
    assert settings["methods"] == ("magnitude", "wanda")
    assert settings["overrides"] == {"magnitude": {"scope": "row"}}
    assert settings["sparsities"] == (Sparsity(0.5), Sparsity.parse("2:4")) and settings["seeds"] == (0, 1) and settings["limit"] == 20


@pytest.mark.parametrize(
    "text,needle",
    [
        ("models: [a]\nmodles: [b]\n", ":2: unknown key 'modles'"),
        ("seeds: [0, x]\n", ":1: seeds takes an integer"),
        ("sparsities: [1.5]\n", ":1: sparsities"),
        ("methods:\n  magnitude: {scope: diagonal}\n", ":2: magnitude.scope must be one of"),
        ("methods:\n  wanda: {}\n  magnitud: {}\n", ":3: unknown method 'magnitud'"),
        ("limit: -3\n", ":1: limit takes a positive integer"),
        ("- just\n- a list\n", "a sweep file is a mapping"),
        ("models: [a\n", "not valid YAML"),
    ],
)
def test_sweep_file_errors_name_line_and_key(tmp_path, text, needle):
    with pytest.raises(HarnessError) as info:
        load_sweep(_write(tmp_path, text))
    assert needle in str(info.value)


def _settings(model_dir, out, **changes) -> RunSettings:
    base = dict(models=[model_dir], methods=["magnitude"], sparsities=["0.5", "0.6"], out=out, nsamples=2, seqlen=32, ppl_tokens=256, tasks="none", device="cpu", dtype="float32", progress=False)
    base.update(changes)
    return RunSettings(**base)


def test_unquoted_nm_patterns_are_sparsities_not_base_60_numbers(tmp_path):
    settings = load_sweep(_write(tmp_path, "sparsities: [0.5, 2:4, 4:8]\nnsamples: 32\n"))
    assert [s.label() for s in settings["sparsities"]] == ["0.50", "2:4", "4:8"] and settings["nsamples"] == 32


def test_cell_filter_runs_one_cell(model_dir, tmp_path, data_dir):
    outcome = run_sweep(_settings(model_dir, tmp_path, cell_index=2), log=lambda _: None)
    assert [(r["method"], r["sparsity_label"]) for r in outcome.records] == [("magnitude", "0.60")]
    assert len(list(tmp_path.rglob("*.json"))) == 1
    with pytest.raises(HarnessError, match="outside the plan's 3 cells"):
        run_sweep(_settings(model_dir, tmp_path, cell_index=3), log=lambda _: None)


def test_failing_cell_is_reported_and_others_go_on(model_dir, tmp_path, data_dir):
    broken = tmp_path / "broken-model"  # passes the up-front check (a folder with a config.json), fails to load
    broken.mkdir()
    (broken / "config.json").write_text("{}")
    outcome = run_sweep(_settings(model_dir, tmp_path / "res", models=[str(broken), model_dir], sparsities=["0.5"]), log=lambda _: None)
    assert {f.cell.model for f in outcome.failures} == {str(broken)}
    assert all("cannot load model" in f.error for f in outcome.failures)
    assert len(outcome.records) == 2 and all(r["model"] == model_dir for r in outcome.records)
