"""Runner and CLI on a tiny local model folder: records, resume, interruption, bad input."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from harness.methods.leap import Budget
from harness.plan import plan_cells
from harness.runner import run_sweep
from harness.settings import RunSettings
from harness.store import read_record
from tests.helpers import run_cli, tiny_model_folder


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return str(tiny_model_folder(tmp_path_factory.mktemp("tiny")))


def _settings(model_dir, out, **changes) -> RunSettings:
    base = dict(
        models=[model_dir],
        methods=["magnitude"],
        sparsities=["0.5", "0.6"],
        out=out,
        nsamples=2,
        seqlen=32,
        ppl_tokens=512,
        tasks="none",
        device="cpu",
        dtype="float32",
        progress=False,
    )
    base.update(changes)
    return RunSettings(**base)


def test_sweep_writes_one_record_per_cell(model_dir, tmp_path, data_dir):
    records = run_sweep(_settings(model_dir, tmp_path), log=lambda _: None).records
    assert [(r["method"], r["sparsity_label"]) for r in records] == [("dense", "0.00"), ("magnitude", "0.50"), ("magnitude", "0.60")]
    files = sorted(tmp_path.rglob("*.json"))
    assert len(files) == 3
    for record in records:
        assert record["realized_sparsity"] == pytest.approx(record["sparsity"], abs=1e-3)
        for key in ("model", "method", "sparsity", "seed", "config", "realized_sparsity", "metrics", "timings", "peak_rss_mb", "versions", "git_commit", "config_hash"):
            assert key in record
        assert record["metrics"]["wikitext2_ppl"] > 1
    dense, half, more = (r["metrics"]["wikitext2_ppl"] for r in records)
    assert dense != half != more
    assert records[1]["config"] == {"scope": "matrix"}
    assert set(records[1]["timings"]) >= {"load", "calibrate", "prune", "eval"}
    assert json.loads(files[0].read_text())["schema"] == 1
    for record in records:  # the per-window losses the paired ratios resample add up to the perplexity
        windows = record["ppl_per_window"]
        assert len(windows["nll"]) == record["evaluation"]["ppl_windows"] and windows["tokens"] == 31
        assert math.exp(sum(windows["nll"]) / (len(windows["nll"]) * windows["tokens"])) == pytest.approx(record["metrics"]["wikitext2_ppl"], rel=1e-5)
    hardware = records[0]["hardware"]
    assert hardware["cpu"] and hardware["threads"] >= 1 and isinstance(hardware["cpu_flags"], list) and "gpu" not in hardware


def test_cell_identity_holds_the_device_resolved_config(model_dir, tmp_path):
    """LEAP's budget depends on the device: a CPU cell must not stand in for the GPU cell."""
    cpu = _settings(model_dir, tmp_path, methods=["leap"], dtype="bfloat16")
    gpu = dataclasses.replace(cpu, device="cuda")
    cpu_leap, gpu_leap = (plan_cells(s.resolved())[1] for s in (cpu, gpu))
    assert cpu_leap.identity["config"]["steps"] == Budget.CPU[0]
    assert gpu_leap.identity["config"]["steps"] == Budget.GPU[0]
    assert cpu_leap.path != gpu_leap.path
    magnitude = _settings(model_dir, tmp_path)
    assert plan_cells(magnitude.resolved())[1].path == plan_cells(dataclasses.replace(magnitude, device="cuda").resolved())[1].path


def test_rerun_skips_finished_cells_and_fills_missing(model_dir, tmp_path, data_dir):
    settings = _settings(model_dir, tmp_path)
    first = run_sweep(settings, log=lambda _: None).records
    resolved = settings.resolved()
    missing = plan_cells(resolved)[2].path
    missing.unlink()
    kept = plan_cells(resolved)[1].path
    stamp = kept.stat().st_mtime_ns
    lines: list[str] = []
    second = run_sweep(settings, log=lines.append).records
    assert sum("skipping" in line for line in lines) == 2
    assert sum(line.endswith("running") for line in lines) == 1
    assert kept.stat().st_mtime_ns == stamp
    assert missing.exists()
    assert [r["config_hash"] for r in first] == [r["config_hash"] for r in second]


def test_changed_settings_make_new_cells(model_dir, tmp_path, data_dir):
    run_sweep(_settings(model_dir, tmp_path, sparsities=["0.5"]), log=lambda _: None)
    run_sweep(_settings(model_dir, tmp_path, sparsities=["0.5"], ppl_tokens=256), log=lambda _: None)
    assert len(list(tmp_path.rglob("*.json"))) == 4


def test_interrupted_sweep_loses_only_the_cell_in_progress(model_dir, tmp_path, data_dir, monkeypatch):
    """Ctrl-C during the second pruned cell: earlier records survive intact, no partial file is
    left, and a re-run computes only what is missing."""
    import harness.methods.magnitude as magnitude

    calls = {"n": 0}
    original = magnitude.MagnitudePruner.prune

    def interrupt_second(self, model, sparsity, ctx):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return original(self, model, sparsity, ctx)

    monkeypatch.setattr(magnitude.MagnitudePruner, "prune", interrupt_second)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(_settings(model_dir, tmp_path), log=lambda _: None)
    files = sorted(p.name for p in tmp_path.rglob("*") if p.is_file())
    assert len(files) == 2 and all(name.endswith(".json") and not name.startswith(".tmp") for name in files)
    for path in tmp_path.rglob("*.json"):
        read_record(path)
    monkeypatch.setattr(magnitude.MagnitudePruner, "prune", original)
    lines: list[str] = []
    run_sweep(_settings(model_dir, tmp_path), log=lines.append)
    assert sum(line.endswith("running") for line in lines) == 1
    assert len(list(tmp_path.rglob("*.json"))) == 3


def test_save_model_round_trip_keeps_sparsity_and_logits(model_dir, tmp_path, data_dir):
    """The saved folder loads back with from_pretrained to the pruned model: the same zero count,
    and the same NLL on every perplexity window as the run measured before saving."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from harness.evaluation.perplexity import wikitext2_windows, window_nlls
    from harness.models import needs_bos_per_window
    from harness.targets import count_zeros, target_linears

    saved = tmp_path / "saved"
    settings = _settings(model_dir, tmp_path / "res", sparsities=["0.6"], save_model=saved, include_dense=False)
    (record,) = run_sweep(settings, log=lambda _: None).records
    folders = [p.parent for p in saved.rglob("config.json")]
    assert len(folders) == 1
    reloaded = AutoModelForCausalLM.from_pretrained(folders[0], dtype=torch.float32)
    _, overall = count_zeros(target_linears(reloaded))
    assert overall == pytest.approx(record["realized_sparsity"])
    evaluation = record["evaluation"]
    tokenizer = AutoTokenizer.from_pretrained(folders[0])
    windows = wikitext2_windows(tokenizer, evaluation["ppl_seqlen"], evaluation["ppl_tokens"], needs_bos_per_window(reloaded), settings.data_dir)
    _, nlls = window_nlls(reloaded, windows)
    assert nlls == pytest.approx(record["ppl_per_window"]["nll"], rel=1e-6)


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--methods", "magnitud"], "unknown method 'magnitud'"),
        (["--sparsity", "1.2"], "outside [0, 1)"),
        (["--sparsity", "0.5,1.0"], "--sparsity 1.0 is outside [0, 1)"),
        (["--sparsity", "half"], "cannot read sparsity"),
        (["--model", "no-such-model"], "unknown model 'no-such-model'"),
        (["--set", "magnitude.nope=1"], "no option 'nope'"),
        (["--set", "magnitude.scope=diagonal"], "must be one of"),
        (["--set", "leap.steps=3"], "not in --methods"),
        (["--set", "garbage"], "METHOD.FIELD=VALUE"),
        (["--tasks", "nosuchtask"], "nosuchtask"),
        (["--seed", "x"], "--seed takes integers"),
        (["--device", "tpu"], "unknown device"),
    ],
)
def test_bad_input_gives_one_line_error(monkeypatch, capsys, tmp_path, args, needle):
    code, _, err = run_cli(monkeypatch, capsys, "run", "--out", str(tmp_path), "--tasks", "none", *args)
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1
    assert needle in err


def test_methods_flag_narrows_a_sweep_files_methods(monkeypatch, capsys, tmp_path, model_dir, data_dir):
    """The file's options of a method the command line drops lapse; `--set` of one still errors."""
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text("methods:\n  magnitude: {scope: row}\n  leap: {steps: 3}\n")
    common = ("--model", model_dir, "--out", str(tmp_path / "res"), "--tasks", "none", "--sparsity", "0.5", "--no-dense",
              "--nsamples", "2", "--seqlen", "32", "--ppl-tokens", "512", "--device", "cpu", "--dtype", "float32", "--no-report")
    code, _, err = run_cli(monkeypatch, capsys, "run", "--config", str(sweep), "--methods", "magnitude", *common)
    assert code == 0, err
    (record,) = [json.loads(path.read_text()) for path in (tmp_path / "res").rglob("*.json")]
    assert record["method"] == "magnitude" and record["config"]["scope"] == "row"
    code, _, err = run_cli(monkeypatch, capsys, "run", "--config", str(sweep), "--methods", "magnitude", "--set", "leap.steps=4", *common)
    assert code == 2 and "not in --methods: leap" in err


def test_missing_data_dir_is_a_clear_error(monkeypatch, capsys, tmp_path, model_dir):
    code, _, err = run_cli(monkeypatch, capsys, "run", "--model", model_dir, "--out", str(tmp_path), "--tasks", "none", "--data-dir", str(tmp_path / "nowhere"), "--device", "cpu")
    assert code == 2 and "missing data file" in err and "--data-dir" in err and err.count("\n") == 1


def test_unreadable_record_is_a_clear_error(monkeypatch, capsys, tmp_path, model_dir, data_dir):
    settings = _settings(model_dir, tmp_path, sparsities=["0.5"]).resolved()
    path = plan_cells(settings)[0].path
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    code, _, err = run_cli(
        monkeypatch, capsys, "run", "--model", model_dir, "--out", str(tmp_path), "--tasks", "none",
        "--nsamples", "2", "--seqlen", "32", "--ppl-tokens", "512", "--device", "cpu", "--dtype", "float32", "--no-report",
    )
    assert code == 2 and "unreadable record file" in err


def test_cli_run_prints_summary(monkeypatch, capsys, tmp_path, model_dir, data_dir):
    """The CLI path with every default that a user leaves alone, the data root included."""
    code, out, _ = run_cli(
        monkeypatch, capsys, "run", "--model", model_dir, "--out", str(tmp_path), "--tasks", "piqa", "--limit", "2", "--sparsity", "0.5",
        "--nsamples", "2", "--seqlen", "32", "--ppl-tokens", "512", "--device", "cpu", "--dtype", "float32", "--no-report",
    )
    assert code == 0
    assert "wikitext2_ppl" in out and "magnitude" in out and "dense" in out
    records = [json.loads(path.read_text()) for path in tmp_path.rglob("*.json")]
    assert len(records) == 2 and all(record["metrics"]["piqa_acc"] >= 0 for record in records)
    for record in records:  # each item's choice log-likelihoods, consistent with its correctness
        choices = record["per_item_choices"]["piqa"]
        assert choices.keys() == record["per_item"]["piqa"].keys()
        for key, (gold, *scores) in choices.items():
            assert len(scores) == 2 and record["per_item"]["piqa"][key] == int(scores.index(max(scores)) == gold)


def test_list_names_methods_models_suites(monkeypatch, capsys):
    code, out, _ = run_cli(monkeypatch, capsys, "list")
    assert code == 0
    for name in ("magnitude", "wanda", "sparsegpt", "admm", "leap", "smollm2-135m", "gemma3-270m", "leap6", "wanda7"):
        assert name in out


def test_cli_report_on_real_sweep_records(monkeypatch, capsys, tmp_path, model_dir, data_dir):
    run_sweep(_settings(model_dir, tmp_path / "res"), log=lambda _: None)
    code, out, _ = run_cli(monkeypatch, capsys, "report", str(tmp_path / "res"), "--baseline", "dense", "--out", str(tmp_path / "rep"))
    assert code == 0
    assert "magnitude" in out and (tmp_path / "rep" / "main.md").exists() and (tmp_path / "rep" / "main.tex").exists()
    index = (tmp_path / "rep" / "README.md").read_text()
    assert f"Made with `harness report {tmp_path / 'res'} --baseline dense --out {tmp_path / 'rep'}`" in index
    code, _, err = run_cli(monkeypatch, capsys, "report", str(tmp_path / "res"), "--baseline", "admm", "--out", str(tmp_path / "rep2"))
    assert code == 2 and "baseline method 'admm' has no records" in err
    code, _, err = run_cli(monkeypatch, capsys, "report", str(tmp_path / "nothing"))
    assert code == 2 and "does not exist" in err


def test_run_reports_only_its_own_sweep(monkeypatch, capsys, tmp_path, model_dir, data_dir):
    """Records already in the out folder (e.g. a committed reference run in a subfolder) stay out
    of the report that `harness run` writes at the end."""
    monkeypatch.chdir(tmp_path)
    run_sweep(_settings(model_dir, tmp_path / "res" / "older", methods=["wanda"], sparsities=["0.6"]), log=lambda _: None)
    code, _, _ = run_cli(
        monkeypatch, capsys, "run", "--model", model_dir, "--out", str(tmp_path / "res"), "--tasks", "none", "--sparsity", "0.5",
        "--nsamples", "2", "--seqlen", "32", "--ppl-tokens", "512", "--device", "cpu", "--dtype", "float32",
    )
    assert code == 0
    main = (tmp_path / "reports" / "latest" / "main.md").read_text()
    assert "magnitude" in main and "wanda" not in main and "0.60" not in main
