"""`harness report`: read every record under a results folder, write its tables as Markdown
and LaTeX, its plots, and a README index, so a sweep's outcome reads like the paper's tables.

What the tables say lives in `harness.report_tables`; this module reads records and writes
files. Both formats render the same `Table`, so they cannot disagree on a number or a mark.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from harness.errors import HarnessError
from harness.plots import write_plots
from harness.provenance import hardware_label
from harness.settings import DEFAULT_BASELINE, DEFAULT_TARGET
from harness.store import method_of_row, row_name
from harness.report_tables import (
    AVG,
    PPL,
    Cell,
    Results,
    Table,
    cost_table,
    deltas_table,
    main_table,
    per_task_table,
    significance_table,
    stderr_table,
)
from harness.report_stats import fidelity_table, flips_table, paired_accuracy_table, perplexity_table, power_table, verdicts_table

REQUIRED_FIELDS = ("model", "method", "sparsity", "metrics")
SUFFIXES = {"md": ".md", "latex": ".tex"}
DESCRIPTIONS = {
    "main": "Main table: task accuracies, average, perplexity, Δ vs baseline and dense",
    "deltas": "Target vs baseline per model × sparsity, and the mean delta",
    "per_task": "Per-task accuracy and normalised accuracy",
    "stderr": "Standard errors of the task accuracies",
    "cost": "Pruning cost: time per phase, peak memory, and each method's own cost columns (e.g. tokens trained)",
    "significance": "Paired bootstrap per task and on the average, vs the baseline",
    "perplexity": "Paired perplexity ratios vs the baseline and dense, with intervals over windows",
    "fidelity": "Fidelity to the dense model: KL divergence and top-1 agreement, with intervals",
    "paired": "Paired accuracy vs the baseline: exact McNemar, minimum detectable effect, gold-answer margin",
    "flips": "Answer flips against the dense model (correct → wrong, wrong → correct)",
    "power": "Items per task that a given effect needs, from the observed discordance",
    "verdicts": "One verdict per comparison with the baseline, and the metrics that decided it",
}
_LATEX_ESCAPES = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "<": r"\textless{}",
    ">": r"\textgreater{}",
    "|": r"\textbar{}",
    "±": r"$\pm$",
    "–": "--",
    "−": "$-$",
    "Δ": r"$\Delta$",
    "†": r"$^\dagger$",
    "≥": r"$\geq$",
    "×": r"$\times$",
    "→": r"$\rightarrow$",
    "‖": r"$\|$",
}


@dataclass
class ReportOutput:
    files: list[pathlib.Path]  # everything written
    main_markdown: str  # the main table as Markdown, for printing to the terminal
    warnings: list[str]  # e.g. skipped unreadable records


def load_records(*results_dirs: pathlib.Path) -> tuple[list[dict], list[str]]:
    """Every readable record under the `results_dirs`, and a warning naming each file left out
    (relative to its folder, which is named too when there are several).

    A file is left out when it is not a JSON record, or when a later record (by `created`)
    holds the same model, method, config, sparsity and seed: a rerun supersedes, it is not a new seed.
    """
    kept: dict[tuple, tuple[pathlib.PurePath, dict]] = {}
    warnings: list[str] = []
    paths = [(folder, path) for folder in results_dirs for path in sorted(folder.rglob("*.json"))]
    for folder, path in paths:
        name = path.relative_to(folder if len(results_dirs) == 1 else folder.parent)
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            warnings.append(f"skipped {name}: not readable JSON ({error})")
            continue
        problem = _record_problem(record)
        if problem:
            warnings.append(f"skipped {name}: {problem}")
            continue
        key = (record["model"], row_name(record), record.get("sparsity_label", record["sparsity"]), record.get("seed"), _config_key(record))
        if key in kept:
            older, newer = sorted([kept[key], (name, record)], key=lambda item: str(item[1].get("created", "")))
            warnings.append(f"skipped {older[0]}: superseded by {newer[0]} (same model, method, config, sparsity and seed)")
            kept[key] = newer
        else:
            kept[key] = (name, record)
    return [record for _, record in kept.values()], warnings


def _config_key(record: dict) -> str:
    return json.dumps(record.get("config") or {}, sort_keys=True)


def with_variant_rows(records: list[dict]) -> list[dict]:
    """The records, each with its report `row`: the method (`row_name`), and where one method
    ran with several configs in the same cell (model and sparsity), the config fields that tell
    them apart there, e.g. `leap(steps=32,lr=0.008)` beside `leap(steps=256,lr=0.001)`; a
    method's rows are named by the same fields at every sparsity. Seeds of one config share a row."""
    cells: dict[tuple, dict[str, dict]] = {}
    for record in records:
        cell = (row_name(record), record["model"], record.get("sparsity_label", record["sparsity"]))
        cells.setdefault(cell, {})[_config_key(record)] = record.get("config") or {}
    telling: dict[str, list[str]] = {}  # base row -> the config fields that tell its variants apart
    for (base, *_), variants in cells.items():
        telling[base] = list(dict.fromkeys([*telling.get(base, []), *_telling_fields(list(variants.values()))]))
    rows = []
    for record in records:
        base, config = row_name(record), record.get("config") or {}
        fields = telling.get(base)
        row = f"{base}(" + ",".join(f"{key}={_shown(config.get(key, '?'))}" for key in fields) + ")" if fields else base
        rows.append({**record, "row": row})
    return rows


def _telling_fields(configs: list[dict]) -> list[str]:
    """The fields that tell `configs` apart: those with two or more values among the configs that
    have them (a field older records lack, with one value elsewhere, says little), or, where those
    leave two configs with one name, every field that differs."""
    keys = list(dict.fromkeys(key for config in configs for key in config))
    varied = [key for key in keys if len({json.dumps(config[key]) for config in configs if key in config}) > 1]
    names = {json.dumps([config.get(key, "?") for key in varied]) for config in configs}
    if len(names) == len(configs):
        return varied
    return [key for key in keys if len({json.dumps(config.get(key)) for config in configs}) > 1]


def _shown(value: object) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _record_problem(record: object) -> str | None:
    if not isinstance(record, dict):
        return "not a JSON object"
    missing = [name for name in REQUIRED_FIELDS if name not in record]
    if missing:
        return f"lacks {', '.join(missing)}"
    if not isinstance(record["metrics"], dict):
        return "metrics is not an object"
    if not isinstance(record["sparsity"], (int, float)):
        return "sparsity is not a number"
    return None


def write_report(
    results_dir: pathlib.Path | Sequence[pathlib.Path],
    out_dir: pathlib.Path,
    *,
    baseline: str = DEFAULT_BASELINE,
    target: str = DEFAULT_TARGET,
    formats: Sequence[str] = ("md", "latex"),
    stderr: bool = False,
    plots: bool = True,
    command: str | None = None,
    records: list[dict] | None = None,
) -> ReportOutput:
    """Write the report of every record under `results_dir` (one folder or several; or of
    `records`, e.g. one sweep's) into `out_dir`; `command`, the command line that made it, is
    quoted in the folder's README.md.

    Raises HarnessError for an unknown format, no readable record, or a baseline without records.
    """
    unknown = [name for name in formats if name not in SUFFIXES]
    if unknown:
        raise HarnessError(f"unknown report format {unknown[0]!r}; choose from {', '.join(SUFFIXES)}")
    folders = [results_dir] if isinstance(results_dir, pathlib.Path) else list(results_dir)
    where = ", ".join(f"{folder}/" for folder in folders)
    records, warnings = load_records(*folders) if records is None else (records, [])
    if not records:
        raise HarnessError(f"no readable records in {where}; run `harness run` first")
    warnings = [*warnings, *mixing_warnings(records)]
    results = Results(with_variant_rows(records))
    if baseline not in results.methods:
        raise HarnessError(
            f"baseline method {baseline!r} has no records in {where}; "
            f"pass --baseline with one of: {', '.join(results.methods)}"
        )
    tables = _tables(results, baseline, target, stderr, warnings)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = []
    for name, table in tables.items():
        for fmt in formats:
            path = out_dir / f"{name}{SUFFIXES[fmt]}"
            path.write_text(render_markdown(table) if fmt == "md" else render_latex(table))
            files.append(path)
    descriptions = dict(DESCRIPTIONS)
    if plots:
        plot_files, plot_descriptions = write_plots(results, out_dir)
        files += plot_files
        descriptions.update(plot_descriptions)
    main_markdown = render_markdown(tables["main"])
    readme = out_dir / "README.md"
    readme.write_text(_index(folders, len(records), baseline, target, files, descriptions, warnings, main_markdown, command))
    return ReportOutput([*files, readme], main_markdown, warnings)


def mixing_warnings(records: list[dict]) -> list[str]:
    """Warnings when the records compared come from different machines, or a model's records
    from different dtypes: bfloat16 numbers can move between machines by near-tie items."""
    warnings = []
    machines: dict[str, int] = {}
    for record in records:
        label = hardware_label(record.get("hardware"))
        if label:
            machines[label] = machines.get(label, 0) + 1
    if len(machines) > 1:
        listed = "; ".join(f"{label}: {count}" for label, count in sorted(machines.items()))
        warnings.append(f"the records come from {len(machines)} machines ({listed}); bfloat16 numbers may differ between machines, float32 ones reproduce")
    for model in sorted({record["model"] for record in records}):
        dtypes = sorted({record["dtype"] for record in records if record["model"] == model and record.get("dtype")})
        if len(dtypes) > 1:
            warnings.append(f"the records of {model} mix dtypes ({', '.join(dtypes)}); compare methods within one dtype")
    return warnings


def _tables(results: Results, baseline: str, target: str, stderr: bool, warnings: list[str]) -> dict[str, Table]:
    """The report's tables by file name; a summary that cannot be made becomes a warning."""
    tables = {"main": main_table(results, baseline)}
    if not results.groups:
        warnings.append("no pruned records yet: the tables have no rows")
    if target not in results.methods:
        rows = [row for row in results.methods if method_of_row(row) == target]
        if rows:
            warnings.append(f"target {target!r} names no row; its method's rows are {', '.join(rows)}: name one with --target; deltas summary skipped")
        else:
            warnings.append(f"target method {target!r} has no records; deltas summary skipped")
    elif target == baseline:
        warnings.append(f"target and baseline are both {target!r}; deltas summary skipped")
    elif not results.has(AVG):
        warnings.append("no record has an average accuracy; deltas summary skipped")
    else:
        tables["deltas"] = deltas_table(results, target, baseline)
    if results.tasks:
        tables["per_task"] = per_task_table(results)
        if stderr:
            tables["stderr"] = stderr_table(results)
    elif stderr:
        warnings.append("no record has task accuracies; stderr table skipped")
    tables["cost"] = cost_table(results)
    tables["significance"] = significance_table(results, baseline)
    if results.has(PPL):
        tables["perplexity"] = perplexity_table(results, baseline)
        tables["fidelity"] = fidelity_table(results)
    if results.tasks:
        tables["paired"] = paired_accuracy_table(results, baseline)
        tables["flips"] = flips_table(results)
        if target in results.methods and target != baseline:
            tables["power"] = power_table(results, target, baseline)
    tables["verdicts"] = verdicts_table(results, baseline)
    return tables


def render_markdown(table: Table) -> str:
    """GitHub-flavoured Markdown: a heading, the table, then its notes as a list."""

    def row(cells: Iterable[str]) -> str:
        return "| " + " | ".join(cells) + " |"

    def cell(entry: Cell) -> str:
        text = entry.text.replace("|", r"\|")
        return (f"**{text}**" if entry.bold and text else text) + entry.mark

    values = len(table.headers) - table.n_labels
    lines = [
        f"### {table.title}",
        "",
        row(header.replace("|", r"\|") for header in table.headers),
        row([":--"] * table.n_labels + ["--:"] * values),
        *(row(map(cell, cells)) for cells in table.rows),
    ]
    if table.notes:
        lines += ["", *(f"- {note}" for note in table.notes)]
    return "\n".join(lines) + "\n"


def latex_escape(text: str) -> str:
    """Text safe for LaTeX (pdflatex, default encoding): specials escaped, symbols as math."""
    return "".join(_LATEX_ESCAPES.get(char, char) for char in text)


def render_latex(table: Table) -> str:
    """A booktabs `tabular` with a rule between groups; notes follow as footnote-size lines."""

    def row(cells: Iterable[str]) -> str:
        return " & ".join(cells) + r" \\"

    def cell(entry: Cell) -> str:
        text = latex_escape(entry.text)
        return (rf"\textbf{{{text}}}" if entry.bold and text else text) + latex_escape(entry.mark)

    spec = "l" * table.n_labels + "r" * (len(table.headers) - table.n_labels)
    lines = [f"% {table.title}", rf"\begin{{tabular}}{{{spec}}}", r"\toprule", row(map(latex_escape, table.headers))]
    for i, cells in enumerate(table.rows):
        if i == 0 or i in table.group_starts:
            lines.append(r"\midrule")
        lines.append(row(map(cell, cells)))
    lines += [r"\bottomrule", r"\end{tabular}"]
    if table.notes:
        lines += ["", r"\smallskip", *(rf"{{\footnotesize {latex_escape(note)}\par}}" for note in table.notes)]
    return "\n".join(lines) + "\n"


def _index(
    folders: list[pathlib.Path],
    n_records: int,
    baseline: str,
    target: str,
    files: list[pathlib.Path],
    descriptions: dict[str, str],
    warnings: list[str],
    main_markdown: str,
    command: str | None = None,
) -> str:
    """README.md of the report folder: what was read, which file holds what, the main table."""
    by_stem: dict[str, list[str]] = {}
    for path in files:
        by_stem.setdefault(path.stem, []).append(f"[{path.suffix[1:]}]({path.name})")
    lines = [
        "# Pruning report",
        "",
        f"{n_records} records from {', '.join(f'`{folder}`' for folder in folders)}; baseline: **{baseline}**; target: **{target}**.",
        "",
        *([f"Made with `{command}`.", ""] if command else []),
        "| Contents | Files |",
        "| :-- | :-- |",
        *(f"| {descriptions[stem]} | {', '.join(links)} |" for stem, links in by_stem.items()),
    ]
    if warnings:
        lines += ["", "## Warnings", "", *(f"- {warning}" for warning in warnings)]
    return "\n".join([*lines, "", main_markdown.replace("### ", "## ", 1)])
