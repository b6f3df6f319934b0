"""LEAP's figure in the report: its training curves (through `LEAPPruner.report_figures`)."""

from __future__ import annotations

from matplotlib.figure import Figure

from harness.report_tables import ordered

CURVE_KEYS = ("loss", "ce", "density", "tau")


def training_figure(records: list[dict]) -> Figure:
    """One panel per logged quantity (loss, ce, density, tau, ...) in rows of three, one line per run."""
    curves = [(record, record["method_stats"]["train_curve"]) for record in records]
    keys = ordered({key for _, curve in curves for point in curve for key in point if key != "step"}, CURVE_KEYS)
    columns = min(3, len(keys))
    rows = -(-len(keys) // columns)
    figure = Figure(figsize=(3.8 * columns, 2.8 * rows), layout="constrained")
    grid = figure.subplots(rows, columns, squeeze=False).flatten()
    for unused in grid[len(keys) :]:
        unused.set_visible(False)
    axes = grid[: len(keys)]
    for record, curve in curves:
        label = f"{record['model']} {record.get('sparsity_label', record['sparsity'])} seed {record.get('seed', 0)}"
        for ax, key in zip(axes, keys, strict=True):
            points = [(point.get("step", i), point[key]) for i, point in enumerate(curve) if key in point]
            ax.plot([step for step, _ in points], [value for _, value in points], label=label)
    for ax, key in zip(axes, keys, strict=True):
        ax.set_title(key)
        ax.set_xlabel("step")
    axes[0].legend(fontsize="x-small")
    figure.suptitle("LEAP training")
    return figure
