"""Run a sweep: resolve and check the settings, plan the cells, skip the finished ones, and hand
the rest to an executor. Every check that can refuse the run happens before any model loads;
finished cells are skipped on a re-run, so an interrupted sweep loses at most the cell in
progress."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from harness.distributed import join_from_environment
from harness.errors import HarnessError
from harness.executors import EXECUTORS, CellFailure, is_data_parallel
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


def _silent(_: str) -> None:
    """The log of a torchrun rank other than 0: rank 0 tells the story."""


def run_sweep(settings: RunSettings, log: Callable[[str], None] = print) -> SweepOutcome:
    """Run every unfinished cell with the settings' executor; return the records of all planned
    cells, old and new, and the failures."""
    settings, cells = prepare(settings)
    ranks = join_from_environment(settings.device)
    if ranks.size > 1:
        if settings.executor != "local":
            raise HarnessError(f"under torchrun the cells run on its ranks; drop --executor {settings.executor}")
        if not ranks.is_main:
            log = _silent
        cells = sorted(cells, key=lambda planned: not is_data_parallel(planned))  # together first; rank 0 alone after
    git_commit()  # read now, before a long sweep gives time for edits
    done: dict[Cell, dict[str, Any]] = {}
    pending: list[PlannedCell] = []
    for index, planned in enumerate(cells, 1):
        if planned.path.exists() and not settings.force:
            log(f"[{index}/{len(cells)}] {planned.cell.tag}: done, skipping ({planned.path})")
            done[planned.cell] = read_record(planned.path)
        else:
            pending.append(planned)
    ranks.barrier()  # every rank has decided what to run before any rank writes a record
    new_records, failures = EXECUTORS[settings.executor](pending, settings, log)
    done.update(new_records)
    return SweepOutcome([done[p.cell] for p in cells if p.cell in done], failures)
