"""Executors run the pending cells of a sweep: `local` in this process one after another, `ray`
as Ray tasks across a cluster. Both write the same records; a failing cell is reported with its
coordinates and the others go on."""

from __future__ import annotations

import traceback
from dataclasses import dataclass
from typing import Any, Callable

from harness.cell import run_cell
from harness.distributed import world
from harness.errors import HarnessError
from harness.plan import Cell, PlannedCell
from harness.registry import get_pruner
from harness.settings import RunSettings
from harness.store import write_record

Log = Callable[[str], None]


@dataclass
class CellFailure:
    """A cell that raised: reported with its coordinates, the other cells go on."""

    cell: Cell
    error: str


Outcome = tuple[dict[Cell, dict[str, Any]], list[CellFailure]]


def _describe(error: BaseException) -> str:
    frame = traceback.extract_tb(error.__traceback__)[-1:] if error.__traceback__ else []
    where = f" ({frame[0].filename}:{frame[0].lineno})" if frame else ""
    return f"{error.__class__.__name__}: {error}{where}"


def is_data_parallel(planned: PlannedCell) -> bool:
    """Whether every torchrun rank takes part in this cell (`Pruner.data_parallel`)."""
    return planned.config is not None and get_pruner(planned.cell.method).data_parallel


def run_local(cells: list[PlannedCell], settings: RunSettings, log: Log) -> Outcome:
    """Cells in sequence in this process. Ctrl-C stops the sweep; finished records stay. Under
    torchrun, the ranks other than 0 take part only in the cells of data-parallel methods."""
    records: dict[Cell, dict[str, Any]] = {}
    failures: list[CellFailure] = []
    main = world().is_main
    for index, planned in enumerate(cells, 1):
        cell = planned.cell
        if not main and not is_data_parallel(planned):
            continue
        log(f"[{index}/{len(cells)}] {cell.tag}: running")
        try:
            record = run_cell(planned, settings, log)
            if record is not None:
                records[cell] = record
        except Exception as error:  # one broken cell must not cost the others
            if world().size > 1 and is_data_parallel(planned):
                raise  # a rank that gave up would leave the others waiting: torchrun stops them all
            failures.append(CellFailure(cell, _describe(error)))
            log(f"[{index}/{len(cells)}] {cell.tag}: FAILED: {_describe(error)}")
    return records, failures


def _ray_cell(planned: PlannedCell, settings: RunSettings) -> dict[str, Any]:
    return run_cell(planned, settings, log=lambda line: print(f"{planned.cell.tag}: {line}"))


def run_ray(cells: list[PlannedCell], settings: RunSettings, log: Log) -> Outcome:
    """Every cell a Ray task asking for a GPU when the sweep runs on CUDA. Workers write records
    into the shared output folder; the driver writes any that came back but are not there
    (clusters without a shared file system)."""
    try:
        import ray
    except ImportError:
        raise HarnessError("the ray executor needs Ray: pip install 'leap-harness[ray]'") from None
    if not ray.is_initialized():
        ray.init(address=settings.address, ignore_reinit_error=True, log_to_driver=True)
    task = ray.remote(num_gpus=1 if settings.on_gpu else 0, num_cpus=1, max_retries=0)(_ray_cell)
    futures = {task.remote(planned, settings): planned for planned in cells}
    log(f"submitted {len(futures)} cells to Ray")
    records: dict[Cell, dict[str, Any]] = {}
    failures: list[CellFailure] = []
    remaining = list(futures)
    while remaining:
        ready, remaining = ray.wait(remaining, num_returns=1)
        planned = futures[ready[0]]
        try:
            record = ray.get(ready[0])
        except Exception as error:
            cause = getattr(error, "cause", None) or error
            failures.append(CellFailure(planned.cell, _describe(cause)))
            log(f"{planned.cell.tag}: FAILED: {_describe(cause)}")
            continue
        if not planned.path.exists():
            write_record(planned.path, record)
        records[planned.cell] = record
        log(f"{planned.cell.tag}: done ({len(records) + len(failures)}/{len(futures)})")
    return records, failures


EXECUTORS: dict[str, Callable[[list[PlannedCell], RunSettings, Log], Outcome]] = {"local": run_local, "ray": run_ray}
