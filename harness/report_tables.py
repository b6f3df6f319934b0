"""What the report's tables say: records aggregated over seeds with pandas, laid out as `Table`s.

This module decides every number, bold flag and significance mark; `harness.report` only turns
a `Table` into Markdown or LaTeX, so both formats always agree.

Conventions: accuracies (stored as fractions) are shown in % with 2 decimals; a cell with
several seeds shows mean ± std (sample std) and its row names the seed count; a missing cell
shows "–", never a zero; a column with no value in any record is left out. Bold marks the
best pruned method of each model × sparsity group, compared at the shown precision, when at
least two methods have a value; dense is the reference, not a contender.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Literal

import pandas as pd

from harness.errors import HarnessError
from harness.pruner import Pruner
from harness.registry import get_pruner
from harness.settings import DENSE
from harness.store import method_of_row, row_name
from harness.significance import (
    ALPHA,
    RESAMPLES,
    BootstrapResult,
    Comparison,
    ItemScores,
    RatioResult,
    item_scores,
    margins,
    paired_bootstrap,
    paired_ppl_ratio,
    window_nlls_mean,
)

AVG = "avg_acc"
PPL = "wikitext2_ppl"
TASK_ORDER = ("mmlu", "piqa", "arc_easy", "arc_challenge", "winogrande", "openbookqa")
TASK_NAMES = {
    "mmlu": "MMLU",
    "piqa": "PIQA",
    "arc_easy": "ARC-e",
    "arc_challenge": "ARC-c",
    "winogrande": "WinoG",
    "openbookqa": "OBQA",
}
MISSING = "–"
NOT_SIGNIFICANT = "†"
LABEL_HEADERS = ("Model", "Sparsity", "Method")
SIGNIFICANCE_NOTE = (
    f"{NOT_SIGNIFICANT}: not significant (paired bootstrap over shared items, "
    f"{RESAMPLES:,} resamples, p ≥ {ALPHA}); deltas without per-item results are not tested."
)
BOLD_NOTE = "Bold: best pruned method of each model × sparsity group; dense is the reference."
SEEDS_NOTE = "Rows naming n seeds show mean ± std over seeds; – : no record, or no comparison on that row."

CellKey = tuple[str, str, str]  # (model, sparsity label, method); dense has label ""


@dataclass(frozen=True)
class Cell:
    """One table entry, already formatted; `mark` follows the text, outside any bold."""

    text: str
    bold: bool = False
    mark: str = ""


@dataclass
class Table:
    """A format-neutral table: leading label columns, value columns, group rules and notes."""

    title: str
    headers: list[str]
    n_labels: int
    rows: list[list[Cell]] = field(default_factory=list)
    group_starts: set[int] = field(default_factory=set)  # a rule goes above these rows
    notes: list[str] = field(default_factory=list)

    def add_group(self, rows: Iterable[list[Cell]]) -> None:
        self.group_starts.add(len(self.rows))
        self.rows.extend(rows)


@dataclass(frozen=True)
class Column:
    """A value column: which frame field, how it is scaled and shown, which way is better."""

    header: str
    field: str
    scale: float = 1.0
    decimals: int = 2
    better: Literal["max", "min"] | None = None
    spread: bool = True  # append ± std over seeds

    def shown(self, value: float) -> float:
        """The value as printed, so bold ties are the ties a reader sees."""
        return round(value * self.scale, self.decimals)


@dataclass(frozen=True)
class Stat:
    mean: float
    std: float
    n: int


def fmt(value: float, decimals: int = 2, *, signed: bool = False) -> str:
    """Fixed decimals with a typographic minus, which the LaTeX writer maps to math mode."""
    text = f"{value:+.{decimals}f}" if signed else f"{value:.{decimals}f}"
    return text.replace("-", "−")


def ordered(names: Iterable[str], canonical: Sequence[str]) -> list[str]:
    """Known names in the paper's order, then the others alphabetically."""
    return sorted(set(names), key=lambda name: (canonical.index(name) if name in canonical else len(canonical), name))


def _flatten(record: dict) -> tuple[CellKey, dict[str, float]]:
    """The record's cell and every numeric value a table may show."""
    dense = record["method"] == DENSE
    label = "" if dense else str(record.get("sparsity_label") or f"{float(record['sparsity']):.2f}")
    timings = record.get("timings") or {}
    values = {
        "sparsity": 0.0 if dense else float(record["sparsity"]),
        "time_calibrate": timings.get("calibrate"),
        "time_prune": timings.get("prune"),
        "time_eval": timings.get("eval"),
        "peak_rss_mb": record.get("peak_rss_mb"),
        # A zero GPU peak means no GPU was used: not applicable, shown as missing.
        "peak_gpu_mb": record.get("peak_gpu_mb") or None,
    }
    stats = record.get("method_stats") or {}
    values.update({key: stats.get(key) for key in _cost_keys(record["method"])})
    values.update(record["metrics"])
    numeric = {
        name: float(value)
        for name, value in values.items()
        if isinstance(value, (int, float)) and not isinstance(value, bool)
    }
    return (record["model"], label, record.get("row") or row_name(record)), numeric


class Results:
    """Records aggregated per cell (model, sparsity label, method) over seeds."""

    def __init__(self, records: list[dict]) -> None:
        self.records = records
        flat = [_flatten(record) for record in records]
        index = pd.MultiIndex.from_tuples([key for key, _ in flat], names=["model", "label", "method"])
        frame = pd.DataFrame([values for _, values in flat], index=index, dtype=float)
        grouped = frame.groupby(level=[0, 1, 2])
        self._mean, self._std, self._count = grouped.mean(), grouped.std(), grouped.count()
        self._seeds = grouped.size()
        self._sparsity = self._mean["sparsity"]
        self._records_by_cell: dict[CellKey, list[dict]] = {}
        for (key, _), record in zip(flat, records, strict=True):
            self._records_by_cell.setdefault(key, []).append(record)
        self._comparisons: dict[tuple[CellKey, CellKey], Comparison | None] = {}
        self._ratios: dict[tuple[CellKey, CellKey], RatioResult | None] = {}
        self._margins: dict[tuple[CellKey, CellKey], Comparison | None] = {}
        self._correctness: dict[CellKey, ItemScores] = {}

    @cached_property
    def pruners(self) -> dict[str, type[Pruner]]:
        """The registered class of each pruning method with records (none for dense, or for a
        method whose plugin is not installed here)."""
        return {method: cls for method in self.methods if (cls := _pruner(method)) is not None}

    @cached_property
    def methods(self) -> list[str]:
        """Every method with a record: dense first, then by the methods' `report_rank` (the
        papers' order), ties by name with the numbers in it compared as numbers (`steps=64`
        before `steps=128`)."""
        names = set(self._mean.index.get_level_values("method"))
        return sorted(names, key=lambda name: (name != DENSE, _rank(name), _natural(name), name))

    @cached_property
    def groups(self) -> list[tuple[str, str]]:
        """(model, sparsity label) of every pruned cell, by model then sparsity."""
        keys = {(model, label) for model, label, method in self._mean.index if method != DENSE}
        return sorted(keys, key=lambda g: (g[0], self._group_sparsity(*g), g[1]))

    @cached_property
    def tasks(self) -> list[str]:
        """Tasks named by the records' evaluation block that have an accuracy in some record."""
        named = {task for record in self.records for task in (record.get("evaluation") or {}).get("tasks", [])}
        return ordered((task for task in named if self.has(f"{task}_acc")), TASK_ORDER)

    def has(self, name: str) -> bool:
        return name in self._count.columns and bool(self._count[name].any())

    def stat(self, model: str, label: str, method: str, name: str) -> Stat | None:
        key = _key(model, label, method)
        if not self.has(name) or key not in self._mean.index:
            return None
        mean = self._mean.loc[key, name]
        if math.isnan(mean):
            return None
        return Stat(float(mean), float(self._std.loc[key, name]), int(self._count.loc[key, name]))

    def seeds(self, model: str, label: str, method: str) -> int:
        key = _key(model, label, method)
        return int(self._seeds[key]) if key in self._seeds.index else 0

    def method_label(self, model: str, label: str, method: str) -> str:
        seeds = self.seeds(model, label, method)
        return f"{method} ({seeds} seeds)" if seeds > 1 else method

    def comparison(self, model: str, label: str, method: str, reference: str) -> Comparison | None:
        """Paired bootstrap of method vs reference on their shared per-item results (cached)."""
        pair = (_key(model, label, method), _key(model, label, reference))
        if pair not in self._comparisons:
            self._comparisons[pair] = paired_bootstrap(self.correctness(model, label, method), self.correctness(model, label, reference))
        return self._comparisons[pair]

    def cell_records(self, model: str, label: str, method: str) -> list[dict]:
        """The records (one per seed) of one cell."""
        return self._records_by_cell.get(_key(model, label, method), [])

    def margin_comparison(self, model: str, label: str, method: str, reference: str) -> Comparison | None:
        """Paired bootstrap of the gold answer's log-likelihood margin (method − reference)."""
        pair = (_key(model, label, method), _key(model, label, reference))
        if pair not in self._margins:
            a, b = (item_scores(margins(r.get("per_item_choices") or {}) for r in self._records_by_cell.get(k, [])) for k in pair)
            self._margins[pair] = paired_bootstrap(a, b)
        return self._margins[pair]

    def correctness(self, model: str, label: str, method: str) -> ItemScores:
        """Mean correctness per task and item over the cell's seeds (computed once per cell: the
        bootstrap, McNemar, flips and power tables all read it)."""
        key = _key(model, label, method)
        if key not in self._correctness:
            self._correctness[key] = item_scores(r.get("per_item") or {} for r in self.cell_records(model, label, method))
        return self._correctness[key]

    def ppl_ratio(self, model: str, label: str, method: str, reference: str) -> RatioResult | None:
        """Paired perplexity ratio of method over reference on their shared windows (cached)."""
        pair = (_key(model, label, method), _key(model, label, reference))
        if pair not in self._ratios:
            a, b = (window_nlls_mean(r.get("ppl_per_window") for r in self._records_by_cell.get(k, [])) for k in pair)
            same = a is not None and b is not None and a[1] == b[1] and a[0].shape == b[0].shape
            self._ratios[pair] = paired_ppl_ratio(a[0], b[0], a[1]) if same else None
        return self._ratios[pair]

    def _group_sparsity(self, model: str, label: str) -> float:
        return float(self._sparsity.xs((model, label), level=[0, 1]).mean())


def _pruner(row: str) -> type[Pruner] | None:
    if row == DENSE:
        return None
    try:
        return get_pruner(method_of_row(row))
    except HarnessError:
        return None


def _rank(method: str) -> int:
    pruner = _pruner(method)
    return pruner.report_rank if pruner is not None else Pruner.report_rank


def _natural(name: str) -> list[str | float]:
    """`name` split into text and numbers, the numbers as floats: text and numbers alternate,
    so two names compare part by part with like against like."""
    parts = re.split(r"(\d+(?:\.\d+)?(?:e-?\d+)?)", name)
    return [float(part) if index % 2 else part for index, part in enumerate(parts)]


def _cost_keys(method: str) -> list[str]:
    pruner = _pruner(method)
    return [key for _, key, _ in pruner.cost_stats] if pruner is not None else []


def _key(model: str, label: str, method: str) -> CellKey:
    return (model, "" if method == DENSE else label, method)


def stat_cell(stat: Stat | None, column: Column, bold: bool = False) -> Cell:
    if stat is None:
        return Cell(MISSING)
    text = fmt(stat.mean * column.scale, column.decimals)
    if column.spread and stat.n > 1:
        text += f" ± {fmt(stat.std * column.scale, column.decimals)}"
    return Cell(text, bold=bold)


def _value_cells(stats: dict[str, list[Stat | None]], columns: Sequence[Column]) -> dict[str, list[Cell]]:
    """Cells of one group, the best pruned value of each ranked column in bold."""
    pruned = [row for method, row in stats.items() if method != DENSE]
    best = [_best(column, [row[j] for row in pruned]) for j, column in enumerate(columns)]
    return {
        method: [
            stat_cell(stat, column, bold=method != DENSE and stat is not None and column.shown(stat.mean) == top)
            for stat, column, top in zip(row, columns, best, strict=True)
        ]
        for method, row in stats.items()
    }


def _best(column: Column, stats: list[Stat | None]) -> float | None:
    """The best shown value of a ranked column, or None when fewer than two methods compete."""
    shown = [column.shown(stat.mean) for stat in stats if stat is not None]
    if column.better is None or len(shown) < 2:
        return None
    return max(shown) if column.better == "max" else min(shown)


def group_labels(values: Sequence[str], first: bool) -> list[Cell]:
    """Group labels are printed on a group's first row only, as in the paper's tables."""
    return [Cell(value if first else "") for value in values]


def _grouped_table(
    results: Results,
    title: str,
    columns: Sequence[Column],
    notes: list[str],
    extra_headers: Sequence[str] = (),
    extra: Callable[[str, str, str], list[Cell]] | None = None,
) -> Table:
    """One row per method (dense first) in each model × sparsity group."""
    columns = [column for column in columns if results.has(column.field)]
    headers = [*LABEL_HEADERS, *(column.header for column in columns), *extra_headers]
    table = Table(title, headers, len(LABEL_HEADERS), notes=notes)
    for model, label in results.groups:
        stats = {m: [results.stat(model, label, m, c.field) for c in columns] for m in results.methods}
        cells = _value_cells(stats, columns)
        table.add_group(
            [
                *group_labels([model, label], i == 0),
                Cell(results.method_label(model, label, method)),
                *cells[method],
                *(extra(model, label, method) if extra else []),
            ]
            for i, method in enumerate(results.methods)
        )
    return table


def task_name(task: str) -> str:
    return TASK_NAMES.get(task, task)


def _delta_cell(results: Results, model: str, label: str, method: str, reference: str) -> Cell:
    """Average accuracy of method minus reference, in points, † when not significant."""
    a = results.stat(model, label, method, AVG)
    b = results.stat(model, label, reference, AVG)
    if method in (reference, DENSE) or a is None or b is None:
        return Cell(MISSING)
    comparison = results.comparison(model, label, method, reference)
    mark = NOT_SIGNIFICANT if comparison and not comparison.average.significant else ""
    return Cell(fmt((a.mean - b.mean) * 100, signed=True), mark=mark)


def main_table(results: Results, baseline: str) -> Table:
    """The paper's layout: task accuracies, average, perplexity, Δ vs baseline and vs dense."""
    columns = [Column(task_name(t), f"{t}_acc", 100, better="max") for t in results.tasks]
    columns += [Column("Avg", AVG, 100, better="max"), Column("Wiki2 PPL", PPL, better="min")]
    notes = [
        "Accuracy (acc) in %; Wiki2 PPL: WikiText-2 perplexity, lower is better.",
        BOLD_NOTE,
        SEEDS_NOTE,
    ]
    if not results.has(AVG):
        return _grouped_table(results, "Main results", columns, notes)
    references = list(dict.fromkeys([baseline, DENSE]))
    notes.append("Δ vs X: average accuracy minus X's in the same group (dense: of the same model), in points.")
    notes.append(SIGNIFICANCE_NOTE)
    return _grouped_table(
        results,
        "Main results",
        columns,
        notes,
        extra_headers=[f"Δ vs {reference}" for reference in references],
        extra=lambda model, label, method: [_delta_cell(results, model, label, method, r) for r in references],
    )


def per_task_table(results: Results) -> Table:
    """Accuracy and length-normalised accuracy of every task."""
    columns = [
        Column(f"{task_name(t)} {metric}", f"{t}_{metric}", 100, better="max")
        for t in results.tasks
        for metric in ("acc", "acc_norm")
    ]
    return _grouped_table(results, "Per-task accuracy (%)", columns, [BOLD_NOTE, SEEDS_NOTE])


def stderr_table(results: Results) -> Table:
    """lm-eval's standard error of every task accuracy, in points."""
    columns = [Column(task_name(t), f"{t}_acc_stderr", 100, spread=False) for t in results.tasks]
    note = "Standard error of each task accuracy from lm-eval, in points; with several seeds, their mean."
    return _grouped_table(results, "Standard errors (points)", columns, [note, SEEDS_NOTE])


def cost_table(results: Results) -> Table:
    """What each method costs: time per phase, peak memory, and the methods' own `cost_stats`."""
    columns = [
        Column("Calibrate (s)", "time_calibrate", decimals=1),
        Column("Prune (s)", "time_prune", decimals=1),
        Column("Eval (s)", "time_eval", decimals=1),
        Column("Peak RSS (GiB)", "peak_rss_mb", 1 / 1024),
        Column("Peak GPU (GiB)", "peak_gpu_mb", 1 / 1024),
    ]
    pruners = dict.fromkeys(results.pruners.values())  # a method's config rows share its class: its columns once
    columns += [Column(header, key, scale) for pruner in pruners for header, key, scale in pruner.cost_stats]
    return _grouped_table(results, "Cost", columns, ["Peak GPU is missing where no GPU was used.", SEEDS_NOTE])


def _p_text(p_value: float) -> str:
    return "< 0.001" if p_value < 0.001 else f"{p_value:.3f}"


def deltas_table(results: Results, target: str, baseline: str) -> Table:
    """Target vs baseline in every model × sparsity cell, and the mean delta over cells."""
    headers = ["Model", "Sparsity", f"{target} Avg", f"{baseline} Avg", "Δ Avg", "p"]
    table = Table(f"{target} vs {baseline}", [*headers, f"{target} PPL", f"{baseline} PPL"], 2)
    avg, ppl = Column("", AVG, 100), Column("", PPL)
    pairs: list[tuple[float, float]] = []
    rows: list[list[Cell]] = []
    for model, label in results.groups:
        a, b = (results.stat(model, label, m, AVG) for m in (target, baseline))
        if a is not None and b is not None:
            pairs.append((a.mean, b.mean))
        comparison = results.comparison(model, label, target, baseline)
        rows.append(
            [
                Cell(model),
                Cell(label),
                stat_cell(a, avg),
                stat_cell(b, avg),
                _delta_cell(results, model, label, target, baseline),
                Cell(_p_text(comparison.average.p_value) if comparison else MISSING),
                *(stat_cell(results.stat(model, label, m, PPL), ppl) for m in (target, baseline)),
            ]
        )
    table.add_group(rows)
    if pairs:
        mean_a, mean_b = (100 * sum(pair[i] for pair in pairs) / len(pairs) for i in (0, 1))
        mean = [Cell(fmt(mean_a)), Cell(fmt(mean_b)), Cell(fmt(mean_a - mean_b, signed=True), bold=True)]
        table.add_group([[Cell("Mean"), Cell(f"{len(pairs)} cells"), *mean, Cell(""), Cell(""), Cell("")]])
    table.notes = [
        f"Avg in %; Δ Avg: {target} minus {baseline}, in points; p: paired bootstrap on the average.",
        "Mean: over the cells where both methods have an average (the paper's headline number).",
        SIGNIFICANCE_NOTE,
        SEEDS_NOTE,
    ]
    return table


def significance_table(results: Results, baseline: str) -> Table:
    """Per-task and average paired bootstrap of every pruned method against the baseline."""
    headers = [*LABEL_HEADERS, "Task", "Items", f"Δ vs {baseline}", "95% CI", "p"]
    table = Table(f"Significance vs {baseline}", headers, len(LABEL_HEADERS) + 1)
    for model, label in results.groups:
        for method in results.methods:
            comparison = None if method in (DENSE, baseline) else results.comparison(model, label, method, baseline)
            if comparison is None:
                continue
            tests = [(task_name(t), comparison.per_task[t]) for t in ordered(comparison.per_task, TASK_ORDER)]
            tests.append(("Average", comparison.average))
            table.add_group(
                [*group_labels([model, label, method], i == 0), Cell(name), *_test_cells(result)]
                for i, (name, result) in enumerate(tests)
            )
    table.notes = [
        "Δ in points on the items both methods answered (mean over seeds per item); CI: bootstrap 95% interval.",
        SIGNIFICANCE_NOTE,
    ]
    if not table.rows:
        table.notes.insert(0, f"No method shares per-item results with {baseline}: nothing to test.")
    return table


def _test_cells(result: BootstrapResult) -> list[Cell]:
    mark = "" if result.significant else NOT_SIGNIFICANT
    return [
        Cell(str(result.n_items)),
        Cell(fmt(result.delta * 100, signed=True), mark=mark),
        Cell(f"[{fmt(result.ci_low * 100, signed=True)}, {fmt(result.ci_high * 100, signed=True)}]"),
        Cell(_p_text(result.p_value)),
    ]
