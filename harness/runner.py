"""Plan cells (models x methods x sparsities x seeds), run each one, write one record per cell.

A cell is loaded fresh, calibrated, pruned, checked by counting zeros, evaluated, and written
atomically. Finished cells are skipped on a re-run, so an interrupted sweep loses at most the cell
in progress."""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from harness.config import PrunerConfig, build_config, stable_hash
from harness.data import C4_FILE, WIKITEXT2_FILE, c4_windows, data_file
from harness.device import resolve_device, resolve_dtype
from harness.errors import HarnessError
from harness.evaluation.perplexity import wikitext2_windows, window_perplexity
from harness.memory import PeakMemory
from harness.models import DEFAULT_MODEL, check_model_spec, load_model, needs_bos_per_window
from harness.provenance import git_commit, package_versions
from harness.pruner import PruneContext
from harness.registry import get_pruner
from harness.sparsity import Sparsity
from harness.store import SCHEMA_VERSION, read_record, record_path, slug, write_record

DENSE = "dense"


@dataclass
class RunSettings:
    """Settings shared by every cell of a sweep. `None` means: pick the device-dependent default."""

    models: list[str] = field(default_factory=lambda: [DEFAULT_MODEL])
    methods: list[str] = field(default_factory=lambda: ["magnitude"])
    sparsities: list[str] = field(default_factory=lambda: ["0.5"])
    seeds: list[int] = field(default_factory=lambda: [0])
    out: Path = Path("results")
    nsamples: int | None = None
    seqlen: int | None = None
    ppl_tokens: int | None = None
    tasks: str | None = "leap6"
    limit: int | None = None
    eval_batch_size: int | str | None = None
    hellaswag: str = "exact"
    device: str = "auto"
    dtype: str = "auto"
    force: bool = False
    save_model: Path | None = None
    overrides: dict[str, dict[str, str]] = field(default_factory=dict)
    data_dir: Path | None = None
    target_pattern: str | None = None
    include_dense: bool = True
    progress: bool = True

    def resolved(self) -> "RunSettings":
        """Fill the device-dependent defaults: the papers' 128 x 2048 on GPU, small on CPU."""
        device = resolve_device(self.device)
        on_gpu = device.type == "cuda"
        return dataclasses.replace(
            self,
            device=str(device),
            dtype=str(resolve_dtype(self.dtype, device)).removeprefix("torch."),
            nsamples=self.nsamples if self.nsamples is not None else (128 if on_gpu else 32),
            seqlen=self.seqlen if self.seqlen is not None else (2048 if on_gpu else 512),
            limit=self.limit if self.limit is not None or on_gpu else 20,
        )


@dataclass(frozen=True)
class Cell:
    """One point of the sweep grid. Picklable, so an executor can ship it elsewhere."""

    model: str
    method: str
    sparsity: str
    seed: int


def plan_cells(settings: RunSettings) -> list[Cell]:
    """Dense row first per model, then methods x sparsities x seeds. Validates names up front."""
    sparsities = [Sparsity.parse(s).label() for s in settings.sparsities]
    for model in settings.models:
        check_model_spec(model)
    for method in settings.methods:
        pruner_cls = get_pruner(method)
        build_config(pruner_cls.Config, settings.overrides.get(method, {}), method)
    unknown = set(settings.overrides) - set(settings.methods)
    if unknown:
        raise HarnessError(f"--set names method(s) not in --methods: {', '.join(sorted(unknown))}")
    cells: list[Cell] = []
    for model in settings.models:
        if settings.include_dense:
            cells.append(Cell(model, DENSE, Sparsity(0.0).label(), 0))
        for method in settings.methods:
            for sparsity in sparsities:
                for seed in settings.seeds:
                    cells.append(Cell(model, method, sparsity, seed))
    return cells


def _evaluation_settings(settings: RunSettings) -> dict[str, Any]:
    from harness.evaluation.zeroshot import resolve_tasks

    tasks = resolve_tasks(settings.tasks)
    return {
        "ppl_dataset": "wikitext2",
        "ppl_seqlen": settings.seqlen,
        "ppl_tokens": settings.ppl_tokens,
        "tasks": tasks,
        "limit": settings.limit if tasks else None,
        "hellaswag": settings.hellaswag if "hellaswag" in tasks else None,
    }


def cell_config(cell: Cell, settings: RunSettings) -> PrunerConfig:
    """The method's config for this cell: the sweep's overrides, validated, with the defaults
    that depend on the device (LEAP's budget) resolved for the run's device."""
    pruner_cls = get_pruner(cell.method)
    config = build_config(pruner_cls.Config, settings.overrides.get(cell.method, {}), cell.method)
    return config.resolve(torch.device(settings.device))


def cell_identity(cell: Cell, settings: RunSettings) -> dict[str, Any]:
    """Everything that changes a cell's numbers; its hash names the record file."""
    identity: dict[str, Any] = {
        "model": cell.model,
        "method": cell.method,
        "sparsity": cell.sparsity,
        "dtype": settings.dtype,
        "evaluation": _evaluation_settings(settings),
        "target_pattern": settings.target_pattern,
    }
    if cell.method != DENSE:
        pruner_cls = get_pruner(cell.method)
        identity["config"] = cell_config(cell, settings).to_dict()
        identity["seed"] = cell.seed
        if pruner_cls.needs_calibration:
            identity["calibration"] = {"dataset": "c4", "nsamples": settings.nsamples, "seqlen": settings.seqlen, "seed": cell.seed}
    return identity


def cell_path(cell: Cell, settings: RunSettings) -> Path:
    return record_path(settings.out, cell.model, cell.method, cell.sparsity, cell.seed, stable_hash(cell_identity(cell, settings)))


def run_cell(cell: Cell, settings: RunSettings, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Load, calibrate, prune, verify, evaluate and write one cell; return its record."""
    identity = cell_identity(cell, settings)
    timings: dict[str, float] = {}
    device = torch.device(settings.device)
    with PeakMemory() as memory:
        start = time.perf_counter()
        model, tokenizer = load_model(cell.model, device, getattr(torch, settings.dtype))
        timings["load"] = time.perf_counter() - start

        prune_info: dict[str, Any] = {}
        if cell.method != DENSE:
            prune_info = _prune(cell, settings, identity, model, tokenizer, timings, log)

        start = time.perf_counter()
        metrics, per_item, eval_info = _evaluate(model, tokenizer, settings, identity["evaluation"])
        timings["eval"] = time.perf_counter() - start

        if settings.save_model is not None:
            _save_model(model, tokenizer, settings.save_model, cell)

    record = {
        "schema": SCHEMA_VERSION,
        "model": cell.model,
        "method": cell.method,
        "sparsity": Sparsity.parse(cell.sparsity).ratio,
        "sparsity_label": cell.sparsity,
        "seed": cell.seed,
        "config": identity.get("config", {}),
        "calibration": identity.get("calibration"),
        "evaluation": {**identity["evaluation"], **eval_info},
        "realized_sparsity": prune_info.get("realized_sparsity", 0.0),
        "layer_sparsity": prune_info.get("layer_sparsity", {}),
        "metrics": metrics,
        "per_item": per_item,
        "method_stats": prune_info.get("stats", {}),
        "timings": timings,
        "peak_rss_mb": round(memory.rss_mb, 1),
        "peak_gpu_mb": round(memory.gpu_mb, 1),
        "device": settings.device,
        "dtype": settings.dtype,
        "versions": package_versions(),
        "git_commit": git_commit(),
        "config_hash": stable_hash(identity),
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    write_record(cell_path(cell, settings), record)
    return record


def _prune(cell, settings, identity, model, tokenizer, timings, log) -> dict[str, Any]:
    pruner_cls = get_pruner(cell.method)
    pruner = pruner_cls(cell_config(cell, settings))
    sparsity = Sparsity.parse(cell.sparsity)
    bos_per_window = needs_bos_per_window(model)
    start = time.perf_counter()
    calibration = None
    if pruner_cls.needs_calibration:
        calibration = c4_windows(
            tokenizer, settings.nsamples, settings.seqlen, cell.seed, "calibration", settings.data_dir, bos_per_window
        )
    timings["calibrate"] = time.perf_counter() - start
    workdir = cell_path(cell, settings).with_suffix(".work")
    ctx = PruneContext(
        tokenizer=tokenizer,
        calibration=calibration,
        data_dir=settings.data_dir,
        seed=cell.seed,
        target_pattern=settings.target_pattern,
        workdir=workdir,
        progress=settings.progress,
        bos_per_window=bos_per_window,
    )
    torch.manual_seed(cell.seed)
    result = pruner.run(model, sparsity, ctx)
    timings["prune"] = result.seconds
    if pruner.exact_sparsity() and result.realized_sparsity < sparsity.ratio - 1e-6:
        raise HarnessError(
            f"{cell.method} left {result.realized_sparsity:.6f} zeros, below the target {sparsity.ratio}: a bug in the method"
        )
    log(f"  {cell.method} @ {cell.sparsity}: realized sparsity {result.realized_sparsity:.4f} in {result.seconds:.1f}s")
    return dataclasses.asdict(result)


def _evaluate(model, tokenizer, settings: RunSettings, evaluation: dict[str, Any]):
    metrics: dict[str, float] = {}
    per_item: dict[str, dict[str, int]] = {}
    info: dict[str, Any] = {}
    windows = wikitext2_windows(tokenizer, settings.seqlen, settings.ppl_tokens, needs_bos_per_window(model), settings.data_dir)
    metrics["wikitext2_ppl"] = window_perplexity(model, windows, progress=settings.progress, desc="wikitext2 ppl")
    info["ppl_windows"] = int(windows.shape[0])
    if evaluation["tasks"]:
        from harness.evaluation.zeroshot import evaluate_zeroshot

        kwargs: dict[str, Any] = {"data_dir": settings.data_dir, "limit": evaluation["limit"], "hellaswag": settings.hellaswag, "progress": settings.progress}
        if settings.eval_batch_size is not None:
            kwargs["batch_size"] = settings.eval_batch_size
        result = evaluate_zeroshot(model, tokenizer, evaluation["tasks"], **kwargs)
        metrics.update(result.metrics)
        per_item = result.per_item
        info.update({"n_items": result.n_items, **result.info})
    return metrics, per_item, info


def _check_data(settings: RunSettings, cells: list[Cell]) -> None:
    """Fail before any model loads when a data file the sweep needs is missing."""
    data_file(settings.data_dir, WIKITEXT2_FILE)
    if any(c.method != DENSE and get_pruner(c.method).needs_calibration for c in cells):
        data_file(settings.data_dir, C4_FILE)


def _save_model(model, tokenizer, root: Path, cell: Cell) -> None:
    target = Path(root) / slug(cell.model) / cell.method / f"{cell.sparsity.replace(':', 'of')}_seed{cell.seed}"
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)


@dataclass
class CellFailure:
    """A cell that raised: reported with its coordinates, the other cells go on."""

    cell: Cell
    error: str


@dataclass
class SweepOutcome:
    records: list[dict[str, Any]]
    failures: list[CellFailure]


def cell_tag(cell: Cell) -> str:
    return f"{cell.model} {cell.method} {cell.sparsity} seed={cell.seed}"


def run_sweep(
    settings: RunSettings,
    executor: str = "local",
    address: str | None = None,
    cell_index: int | None = None,
    log: Callable[[str], None] = print,
) -> SweepOutcome:
    """Run every unfinished cell (or only cell `cell_index` of the plan, for job arrays) with the
    chosen executor; return the records of all planned cells, old and new, and the failures."""
    from harness.executors import EXECUTORS

    if executor not in EXECUTORS:
        raise HarnessError(f"unknown executor {executor!r}; use one of: {', '.join(EXECUTORS)}")
    settings = settings.resolved()
    git_commit()  # read now, before a long sweep gives time for edits
    cells = plan_cells(settings)
    if cell_index is not None:
        if not 0 <= cell_index < len(cells):
            raise HarnessError(f"--cell {cell_index} is outside the plan's {len(cells)} cells (0..{len(cells) - 1})")
        cells = [cells[cell_index]]
    _check_data(settings, cells)
    done: dict[Cell, dict[str, Any]] = {}
    pending: list[Cell] = []
    for index, cell in enumerate(cells, 1):
        path = cell_path(cell, settings)
        if path.exists() and not settings.force:
            log(f"[{index}/{len(cells)}] {cell_tag(cell)}: done, skipping ({path})")
            done[cell] = read_record(path)
        else:
            pending.append(cell)
    new_records, failures = EXECUTORS[executor](pending, settings, log, address)
    done.update(new_records)
    return SweepOutcome([done[c] for c in cells if c in done], failures)
