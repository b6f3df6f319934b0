"""Executors run the pending cells of a sweep: `local` in this process one after another, `ray`
as Ray tasks across a cluster. Both write the same records; a failing cell is reported with its
coordinates and the others go on."""

from __future__ import annotations

import traceback
from typing import Any, Callable

from harness.errors import HarnessError
from harness.runner import Cell, CellFailure, RunSettings, cell_path, cell_tag, run_cell
from harness.store import write_record

Log = Callable[[str], None]
Outcome = tuple[dict[Cell, dict[str, Any]], list[CellFailure]]


def _describe(error: BaseException) -> str:
    frame = traceback.extract_tb(error.__traceback__)[-1:] if error.__traceback__ else []
    where = f" ({frame[0].filename}:{frame[0].lineno})" if frame else ""
    return f"{error.__class__.__name__}: {error}{where}"


def run_local(cells: list[Cell], settings: RunSettings, log: Log, address: str | None = None) -> Outcome:
    """Cells in sequence in this process. Ctrl-C stops the sweep; finished records stay."""
    records: dict[Cell, dict[str, Any]] = {}
    failures: list[CellFailure] = []
    for index, cell in enumerate(cells, 1):
        log(f"[{index}/{len(cells)}] {cell_tag(cell)}: running")
        try:
            records[cell] = run_cell(cell, settings, log)
        except Exception as error:  # one broken cell must not cost the others
            failures.append(CellFailure(cell, _describe(error)))
            log(f"[{index}/{len(cells)}] {cell_tag(cell)}: FAILED: {_describe(error)}")
    return records, failures


def _ray_cell(cell: Cell, settings: RunSettings) -> dict[str, Any]:
    return run_cell(cell, settings, log=lambda line: print(f"{cell_tag(cell)}: {line}"))


def run_ray(cells: list[Cell], settings: RunSettings, log: Log, address: str | None = None) -> Outcome:
    """Every cell a Ray task asking for a GPU when the sweep runs on CUDA. Workers write records
    into the shared output folder; the driver writes any that came back but are not there
    (clusters without a shared file system)."""
    try:
        import ray
    except ImportError:
        raise HarnessError("the ray executor needs Ray: pip install 'leap-harness[ray]'") from None
    if not ray.is_initialized():
        ray.init(address=address, ignore_reinit_error=True, log_to_driver=True)
    on_gpu = settings.device.startswith("cuda")
    task = ray.remote(num_gpus=1 if on_gpu else 0, num_cpus=1, max_retries=0)(_ray_cell)
    futures = {task.remote(cell, settings): cell for cell in cells}
    log(f"submitted {len(futures)} cells to Ray")
    records: dict[Cell, dict[str, Any]] = {}
    failures: list[CellFailure] = []
    remaining = list(futures)
    while remaining:
        ready, remaining = ray.wait(remaining, num_returns=1)
        cell = futures[ready[0]]
        try:
            record = ray.get(ready[0])
        except Exception as error:
            cause = getattr(error, "cause", None) or error
            failures.append(CellFailure(cell, _describe(cause)))
            log(f"{cell_tag(cell)}: FAILED: {_describe(cause)}")
            continue
        path = cell_path(cell, settings)
        if not path.exists():
            write_record(path, record)
        records[cell] = record
        log(f"{cell_tag(cell)}: done ({len(records) + len(failures)}/{len(futures)})")
    return records, failures


EXECUTORS: dict[str, Callable[..., Outcome]] = {"local": run_local, "ray": run_ray}
