"""The report's paired statistics: perplexity ratios over shared windows; paired accuracy with
its exact McNemar test, minimum detectable effect and the gold-answer margin; answer flips against
the dense model; a one-line verdict per comparison; and how many items an effect needs.

Every comparison is paired: both methods answered the same items and scored the same windows, so
the per-item (per-window) differences carry it. Verdicts: a metric decides when its 95% interval
leaves out the value of no difference; the verdict names the metrics that decided and for whom.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from harness.evaluation.fidelity import TOPK
from harness.report_tables import (
    DENSE,
    LABEL_HEADERS,
    MISSING,
    NOT_SIGNIFICANT,
    PPL,
    TASK_ORDER,
    Cell,
    Column,
    Results,
    Table,
    group_labels,
    stat_cell,
    task_name,
    fmt,
    ordered,
)
from harness.significance import (
    RESAMPLES,
    Z_ALPHA,
    Z_POWER,
    PairedCounts,
    RatioResult,
    items_needed,
    mean_interval,
    minimum_detectable_effect,
    paired_counts,
)

EFFECTS = (0.01, 0.02, 0.05)  # effects (accuracy fractions) for which the power table says the items needed


def perplexity_table(results: Results, baseline: str) -> Table:
    """Every pruned method's WikiText-2 perplexity as a paired ratio against the baseline and
    against dense, with bootstrap intervals over the shared windows."""
    references = list(dict.fromkeys([baseline, DENSE]))
    headers = [*LABEL_HEADERS, "Wiki2 PPL", "Windows", *(h for r in references for h in (f"Ratio vs {r}", "95% CI"))]
    table = Table("Paired perplexity ratios", headers, len(LABEL_HEADERS))
    ppl = Column("Wiki2 PPL", PPL)

    def row(model: str, label: str, method: str) -> list[Cell]:
        ratios = [None if method == reference else results.ppl_ratio(model, label, method, reference) for reference in references]
        windows = next((r.n_windows for r in ratios if r is not None), None)
        return [
            stat_cell(results.stat(model, label, method, PPL), ppl),
            Cell(str(windows) if windows else MISSING),
            *(cell for ratio in ratios for cell in _ratio_cells(ratio)),
        ]

    _add_method_rows(results, table, (DENSE,), row)
    table.notes = [
        "Ratio: perplexity of the row's method over the reference's on the same WikiText-2 windows (below 1: lower perplexity).",
        f"95% CI: paired bootstrap over windows, {RESAMPLES:,} resamples; {NOT_SIGNIFICANT}: the interval contains 1 (undecided).",
        "– : no per-window losses in the records (written before they were stored), or windows that differ.",
    ]
    return table


def _ratio_cells(result: RatioResult | None) -> list[Cell]:
    if result is None:
        return [Cell(MISSING), Cell(MISSING)]
    mark = "" if result.decided else NOT_SIGNIFICANT
    return [Cell(f"{result.ratio:.4f}", mark=mark), Cell(f"[{result.ci_low:.4f}, {result.ci_high:.4f}]")]


def _add_method_rows(results: Results, table: Table, skip: tuple[str, ...], row: Callable[[str, str, str], list[Cell] | None]) -> None:
    """One group per model × sparsity, one row per method not in `skip` for which `row` gives
    the value cells (None: no row); the group and method labels come first."""
    for model, label in results.groups:
        rows = []
        for method in results.methods:
            if method in skip or (cells := row(model, label, method)) is None:
                continue
            rows.append([*group_labels([model, label], not rows), Cell(results.method_label(model, label, method)), *cells])
        if rows:
            table.add_group(rows)


def _pairs(results: Results, model: str, label: str, method: str, reference: str) -> dict[str, PairedCounts]:
    """Per task, the items both cells answered, as agreement counts (method = A)."""
    a, b = results.correctness(model, label, method), results.correctness(model, label, reference)
    return {task: paired_counts(a[task], b[task]) for task in ordered(set(a) & set(b), TASK_ORDER) if set(a[task]) & set(b[task])}


def _pooled(pairs: dict[str, PairedCounts]) -> PairedCounts:
    return PairedCounts(*(sum(getattr(c, field) for c in pairs.values()) for field in ("both", "only_a", "only_b", "neither")))


def average_mde(pairs: dict[str, PairedCounts]) -> float:
    """MDE at 80% power of the task-equal average accuracy delta: √(Σ sd²/n)/T scaled by z's."""
    if not pairs:
        return math.nan
    variance = sum(c.sd**2 / c.n for c in pairs.values()) / len(pairs) ** 2
    return (Z_ALPHA + Z_POWER) * math.sqrt(variance)


def _pts(value: float, signed: bool = False) -> str:
    return MISSING if value is None or math.isnan(value) else fmt(100 * value, signed=signed)


def paired_accuracy_table(results: Results, baseline: str) -> Table:
    """Each pruned method against the baseline on the items both answered."""
    headers = [*LABEL_HEADERS, "Items", f"Δ acc vs {baseline}", "MDE 80%", "McNemar p", "Only method right", f"Only {baseline} right", "Δ margin", "95% CI"]
    table = Table(f"Paired accuracy vs {baseline}", headers, len(LABEL_HEADERS))

    def row(model: str, label: str, method: str) -> list[Cell] | None:
        pairs = _pairs(results, model, label, method, baseline)
        if not pairs:
            return None
        pooled, comparison = _pooled(pairs), results.comparison(model, label, method, baseline)
        margin = results.margin_comparison(model, label, method, baseline)
        margin_cells = [Cell(MISSING), Cell(MISSING)]
        if margin is not None:
            result = margin.average
            margin_cells = [
                Cell(f"{result.delta:+.3f}".replace("-", "−"), mark="" if result.significant else NOT_SIGNIFICANT),
                Cell(f"[{result.ci_low:+.3f}, {result.ci_high:+.3f}]".replace("-", "−")),
            ]
        return [
            Cell(str(pooled.n)),
            Cell(_pts(comparison.average.delta, signed=True), mark="" if comparison.average.significant else NOT_SIGNIFICANT),
            Cell(_pts(average_mde(pairs))),
            Cell(_p(pooled.p_mcnemar)),
            Cell(str(pooled.only_a)),
            Cell(str(pooled.only_b)),
            *margin_cells,
        ]

    _add_method_rows(results, table, (DENSE, baseline), row)
    table.notes = [
        "Δ acc: task-equal average accuracy, method minus baseline, in points; † : its paired bootstrap 95% interval contains 0.",
        "MDE 80%: the smallest true average delta this many items detect with 80% power at 5% (from the observed discordance).",
        "McNemar p: exact two-sided test on the items only one of the two got right (all tasks pooled).",
        "Δ margin: mean gold-answer log-likelihood margin (gold minus best other choice, nats), method minus baseline, task-equal; "
        "a continuous score that moves before accuracy does. – : records without choice log-likelihoods.",
    ]
    if not table.rows:
        table.notes.insert(0, f"No method shares per-item results with {baseline}.")
    return table


def _p(value: float) -> str:
    return "< 0.001" if value < 0.001 else f"{value:.3f}"


def flips_table(results: Results) -> Table:
    """Answers that change against the dense model: accuracy can hide them (Dutta et al. 2024)."""
    headers = [*LABEL_HEADERS, "Items", "Correct → wrong", "Wrong → correct", "Flips (%)", "McNemar p"]
    table = Table("Answer flips vs dense", headers, len(LABEL_HEADERS))

    def row(model: str, label: str, method: str) -> list[Cell] | None:
        pairs = _pairs(results, model, label, method, DENSE)
        if not pairs:
            return None
        pooled = _pooled(pairs)
        flips = 100 * (pooled.only_a + pooled.only_b) / pooled.n
        return [Cell(str(pooled.n)), Cell(str(pooled.only_b)), Cell(str(pooled.only_a)), Cell(fmt(flips)), Cell(_p(pooled.p_mcnemar))]

    _add_method_rows(results, table, (DENSE,), row)
    table.notes = [
        "Correct → wrong: items the dense model answers right and the pruned one wrong; Wrong → correct: the reverse.",
        "Flips: both kinds, in % of the items both answered (all tasks pooled); an unchanged accuracy can hide many flips.",
    ]
    if not table.rows:
        table.notes.insert(0, "No pruned method shares per-item results with dense.")
    return table


def verdict(results: Results, model: str, label: str, method: str, baseline: str) -> str:
    """'decided for X (by ...)', 'split: ...' or 'undecided', from the paired perplexity ratio,
    the paired accuracy bootstrap and the margin bootstrap."""
    decided: dict[str, str] = {}
    ratio = results.ppl_ratio(model, label, method, baseline)
    if ratio is not None and ratio.decided:
        decided["perplexity"] = method if ratio.ratio < 1 else baseline
    comparison = results.comparison(model, label, method, baseline)
    if comparison is not None and comparison.average.significant:
        decided["accuracy"] = method if comparison.average.delta > 0 else baseline
    margin = results.margin_comparison(model, label, method, baseline)
    if margin is not None and margin.average.significant:
        decided["margin"] = method if margin.average.delta > 0 else baseline
    winners = set(decided.values())
    if not winners:
        return "undecided"
    if len(winners) == 1:
        return f"decided for {winners.pop()} (by {', '.join(decided)})"
    return "split: " + "; ".join(f"{metric} for {winner}" for metric, winner in decided.items())


def verdicts_table(results: Results, baseline: str) -> Table:
    """One line per comparison with the baseline: what each paired metric says, and the verdict."""
    headers = [*LABEL_HEADERS, "Perplexity ratio", "Δ acc (MDE)", "Verdict"]
    table = Table(f"Verdicts vs {baseline}", headers, len(LABEL_HEADERS))

    def row(model: str, label: str, method: str) -> list[Cell] | None:
        if results.seeds(model, label, baseline) == 0:
            return None
        comparison = results.comparison(model, label, method, baseline)
        pairs = _pairs(results, model, label, method, baseline)
        acc = MISSING if comparison is None else f"{_pts(comparison.average.delta, signed=True)} ({_pts(average_mde(pairs))})"
        ratio = results.ppl_ratio(model, label, method, baseline)
        return [_ratio_cells(ratio)[0], Cell(acc), Cell(verdict(results, model, label, method, baseline))]

    _add_method_rows(results, table, (DENSE, baseline), row)
    table.notes = [
        "A metric decides when its paired 95% interval leaves out the value of no difference (perplexity ratio 1, accuracy or margin delta 0).",
        "Δ acc in points, with the minimum detectable effect at 80% power in parentheses.",
    ]
    return table


def power_table(results: Results, target: str, baseline: str) -> Table:
    """Items per task that an effect needs, from the discordance observed between target and
    baseline (all their shared groups pooled)."""
    headers = ["Task", "Items", "Discordant (%)", "MDE 80% (pts)", *(f"Items for {fmt(100 * e, 0)} pts" for e in EFFECTS)]
    table = Table(f"Power: {target} vs {baseline}", headers, 1)
    per_task: dict[str, list[PairedCounts]] = {}
    for model, label in results.groups:
        for task, counts in _pairs(results, model, label, target, baseline).items():
            per_task.setdefault(task, []).append(counts)
    rows = []
    for task in ordered(per_task, TASK_ORDER):
        pooled = _pooled(dict(enumerate(per_task[task])))
        sd = pooled.sd
        rows.append([
            Cell(task_name(task)),
            Cell(str(pooled.n)),
            Cell(fmt(100 * (pooled.only_a + pooled.only_b) / pooled.n)),
            Cell(_pts(minimum_detectable_effect(sd, pooled.n))),
            *(Cell(f"{items_needed(sd, effect):,}" if sd > 0 else MISSING) for effect in EFFECTS),
        ])
    table.add_group(rows)
    table.notes = [
        "Discordant: items exactly one of the two methods got right. MDE 80%: smallest true delta detected with 80% power at 5%.",
        "Items for X pts: items per task a paired test needs to detect a true X-point difference with 80% power, at this discordance.",
    ]
    if not rows:
        table.notes.insert(0, f"{target} and {baseline} share no per-item results.")
    return table


def _fidelity(results: Results, model: str, label: str, method: str) -> tuple[np.ndarray, np.ndarray] | None:
    """Per-window mean KL to dense and top-1 agreement of a cell (mean over its seeds)."""
    blocks = [r.get("fidelity_per_window") for r in results.cell_records(model, label, method)]
    if not blocks or not all(blocks) or len({len(b["kl"]) for b in blocks}) != 1:
        return None
    kl = np.mean([np.asarray(b["kl"], dtype=float) / b["tokens"] for b in blocks], axis=0)
    top1 = np.mean([np.asarray(b["top1"], dtype=float) / b["tokens"] for b in blocks], axis=0)
    return kl, top1


def fidelity_table(results: Results) -> Table:
    """How close each pruned model stays to its dense model on the perplexity windows."""
    headers = [*LABEL_HEADERS, "Windows", "KL to dense", "95% CI", "Top-1 agreement (%)", "95% CI"]
    table = Table("Fidelity to the dense model", headers, len(LABEL_HEADERS))

    def row(model: str, label: str, method: str) -> list[Cell] | None:
        found = _fidelity(results, model, label, method)
        if found is None:
            return None
        kl, top1 = mean_interval(found[0]), mean_interval(found[1])
        return [
            Cell(str(len(found[0]))),
            Cell(f"{kl[0]:.4f}"),
            Cell(f"[{kl[1]:.4f}, {kl[2]:.4f}]"),
            Cell(fmt(100 * top1[0])),
            Cell(f"[{fmt(100 * top1[1])}, {fmt(100 * top1[2])}]"),
        ]

    _add_method_rows(results, table, (DENSE,), row)
    table.notes = [
        f"KL to dense: mean per-token KL(dense ‖ pruned) in nats over the dense top-{TOPK} tokens plus one tail bucket (a lower bound of the full KL).",
        "Top-1 agreement: tokens whose most likely next token is the dense model's. CI: bootstrap 95% over windows.",
    ]
    if not table.rows:
        table.notes.insert(0, "No record holds fidelity measurements (records from before they were stored).")
    return table
