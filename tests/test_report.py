"""The reporter: golden Markdown and LaTeX on hand-written records, plots, significance, errors.

The records under tests/golden/report/records are the only place where written records stand
in for runs. They cover missing cells, two seeds in one cell, two bad records, a model without
a dense record, a perplexity-only record, a bold tie, and deltas of both signs. After an
intended change to the output, regenerate the expected files explicitly and read the diff:

    UPDATE_GOLDEN=1 pytest tests/test_report.py
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import re
import shlex
import shutil
import subprocess

import pytest
from PIL import Image

from harness.errors import HarnessError
from harness.report import ReportOutput, load_records, write_report
from harness.significance import item_scores, paired_bootstrap

GOLDEN = pathlib.Path(__file__).parent / "golden" / "report"
RECORDS = GOLDEN / "records"
EXPECTED = GOLDEN / "expected"
PLOTS = ("avg_acc_vs_sparsity", "ppl_vs_sparsity", "leap_training")


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[ReportOutput, pathlib.Path]:
    out = tmp_path_factory.mktemp("report")
    return write_report(RECORDS, out, stderr=True), out


def _text_outputs(out: pathlib.Path) -> dict[str, str]:
    """Every Markdown and LaTeX file, with the machine-specific records path made neutral."""
    return {
        path.name: path.read_text().replace(str(RECORDS), "<records>")
        for path in sorted(out.iterdir())
        if path.suffix in (".md", ".tex")
    }


def _rows(markdown: str) -> dict[tuple[str, str, str], list[str]]:
    """Value cells of a grouped Markdown table by (model, sparsity, method)."""
    rows: dict[tuple[str, str, str], list[str]] = {}
    model = label = ""
    for line in markdown.splitlines():
        if not line.startswith("| ") or line.startswith(("| Model", "| :--")):
            continue
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        model, label = cells[0] or model, cells[1] or label
        rows[(model, label, cells[2])] = cells[3:]
    return rows


def _write_record(directory: pathlib.Path, name: str, **fields: object) -> None:
    record = {"model": "m", "method": "admm", "sparsity": 0.5, "sparsity_label": "0.50", "seed": 0}
    record.update(fields)
    (directory / name).write_text(json.dumps(record))


def test_golden_markdown_and_latex(report: tuple[ReportOutput, pathlib.Path]) -> None:
    _, out = report
    actual = _text_outputs(out)
    if os.environ.get("UPDATE_GOLDEN") == "1":
        shutil.rmtree(EXPECTED, ignore_errors=True)
        EXPECTED.mkdir(parents=True)
        for name, text in actual.items():
            (EXPECTED / name).write_text(text)
    expected = {path.name: path.read_text() for path in sorted(EXPECTED.iterdir())}
    assert sorted(actual) == sorted(expected)
    for name, text in expected.items():
        assert actual[name] == text, f"{name} differs from its golden file (UPDATE_GOLDEN=1 to accept)"


def test_bad_records_are_skipped_and_named(report: tuple[ReportOutput, pathlib.Path]) -> None:
    output, _ = report
    assert any(w.startswith("skipped broken.json: not readable JSON") for w in output.warnings)
    assert "skipped tiny_llama/no_metrics.json: lacks metrics" in output.warnings


def test_main_table_cells(report: tuple[ReportOutput, pathlib.Path]) -> None:
    rows = _rows(report[0].main_markdown)
    # A missing cell is a dash, never a zero.
    assert set(rows[("tiny_llama", "0.60", "leap")]) == {"–"}
    assert rows[("tiny_llama", "0.60", "magnitude")][4:6] == ["–", "1520.30"]
    # Two seeds: mean ± std, and the row says how many.
    assert rows[("smollm2-135m", "0.50", "leap (2 seeds)")][4] == "**55.62 ± 0.88**"
    # Bold goes to the best pruned method, ties included; dense is never bold.
    piqa = {key[2]: cells[1] for key, cells in rows.items() if key[:2] == ("smollm2-135m", "0.50")}
    assert piqa == {
        "dense": "70.00",
        "magnitude": "56.20",
        "wanda": "**72.50**",
        "admm": "40.00",
        "leap (2 seeds)": "**72.50 ± 3.54**",
    }
    assert rows[("tiny_llama", "0.50", "leap")][4:] == ["41.50", "**77.80**", "−0.77", "–"]
    # Delta signs, and the dagger on a delta the bootstrap cannot tell from zero.
    assert rows[("smollm2-135m", "0.50", "leap (2 seeds)")][6:] == ["+14.38", "−4.37†"]
    assert rows[("smollm2-135m", "2:4", "leap")][6:] == ["+2.50†", "−18.75"]


def test_deltas_summary_mean(report: tuple[ReportOutput, pathlib.Path]) -> None:
    deltas = (report[1] / "deltas.md").read_text()
    assert "| Mean | 3 cells | 46.12 | 40.76 | **+5.37** |  |  |  |" in deltas


def test_missing_baseline_is_a_clear_error(tmp_path: pathlib.Path) -> None:
    with pytest.raises(HarnessError) as error:
        write_report(RECORDS, tmp_path, baseline="sparsegpt")
    assert str(error.value) == (
        f"baseline method 'sparsegpt' has no records in {RECORDS}/; "
        "pass --baseline with one of: dense, magnitude, wanda, admm, leap"
    )


def test_missing_target_skips_the_summary(tmp_path: pathlib.Path) -> None:
    output = write_report(RECORDS, tmp_path, target="sparsegpt", plots=False)
    assert "target method 'sparsegpt' has no records; deltas summary skipped" in output.warnings
    assert not (tmp_path / "deltas.md").exists()
    assert (tmp_path / "main.md").exists()


def test_unknown_format_is_an_error(tmp_path: pathlib.Path) -> None:
    with pytest.raises(HarnessError, match="unknown report format 'html'"):
        write_report(RECORDS, tmp_path, formats=("md", "html"))


def test_perplexity_only_records(tmp_path: pathlib.Path) -> None:
    results = tmp_path / "results"
    results.mkdir()
    _write_record(results, "admm.json", metrics={"wikitext2_ppl": 40.0})
    _write_record(results, "wanda.json", method="wanda", metrics={"wikitext2_ppl": 50.0})
    output = write_report(results, tmp_path / "report", target="wanda")
    assert output.main_markdown.splitlines()[2] == "| Model | Sparsity | Method | Wiki2 PPL |"
    assert _rows(output.main_markdown) == {("m", "0.50", "wanda"): ["50.00"], ("m", "0.50", "admm"): ["**40.00**"]}
    names = {path.name for path in output.files}
    assert "ppl_vs_sparsity.png" in names and "avg_acc_vs_sparsity.png" not in names
    assert "no record has an average accuracy; deltas summary skipped" in output.warnings


def test_a_profile_is_its_own_row(tmp_path: pathlib.Path) -> None:
    results = tmp_path / "results"
    results.mkdir()
    _write_record(results, "wanda.json", method="wanda", metrics={"wikitext2_ppl": 50.0})
    _write_record(results, "wanda-owl.json", method="wanda", metrics={"wikitext2_ppl": 45.0}, profile={"name": "owl"})
    _write_record(results, "admm.json", metrics={"wikitext2_ppl": 40.0})
    output = write_report(results, tmp_path / "report", target="wanda+owl")
    rows = _rows(output.main_markdown)
    assert list(rows) == [("m", "0.50", "wanda"), ("m", "0.50", "wanda+owl"), ("m", "0.50", "admm")]
    assert rows[("m", "0.50", "wanda+owl")] == ["45.00"]
    assert not any("superseded" in warning for warning in output.warnings)


def test_configs_of_one_method_are_rows_of_their_own(tmp_path: pathlib.Path) -> None:
    results = tmp_path / "results"
    results.mkdir()
    _write_record(results, "admm.json", metrics={"wikitext2_ppl": 40.0})
    for name, steps, lr, ppl in (("a", 32, 0.001, 52.0), ("b", 32, 0.008, 47.0), ("c", 64, 0.004, 45.0), ("d", 128, 0.001, 44.0)):
        newer = {} if name == "a" else {"sampling": "sequence"}  # a field the oldest record lacks: not in the names
        _write_record(
            results, f"leap-{name}.json", method="leap", config={"steps": steps, "lr": lr, "tau_end": 0.05, **newer}, metrics={"wikitext2_ppl": ppl},
            method_stats={"tokens_trained": steps * 1024},
        )
    _write_record(
        results, "leap-b-seed1.json", method="leap", seed=1, config={"steps": 32, "lr": 0.008, "tau_end": 0.05, "sampling": "sequence"}, metrics={"wikitext2_ppl": 49.0}
    )
    output = write_report(results, tmp_path / "report", target="leap(steps=32,lr=0.008)")
    rows = _rows(output.main_markdown)
    assert list(rows) == [
        ("m", "0.50", "admm"), ("m", "0.50", "leap(steps=32,lr=0.001)"), ("m", "0.50", "leap(steps=32,lr=0.008) (2 seeds)"),
        ("m", "0.50", "leap(steps=64,lr=0.004)"), ("m", "0.50", "leap(steps=128,lr=0.001)"),  # numbers ordered as numbers
    ]
    assert rows[("m", "0.50", "leap(steps=32,lr=0.008) (2 seeds)")][0].startswith("48.00")  # two seeds, one row
    assert not any("superseded" in warning for warning in output.warnings)
    plain = write_report(results, tmp_path / "plain", target="leap")  # the method's name alone: which row?
    assert "target 'leap' names no row; its method's rows are leap(steps=32,lr=0.001), leap(steps=32,lr=0.008), leap(steps=64,lr=0.004), leap(steps=128,lr=0.001): name one with --target; deltas summary skipped" in plain.warnings
    assert (tmp_path / "plain" / "cost.md").read_text().count("Tokens trained") == 1  # the method's own cost column once


def test_report_of_several_folders(tmp_path: pathlib.Path) -> None:
    for folder, method, ppl in (("paired", "admm", 40.0), ("study", "leap", 38.0)):
        (tmp_path / folder).mkdir()
        _write_record(tmp_path / folder, f"{method}.json", method=method, metrics={"wikitext2_ppl": ppl})
    output = write_report([tmp_path / "paired", tmp_path / "study"], tmp_path / "report")
    assert set(_rows(output.main_markdown)) == {("m", "0.50", "admm"), ("m", "0.50", "leap")}
    assert f"2 records from `{tmp_path / 'paired'}`, `{tmp_path / 'study'}`" in (tmp_path / "report" / "README.md").read_text()


def test_rerun_supersedes_the_older_record(tmp_path: pathlib.Path) -> None:
    _write_record(tmp_path, "a.json", metrics={"wikitext2_ppl": 40.0}, created="2026-11-30T10:00:00Z")
    _write_record(tmp_path, "b.json", metrics={"wikitext2_ppl": 99.0}, created="2026-11-29T10:00:00Z")
    records, warnings = load_records(tmp_path)
    assert [r["metrics"]["wikitext2_ppl"] for r in records] == [40.0]
    assert warnings == ["skipped b.json: superseded by a.json (same model, method, config, sparsity and seed)"]


def test_plots_are_valid_images(report: tuple[ReportOutput, pathlib.Path]) -> None:
    output, out = report
    for stem in PLOTS:
        with Image.open(out / f"{stem}.png") as image:
            image.verify()
            assert image.format == "PNG" and min(image.size) > 100
        pdf = (out / f"{stem}.pdf").read_bytes()
        assert pdf.startswith(b"%PDF-") and pdf.rstrip().endswith(b"%%EOF")
    assert {out / f"{stem}.{ext}" for stem in PLOTS for ext in ("png", "pdf")} <= set(output.files)


def test_latex_is_ascii(report: tuple[ReportOutput, pathlib.Path]) -> None:
    """Every symbol is spelled in LaTeX, so pdflatex needs no input encoding setup."""
    for path in report[1].glob("*.tex"):
        assert path.read_text().isascii(), path.name


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="pdflatex is not installed")
def test_latex_compiles(report: tuple[ReportOutput, pathlib.Path], tmp_path: pathlib.Path) -> None:
    tables = sorted(report[1].glob("*.tex"))
    body = "\n\\clearpage\n".join(f"\\input{{{path}}}" for path in tables)
    document = tmp_path / "report.tex"
    document.write_text(
        f"\\documentclass{{article}}\n\\usepackage{{booktabs}}\n\\begin{{document}}\n{body}\n\\end{{document}}\n"
    )
    run = subprocess.run(
        ["pdflatex", "-interaction=nonstopmode", "-halt-on-error", document.name],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout[-3000:]
    assert set(tables) == {path for path in report[0].files if path.suffix == ".tex"}
    assert {"main.tex", "deltas.tex", "paired.tex"} <= {path.name for path in tables}


def test_bootstrap_of_identical_results_is_not_significant() -> None:
    scores = {"piqa": {str(i): float(i % 2) for i in range(50)}}
    comparison = paired_bootstrap(scores, scores)
    assert comparison is not None
    assert comparison.average.delta == 0.0 and comparison.average.p_value == 1.0
    assert not comparison.per_task["piqa"].significant


def test_bootstrap_detects_a_clear_difference_reproducibly() -> None:
    a = {"piqa": {str(i): 1.0 for i in range(60)}}
    b = {"piqa": {str(i): float(i % 2) for i in range(60)}}
    first, second = paired_bootstrap(a, b), paired_bootstrap(a, b)
    assert first == second
    result = first.per_task["piqa"]
    assert result.delta == pytest.approx(0.5) and result.p_value < 0.001 and result.ci_low > 0


def test_bootstrap_uses_shared_items_and_weighs_tasks_equally() -> None:
    a = {"mmlu": {str(i): 1.0 for i in range(10)}, "piqa": {str(i): 0.0 for i in range(100)}, "boolq": {"0": 1.0}}
    b = {"mmlu": {str(i): 0.0 for i in range(12)}, "piqa": {str(i): 0.0 for i in range(100)}}
    comparison = paired_bootstrap(a, b)
    assert sorted(comparison.per_task) == ["mmlu", "piqa"]
    assert comparison.per_task["mmlu"].n_items == 10
    assert comparison.average.delta == pytest.approx(0.5) and comparison.average.n_items == 110
    assert paired_bootstrap({"piqa": {"0": 1.0}}, {"mmlu": {"0": 1.0}}) is None


def test_seeds_are_pooled_per_item() -> None:
    pooled = item_scores([{"piqa": {"0": 1, "1": 1}}, {"piqa": {"0": 0}}])
    assert pooled == {"piqa": {"0": 0.5, "1": 1.0}}


def test_reports_say_when_records_mix_machines_or_dtypes() -> None:
    from harness.report import mixing_warnings

    cpu = {"cpu": "Xeon", "cpu_flags": ["avx512_bf16", "amx_bf16"], "threads": 2}
    gpu = {**cpu, "gpu": "NVIDIA H200", "cuda": "12.8"}
    same = [{"model": "m", "dtype": "bfloat16", "hardware": cpu}, {"model": "m", "dtype": "bfloat16", "hardware": cpu}, {"model": "m", "dtype": "bfloat16"}]
    assert mixing_warnings(same) == []
    mixed = [*same, {"model": "m", "dtype": "float32", "hardware": gpu}]
    warnings = mixing_warnings(mixed)
    assert any("2 machines" in w and "NVIDIA H200 (CUDA 12.8): 1" in w and "Xeon [avx512_bf16+amx_bf16]: 2" in w for w in warnings)
    assert any("mix dtypes (bfloat16, float32)" in w for w in warnings)


def test_paired_ppl_ratio_known_answers() -> None:
    import numpy as np

    from harness.significance import paired_ppl_ratio

    rng = np.random.default_rng(1)
    b = rng.uniform(300, 900, size=50)  # summed NLL of 50 windows of 255 tokens
    same = paired_ppl_ratio(b.copy(), b, 255)
    assert same.ratio == 1.0 and same.ci_low == same.ci_high == 1.0 and not same.decided
    shifted = paired_ppl_ratio(b + 0.1 * 255, b, 255)  # every window 0.1 nats per token worse
    assert shifted.ratio == pytest.approx(math.exp(0.1)) and shifted.ci_low == pytest.approx(math.exp(0.1)) and shifted.decided
    a = b + rng.normal(0, 20, size=50)
    direct = math.exp(a.sum() / (50 * 255)) / math.exp(b.sum() / (50 * 255))
    assert paired_ppl_ratio(a, b, 255).ratio == pytest.approx(direct)


def test_paired_ppl_ratio_interval_covers_the_truth() -> None:
    """On synthetic paired windows with a known mean difference, the 95% interval covers the true
    ratio in about 95% of repetitions (binomial 99% band for 300 draws: 0.91-0.98)."""
    import numpy as np

    from harness.significance import paired_ppl_ratio

    rng = np.random.default_rng(7)
    tokens, true_shift, covered = 100, 0.02, 0
    for _ in range(300):
        b = rng.uniform(200, 600, size=80)
        a = b + tokens * (true_shift + rng.normal(0, 0.05, size=80))
        result = paired_ppl_ratio(a, b, tokens, seed=int(rng.integers(1 << 31)))
        covered += result.ci_low <= math.exp(true_shift) <= result.ci_high
    assert 0.91 <= covered / 300 <= 0.98


def test_perplexity_table_pairs_windows(tmp_path: pathlib.Path) -> None:
    import numpy as np

    rng = np.random.default_rng(0)
    base = rng.uniform(300, 900, size=40)
    tokens = 255

    def record(method: str, nll, label="0.50", sparsity=0.5):
        ppl = math.exp(np.sum(nll) / (len(nll) * tokens))
        return {"model": "m", "method": method, "sparsity": 0.0 if method == "dense" else sparsity, "sparsity_label": label, "seed": 0,
                "metrics": {"wikitext2_ppl": ppl}, "ppl_per_window": {"nll": list(map(float, nll)), "tokens": tokens}}

    records = [
        record("dense", base),
        record("admm", base + 0.3 * tokens + rng.normal(0, 5, 40)),
        record("leap", base + 0.25 * tokens + rng.normal(0, 5, 40)),
        record("wanda", base + 0.3 * tokens + rng.normal(0, 30, 40)),
        {"model": "m", "method": "magnitude", "sparsity": 0.5, "sparsity_label": "0.50", "seed": 0, "metrics": {"wikitext2_ppl": 500.0}},
    ]
    for index, item in enumerate(records):
        _write_record(tmp_path, f"r{index}.json", **item)
    write_report(tmp_path, tmp_path / "out", baseline="admm", plots=False)
    rows = _rows((tmp_path / "out" / "perplexity.md").read_text())
    leap, wanda, magnitude = rows[("m", "0.50", "leap")], rows[("m", "0.50", "wanda")], rows[("m", "0.50", "magnitude")]
    assert leap[1] == "40" and float(leap[2]) < 1 and not leap[2].endswith("†")  # decided for leap
    assert float(leap[4]) > 1 and not leap[4].endswith("†")  # decided: worse than dense
    assert magnitude[2:] == ["–"] * 4  # a record without per-window losses: empty, not an error
    assert "[" in wanda[3]
    verdicts = _rows((tmp_path / "out" / "verdicts.md").read_text())
    assert verdicts[("m", "0.50", "leap")][-1] == "decided for leap (by perplexity)"
    assert verdicts[("m", "0.50", "magnitude")][-1] == "undecided"


def test_exact_mcnemar_on_small_tables() -> None:
    from harness.significance import mcnemar_exact

    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(10, 2) == pytest.approx(2 * (1 + 12 + 66) / 4096)  # 2·P(X ≤ 2), X ~ Bin(12, 1/2)
    assert mcnemar_exact(5, 0) == pytest.approx(2 / 32)
    assert mcnemar_exact(3, 3) == 1.0 and mcnemar_exact(2, 9) == mcnemar_exact(9, 2)


def test_minimum_detectable_effect_closed_form() -> None:
    from statistics import NormalDist

    from harness.significance import PairedCounts, items_needed, minimum_detectable_effect

    z = NormalDist().inv_cdf(0.975) + NormalDist().inv_cdf(0.8)  # 2.8016
    assert minimum_detectable_effect(0.4, 400) == pytest.approx(z * 0.4 / 20)
    assert items_needed(0.4, z * 0.4 / 20) == 400
    counts = PairedCounts(both=50, only_a=10, only_b=6, neither=34)  # 100 items
    diffs = [1] * 10 + [-1] * 6 + [0] * 84
    mean = sum(diffs) / 100
    assert counts.delta == pytest.approx(0.04)
    assert counts.sd == pytest.approx(math.sqrt(sum((d - mean) ** 2 for d in diffs) / 99))


def test_margins_are_gold_minus_best_other() -> None:
    from harness.significance import margins

    out = margins({"piqa": {"0": [0, -5.0, -7.0], "1": [1, -5.0, -4.0]}, "mmlu": {"a/3": [2, -1.0, -3.0, -2.5, -0.5]}})
    assert out == {"piqa": {"0": 2.0, "1": 1.0}, "mmlu": {"a/3": -2.0}}  # gold -2.5, best other -0.5


def test_verdict_names_the_metrics_and_splits_when_they_disagree() -> None:
    import numpy as np

    from harness.report_stats import verdict
    from harness.report_tables import Results

    base = np.random.default_rng(3).uniform(300, 900, size=30)

    def record(method: str, nll, right: int) -> dict:
        per_item = {"piqa": {str(i): int(i < right) for i in range(100)}}
        return {"model": "m", "method": method, "sparsity": 0.5, "sparsity_label": "0.50", "seed": 0, "metrics": {"wikitext2_ppl": 1.0, "avg_acc": right / 100},
                "evaluation": {"tasks": ["piqa"]}, "per_item": per_item, "ppl_per_window": {"nll": list(map(float, nll)), "tokens": 255}}

    results = Results([record("admm", base, 50), record("leap", base + 10, 90)])
    assert verdict(results, "m", "0.50", "leap", "admm") == "split: perplexity for admm; accuracy for leap"
    results = Results([record("admm", base + 10, 50), record("leap", base, 90)])
    assert verdict(results, "m", "0.50", "leap", "admm") == "decided for leap (by perplexity, accuracy)"


REPO = pathlib.Path(__file__).resolve().parent.parent
COMMITTED_REPORTS = sorted(path.parent for path in (REPO / "reports").glob("*/README.md"))


@pytest.mark.slow
@pytest.mark.parametrize("folder", COMMITTED_REPORTS, ids=lambda path: path.name)
def test_committed_records_report_as_committed(folder: pathlib.Path, tmp_path: pathlib.Path, monkeypatch, capsys) -> None:
    """Each committed report, made again by the command its README quotes from the committed
    records, has the same files, tables and README: a change of code that moves a published
    number (or a report that was not re-made after the reporter changed) shows here."""
    from tests.helpers import run_cli

    command = shlex.split(re.search(r"Made with `harness report ([^`]*)`", (folder / "README.md").read_text()).group(1))
    command[command.index("--out") + 1] = str(tmp_path)
    monkeypatch.chdir(REPO)
    code, _, err = run_cli(monkeypatch, capsys, "report", *command)
    assert code == 0, err
    def texts(root: pathlib.Path) -> dict[str, str]:
        return {path.name: path.read_text().replace(str(tmp_path), f"reports/{folder.name}") for path in root.iterdir() if path.suffix in (".md", ".tex")}

    made, committed = texts(tmp_path), texts(folder)
    assert sorted(made) == sorted(committed), f"{folder.name}: re-make it with the command in its README"
    for name, text in committed.items():
        assert made[name] == text, f"{folder.name}/{name} no longer reports as committed"
