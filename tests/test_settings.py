"""The run-settings schema and the typed plan: bad input refused before any work, exact sparsity
labels, the README's options table, record identities that match the committed records, the
installed package layout, and no import cycles inside the package."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from importlib.metadata import distribution
from pathlib import Path

import pytest

from harness.cli import run_options_table
from harness.plan import plan_cells
from harness.settings import SETTINGS, RunSettings
from harness.sparsity import Sparsity
from harness.sweep import load_sweep
from tests.helpers import run_cli, tiny_model_folder

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return str(tiny_model_folder(tmp_path_factory.mktemp("tiny")))


@pytest.fixture
def no_model_loads(monkeypatch):
    """Fails the test if any cell starts: refusals must come before a model is loaded."""

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the bad input was refused")

    monkeypatch.setattr("harness.cell.load_model", refuse)


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--seqlen", "-1"], "--seqlen takes an integer of at least 2"),
        (["--ppl-tokens", "0"], "--ppl-tokens takes a positive integer or 'all'"),
        (["--ppl-tokens", "100", "--seqlen", "512"], "less than one perplexity window"),
        (["--model", "/nonexistent/model"], "model folder /nonexistent/model does not exist"),
        (["--model", "nobody/not-cached-model"], "not in the local Hugging Face cache"),
        (["--nsamples", "0", "--methods", "wanda"], "--nsamples takes a positive integer"),
        (["--limit", "-3"], "--limit takes a positive integer"),
        (["--methods", ""], "--methods is empty"),
        (["--methods", "dense", "--no-dense"], "leaves nothing to run"),
        (["--methods", "dsnot", "--sparsity", "2:4"], "dsnot does not support N:M"),
        (["--methods", "leap", "--sparsity", "2:4", "--set", "leap.final_mask=threshold"], "cannot give N:M sparsity (2:4); use leap.final_mask=topk"),
        (["--targets", "(unclosed"], "--targets is not a valid regular expression"),
        (["--dtype", "int8"], "--dtype takes one of auto, float32, bfloat16, float16"),
        (["--cell", "-1"], "--cell takes an integer of at least 0"),
        (["--eval-batch-size", "big"], "--eval-batch-size takes a positive integer or 'auto'"),
        (["--seed", "-2"], "--seed takes integers"),
    ],
)
def test_bad_input_is_refused_up_front(monkeypatch, capsys, tmp_path, no_model_loads, args, needle):
    code, out, err = run_cli(monkeypatch, capsys, "run", "--out", str(tmp_path), "--tasks", "none", "--device", "cpu", *args)
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err + out
    assert needle in err
    assert not any(tmp_path.iterdir())


def test_empty_methods_error_says_how_to_evaluate_dense(monkeypatch, capsys, tmp_path, no_model_loads):
    _, _, err = run_cli(monkeypatch, capsys, "run", "--out", str(tmp_path), "--methods", "")
    assert "--methods dense" in err


def test_dense_alone(model_dir, tmp_path, data_dir):
    from harness.runner import run_sweep

    settings = RunSettings(models=model_dir, methods="dense", out=tmp_path, nsamples=2, seqlen=32, ppl_tokens=256, tasks="none", device="cpu", dtype="float32", progress=False)
    records = run_sweep(settings, log=lambda _: None).records
    assert [(r["method"], r["sparsity"]) for r in records] == [("dense", 0.0)]


@pytest.mark.parametrize("text,label", [("0.125", "0.125"), ("0.5", "0.50"), ("0.555", "0.555"), ("0.999", "0.999"), ("2:4", "2:4"), ("0.60", "0.60")])
def test_sparsity_labels_round_trip_exactly(text, label):
    spec = Sparsity.parse(text)
    assert spec.label() == label
    assert Sparsity.parse(spec.label()) == spec


def test_sparsity_0125_reaches_the_record_exactly(model_dir, tmp_path, data_dir, monkeypatch, capsys):
    code, _, _ = run_cli(
        monkeypatch, capsys, "run", "--model", model_dir, "--out", str(tmp_path), "--tasks", "none", "--sparsity", "0.125",
        "--nsamples", "2", "--seqlen", "32", "--ppl-tokens", "256", "--device", "cpu", "--dtype", "float32", "--no-report", "--no-dense",
    )
    assert code == 0
    [path] = tmp_path.rglob("*.json")
    assert path.name.startswith("sparsity-0.125_seed0_")
    record = json.loads(path.read_text())
    assert record["sparsity"] == 0.125 and record["sparsity_label"] == "0.125"
    assert record["realized_sparsity"] == 0.125  # every tiny matrix has a multiple of 8 entries


def test_perplexity_window_is_its_own_setting(model_dir, tmp_path, data_dir):
    from harness.runner import run_sweep

    assert RunSettings(device="cpu", seqlen=128).resolved().ppl_seqlen == 128  # follows --seqlen by default
    settings = RunSettings(models=model_dir, methods="dense", out=tmp_path, nsamples=2, seqlen=32, ppl_seqlen=64, ppl_tokens=256, tasks="none", device="cpu", dtype="float32", progress=False)
    [record] = run_sweep(settings, log=lambda _: None).records
    assert record["evaluation"]["ppl_seqlen"] == 64 and record["evaluation"]["ppl_windows"] == 4
    assert load_sweep(ROOT / "sweeps" / "paper.yaml")["ppl_seqlen"] == 4096


def test_settings_parse_once_into_types():
    settings = RunSettings(models="a/b, ./c", sparsities="0.5,2:4,0.5", seeds="0,1", nsamples="8", limit="all", tasks="leap6,piqa", device="cpu")
    assert settings.models == ("a/b", "./c")
    assert settings.sparsities == (Sparsity(0.5), Sparsity.parse("2:4"))
    assert settings.seeds == (0, 1) and settings.nsamples == 8 and settings.limit is None
    assert settings.tasks == ("mmlu", "piqa", "arc_easy", "arc_challenge", "winogrande", "openbookqa")
    assert RunSettings(**{f: getattr(settings, f) for f in SETTINGS}) == settings  # typed values pass unchanged


def test_device_defaults_are_decided_in_one_place():
    cpu, gpu = RunSettings(device="cpu").resolved(), RunSettings(device="cuda").resolved()
    assert (cpu.nsamples, cpu.seqlen, cpu.limit, cpu.dtype) == (32, 512, 20, "float32")
    assert (gpu.nsamples, gpu.seqlen, gpu.limit, gpu.dtype) == (128, 2048, None, "bfloat16")
    assert RunSettings(device="cpu", limit="all", dtype="bfloat16").resolved().limit is None
    assert cpu.is_resolved and not RunSettings(device="cpu").is_resolved


def test_readme_options_table_is_the_schema():
    readme = (ROOT / "README.md").read_text()
    assert run_options_table() in readme, "regenerate with: python -c 'from harness.cli import run_options_table; print(run_options_table())'"


# One other valid value per setting, against the base plan of the identity test below.
OTHER_VALUES = {
    "models": "other-model", "methods": "sparsegpt,leap", "sparsities": "0.6", "seeds": "1",
    "nsamples": "16", "seqlen": "256", "calibration": "c4-train", "ppl_seqlen": "128", "ppl_tokens": "4096",
    "tasks": "piqa", "limit": "10", "mmlu_limit": "5", "hellaswag": "normalized", "dtype": "bfloat16",
    "target_pattern": "mlp", "profile": "uniform", "owl_lambda": "0.1", "owl_m": "4",
    "out": "elsewhere", "eval_batch_size": "4", "device": "cuda", "data_dir": "elsewhere", "include_dense": False,
    "force": True, "save_model": "elsewhere", "executor": "ray", "address": "auto", "cell_index": "0", "report": False,
}


def test_a_setting_changes_the_cell_identity_exactly_when_the_schema_says_so(tmp_path):
    """A setting declared `identity` changes the hash of some planned cell (or, for the grid's
    axes, the cells themselves); any other leaves every cell's hash alone. A new setting must be
    added here, and so declared one way or the other."""
    assert set(OTHER_VALUES) == set(SETTINGS)
    # every device-dependent default pinned, LEAP's budget, recipe and autocast too: the device
    # itself is outside the identity, what it resolves (these defaults, LEAP's budget) is inside
    pinned_leap = {"steps": "8", "batch_size": "2", "grad_accum": "1", "seqlen": "64", "autocast_bf16": "false", "recipe": "paper"}
    base = dict(models="smollm2-135m", methods="wanda,leap", sparsities="0.5", seeds="0", nsamples="32", seqlen="512", calibration="c4-local",
                tasks="mmlu,hellaswag,piqa", limit="20", dtype="float32", device="cpu", profile="owl", out=str(tmp_path),
                overrides={"leap": pinned_leap})

    def hashes(**changed):
        return {planned.cell: planned.config_hash for planned in plan_cells(RunSettings(**{**base, **changed}).resolved())}

    before = hashes()
    for name, value in OTHER_VALUES.items():
        after = hashes(**{name: str(tmp_path / value) if value == "elsewhere" else value})
        common = before.keys() & after.keys()
        rehashed = any(before[cell] != after[cell] for cell in common)
        if SETTINGS[name].identity:
            assert rehashed or before.keys() != after.keys(), f"{name} is declared part of the identity but changes no cell's"
        else:
            assert common and not rehashed, f"{name} is declared outside the identity but changes it"


def test_every_setting_is_a_cli_option_and_the_sweep_keys_come_from_it():
    from harness.cli import run

    options = {opt for param in run.params for opt in param.opts}
    assert {spec.option for spec in SETTINGS.values()} <= options
    with pytest.raises(Exception, match="unknown key 'force'"):
        load_sweep(_sweep_file("force: true\n"))


def _sweep_file(text: str) -> Path:
    import tempfile

    path = Path(tempfile.mkdtemp()) / "sweep.yaml"
    path.write_text(text)
    return path


def _planned_paths(settings: RunSettings) -> dict[str, Path]:
    return {f"{p.cell.method}@{p.cell.sparsity.label()}": p.path for p in plan_cells(settings.resolved())}


def test_identities_match_the_committed_reference_records():
    """The schema and the typed plan name cells exactly as before: re-running the reference sweep
    skips its committed records (LEAP's are older than the device-resolved budget; README)."""
    paths = _planned_paths(RunSettings(**load_sweep(ROOT / "sweeps" / "cpu-smoke.yaml")))
    for key, path in paths.items():
        if not key.startswith("leap"):
            assert (ROOT / path).exists(), key


def test_no_bare_methods_package_outside_the_repository(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    probe = subprocess.run([sys.executable, "-c", "import methods"], cwd=tmp_path, capture_output=True, text=True, env=env)
    assert probe.returncode != 0 and "No module named 'methods'" in probe.stderr
    harness = Path(sys.executable).parent / "harness"
    listing = subprocess.run([str(harness), "list"], cwd=tmp_path, capture_output=True, text=True, env=env, check=True).stdout
    built_in = [point.name for point in distribution("leap-harness").entry_points if point.group == "harness.pruners"]
    assert len(built_in) >= 7
    for name in built_in:
        assert re.search(rf"^  {name} +\S", listing, re.MULTILINE), name
    assert "cannot load" not in listing


def _imports(path: Path, package: str) -> set[str]:
    """Modules of `package` that the file imports, at any depth of the file."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return {name for name in names if name.startswith(package)}


def _module_files() -> dict[str, Path]:
    files = {}
    for root, prefix in ((ROOT / "harness", "harness"), (ROOT / "methods", "harness.methods")):
        for path in root.rglob("*.py"):
            parts = path.relative_to(root).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            files[".".join((prefix, *parts))] = path
    return files


def test_no_import_cycles():
    files = _module_files()
    graph = {module: {name for name in _imports(path, "harness") if name in files and name != module} for module, path in files.items()}
    graph["harness"] = set()  # the package's lazy plugin API imports nothing at import time
    visiting, done, cycles = set(), set(), []

    def visit(module: str, trail: list[str]) -> None:
        if module in done:
            return
        if module in visiting:
            cycles.append(trail[trail.index(module):] + [module])
            return
        visiting.add(module)
        for name in sorted(graph.get(module, ())):
            visit(name, [*trail, module])
        visiting.discard(module)
        done.add(module)

    for module in sorted(graph):
        visit(module, [])
    assert not cycles, " ; ".join(" -> ".join(cycle) for cycle in cycles)


def test_mmlu_limit_enters_the_identity_only_where_it_differs():
    same = plan_cells(RunSettings(device="cpu", limit=20).resolved())[0].identity["evaluation"]
    assert "mmlu_limit" not in same  # cells from before the setting keep their names
    apart = plan_cells(RunSettings(device="cpu", limit="all", mmlu_limit=20).resolved())[0].identity["evaluation"]
    assert apart["limit"] is None and apart["mmlu_limit"] == 20
