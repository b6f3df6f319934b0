"""Run a sweep: resolve and check the settings, plan the cells, skip the finished ones, and hand
the rest to an executor. Every check that can refuse the run happens before any model loads;
finished cells are skipped on a re-run, so an interrupted sweep loses at most the cell in
progress."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from harness.errors import HarnessError
from harness.executors import EXECUTORS, CellFailure
from harness.plan import Cell, PlannedCell, check_environment, plan_cells
from harness.provenance import git_commit
from harness.settings import RunSettings
from harness.store import read_record


@dataclass
class SweepOutcome:
    records: list[dict[str, Any]]
    failures: list[CellFailure]


def prepare(settings: RunSettings) -> tuple[RunSettings, list[PlannedCell]]:
    """The settings resolved for the device and the cells to run (all, or `--cell` alone), after
    every up-front check."""
    settings = settings.resolved()
    cells = plan_cells(settings)
    if settings.cell_index is not None:
        if settings.cell_index >= len(cells):
            raise HarnessError(f"--cell {settings.cell_index} is outside the plan's {len(cells)} cells (0..{len(cells) - 1})")
        cells = [cells[settings.cell_index]]
    check_environment(settings, cells)
    return settings, cells


def run_sweep(settings: RunSettings, log: Callable[[str], None] = print) -> SweepOutcome:
    """Run every unfinished cell with the settings' executor; return the records of all planned
    cells, old and new, and the failures."""
    settings, cells = prepare(settings)
    git_commit()  # read now, before a long sweep gives time for edits
    done: dict[Cell, dict[str, Any]] = {}
    pending: list[PlannedCell] = []
    for index, planned in enumerate(cells, 1):
        if planned.path.exists() and not settings.force:
            log(f"[{index}/{len(cells)}] {planned.cell.tag}: done, skipping ({planned.path})")
            done[planned.cell] = read_record(planned.path)
        else:
            pending.append(planned)
    new_records, failures = EXECUTORS[settings.executor](pending, settings, log)
    done.update(new_records)
    return SweepOutcome([done[p.cell] for p in cells if p.cell in done], failures)
