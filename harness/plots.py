"""The report's plots: average accuracy and perplexity against sparsity, and each method's own.

Figures are built without pyplot, so no global state or display is involved: `Figure.savefig`
renders PNG with matplotlib's Agg backend and PDF with its PDF backend.
"""

from __future__ import annotations

import pathlib

from matplotlib.figure import Figure

from harness.report_tables import AVG, DENSE, PPL, Results
from harness.store import method_of_row

PLOT_DESCRIPTIONS = {
    "avg_acc_vs_sparsity": "Average accuracy vs sparsity, per model",
    "ppl_vs_sparsity": "WikiText-2 perplexity vs sparsity (log scale), per model",
}


def method_figures(results: Results) -> list[tuple[str, str, Figure]]:
    """The figures each method with records draws of its own (`Pruner.report_figures`)."""
    figures = []
    pruners = {method_of_row(row): pruner for row, pruner in results.pruners.items()}  # wanda and wanda+owl: one figure
    for method, pruner in pruners.items():
        figures += pruner.report_figures([r for r in results.records if r["method"] == method])
    return figures


def write_plots(results: Results, out_dir: pathlib.Path) -> tuple[list[pathlib.Path], dict[str, str]]:
    """Write each plot the records have data for, as PNG and PDF; return the files and a
    description of each plot by file stem."""
    files: list[pathlib.Path] = []
    descriptions = dict(PLOT_DESCRIPTIONS)
    if results.groups and results.has(AVG):
        figure = _vs_sparsity(results, AVG, "Average accuracy (%)", scale=100, log=False)
        files += _save(figure, out_dir / "avg_acc_vs_sparsity")
    if results.groups and results.has(PPL):
        figure = _vs_sparsity(results, PPL, "WikiText-2 perplexity (log)", scale=1, log=True)
        files += _save(figure, out_dir / "ppl_vs_sparsity")
    for stem, description, figure in method_figures(results):
        files += _save(figure, out_dir / stem)
        descriptions[stem] = description
    return files, descriptions


def _save(figure: Figure, stem: pathlib.Path) -> list[pathlib.Path]:
    paths = [stem.with_suffix(".png"), stem.with_suffix(".pdf")]
    for path in paths:
        figure.savefig(path, dpi=150)
    return paths


def _vs_sparsity(results: Results, name: str, ylabel: str, *, scale: float, log: bool) -> Figure:
    """One panel per model, one line per method over its sparsity labels; dense as a dashed line.

    Sparsity labels sit at even steps (0.50, 2:4, 0.60, ...) because 2:4 and 0.50 share a ratio.
    """
    models = sorted({model for model, _ in results.groups})
    figure = Figure(figsize=(4.5 * len(models), 3.5), layout="constrained")
    axes = figure.subplots(1, len(models), squeeze=False)[0]
    colors = {method: f"C{i}" for i, method in enumerate(results.methods)}
    for ax, model in zip(axes, models, strict=True):
        labels = [label for group_model, label in results.groups if group_model == model]
        dense = results.stat(model, "", DENSE, name)
        if dense is not None:
            ax.axhline(dense.mean * scale, color="black", linestyle="--", label=DENSE)
        for method in results.methods:
            points = [(i, results.stat(model, label, method, name)) for i, label in enumerate(labels)]
            points = [(i, stat) for i, stat in points if stat is not None]
            if method == DENSE or not points:
                continue
            ax.errorbar(
                [i for i, _ in points],
                [stat.mean * scale for _, stat in points],
                yerr=[stat.std * scale if stat.n > 1 else 0.0 for _, stat in points],
                marker="o",
                capsize=3,
                color=colors[method],
                label=method,
            )
        ax.set_xticks(range(len(labels)), labels)
        ax.set_xlabel("Sparsity")
        ax.set_title(model)
        if log:
            ax.set_yscale("log")
        ax.legend(fontsize="small", loc="best")
    axes[0].set_ylabel(ylabel)
    return figure
