"""One cell, start to finish: load the model fresh, calibrate, prune, check by counting zeros,
evaluate, and write the record atomically."""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
from pathlib import Path
from typing import Any, Callable

import torch

from harness.data import calibration_windows, data_root
from harness.evaluation.fidelity import (
    TOPK,
    DenseReference,
    FidelityMeter,
    ReferenceBuilder,
    compute_reference,
    load_reference,
    reference_key,
    save_reference,
)
from harness.distributed import world
from harness.errors import HarnessError
from harness.evaluation.perplexity import wikitext2_windows, window_nlls
from harness.memory import PeakMemory
from harness.layout import WIKITEXT2_FILE
from harness.manifest import manifest_for
from harness.models import cache_dir, load_model, needs_bos_per_window
from harness.plan import PlannedCell, uses_calibration
from harness.profiles import owl_profile
from harness.provenance import git_commit, hardware, package_versions
from harness.pruner import PruneContext
from harness.sparsity import UNIFORM, Sparsity
from harness.registry import get_pruner
from harness.settings import RunSettings
from harness.store import SCHEMA_VERSION, slug, write_record


def run_cell(planned: PlannedCell, settings: RunSettings, log: Callable[[str], None] = print) -> dict[str, Any] | None:
    """Load, calibrate, prune, verify, evaluate and write one planned cell; return its record.
    On a torchrun rank other than 0 (a data-parallel method's cell only): load and prune, taking
    this rank's share of the work, and return None; rank 0 evaluates and writes the record."""
    if not world().is_main:
        model, tokenizer = load_model(planned.cell.model, torch.device(settings.device), getattr(torch, settings.dtype))
        _prune(planned, settings, model, tokenizer, {}, lambda _: None)
        return None
    cell, identity = planned.cell, planned.identity
    timings: dict[str, float] = {}
    with PeakMemory() as memory:
        start = time.perf_counter()
        model, tokenizer = load_model(cell.model, torch.device(settings.device), getattr(torch, settings.dtype))
        timings["load"] = time.perf_counter() - start

        windows = wikitext2_windows(tokenizer, settings.ppl_seqlen, settings.ppl_tokens, needs_bos_per_window(model), settings.data_dir)
        reference_path = _reference_path(cell.model, settings, windows)
        reference = None
        prune_info: dict[str, Any] = {}
        if planned.config is not None:
            reference = load_reference(reference_path)
            if reference is None:  # no dense cell has run here yet: take it from the model, still dense
                start = time.perf_counter()
                reference = compute_reference(model, windows, progress=settings.progress)
                save_reference(reference_path, reference)
                timings["dense_reference"] = time.perf_counter() - start
            prune_info = _prune(planned, settings, model, tokenizer, timings, log)

        start = time.perf_counter()
        metrics, items, eval_info = _evaluate(model, tokenizer, settings, identity["evaluation"], windows, reference, reference_path)
        timings["eval"] = time.perf_counter() - start

        if settings.save_model is not None:
            _save_model(model, tokenizer, settings.save_model, planned)

    record = {
        "schema": SCHEMA_VERSION,
        "model": cell.model,
        "method": cell.method,
        "sparsity": cell.sparsity.ratio,
        "sparsity_label": cell.sparsity.label(),
        "seed": cell.seed,
        "config": identity.get("config", {}),
        "calibration": identity.get("calibration"),
        "evaluation": {**identity["evaluation"], **eval_info},
        "realized_sparsity": prune_info.get("realized_sparsity", 0.0),
        "layer_sparsity": prune_info.get("layer_sparsity", {}),
        "profile": prune_info.get("profile"),
        "metrics": metrics,
        **items,
        "method_stats": prune_info.get("stats", {}),
        "timings": timings,
        "peak_rss_mb": round(memory.rss_mb, 1),
        "peak_gpu_mb": round(memory.gpu_mb, 1),
        "device": settings.device,
        "hardware": hardware(settings.device),
        "dtype": settings.dtype,
        "versions": package_versions(),
        "git_commit": git_commit(),
        "config_hash": planned.config_hash,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    write_record(planned.path, record)
    return record


def _prune(planned: PlannedCell, settings: RunSettings, model, tokenizer, timings, log) -> dict[str, Any]:
    cell = planned.cell
    pruner_cls = get_pruner(cell.method)
    pruner = pruner_cls(planned.config)
    bos_per_window = needs_bos_per_window(model)
    start = time.perf_counter()
    calibration = None
    if uses_calibration(cell.method, settings):
        calibration = calibration_windows(
            tokenizer, settings.calibration, settings.nsamples, settings.seqlen, cell.seed, settings.data_dir, bos_per_window
        )
    timings["calibrate"] = time.perf_counter() - start
    ctx = PruneContext(
        tokenizer=tokenizer,
        calibration=calibration,
        data_dir=settings.data_dir,
        seed=cell.seed,
        target_pattern=settings.target_pattern,
        workdir=planned.path.with_suffix(".work"),
        progress=settings.progress,
        bos_per_window=bos_per_window,
    )
    profile = _layer_profile(settings, model, ctx, cell.sparsity, timings)
    torch.manual_seed(cell.seed)
    result = pruner.run(model, cell.sparsity, ctx)
    if world().is_main and ctx.workdir.is_dir() and not any(ctx.workdir.iterdir()):
        ctx.workdir.rmdir()  # a method's checkpoints are gone once it has pruned: leave no empty folder
    timings["prune"] = result.seconds
    # Exact means every matrix drops round(numel · ratio) weights: at most half a weight per matrix below.
    targets = ctx.targets(model).values()
    slack = 0.5 * len(targets) / sum(linear.weight.numel() for linear in targets)
    if pruner.exact_sparsity() and result.realized_sparsity < cell.sparsity.ratio - slack - 1e-9:
        raise HarnessError(
            f"{cell.method} left {result.realized_sparsity:.6f} zeros, below the target {cell.sparsity.ratio}: a bug in the method"
        )
    log(f"  {cell.method} @ {cell.sparsity.label()}: realized sparsity {result.realized_sparsity:.4f} in {result.seconds:.1f}s")
    return {**dataclasses.asdict(result), "profile": profile}


def _layer_profile(settings: RunSettings, model, ctx: PruneContext, sparsity: Sparsity, timings: dict[str, float]) -> dict[str, Any] | None:
    """Set the per-matrix targets of a non-uniform profile into `ctx`, from the still-dense model;
    what the record keeps of it (None for uniform)."""
    profile = settings.sparsity_profile
    if profile.name == UNIFORM:
        return None
    layers = owl_profile(model, ctx.targets(model), ctx.calibration, sparsity, profile, progress=settings.progress)
    ctx.matrix_sparsity = layers.matrices
    timings["profile"] = layers.seconds
    return layers.record(profile)


def _reference_path(model: str, settings: RunSettings, windows: torch.Tensor) -> Path:
    """Where the dense reference of these windows lives (see harness.evaluation.fidelity)."""
    root = data_root(settings.data_dir)
    data_sha = manifest_for(root)[0][WIKITEXT2_FILE].sha256
    key = reference_key(model, data_sha, settings.ppl_seqlen, settings.ppl_tokens, settings.dtype, int(windows.shape[0]))
    return cache_dir() / "dense-reference" / f"{slug(model)}-{key}.pt"


def _evaluate(
    model, tokenizer, settings: RunSettings, evaluation: dict[str, Any], windows: torch.Tensor, reference: DenseReference | None, reference_path: Path
) -> tuple[dict[str, float], dict[str, Any], dict[str, Any]]:
    """(metrics, the record's per-item fields, evaluation info): perplexity with its per-window
    losses and, for a pruned model, its fidelity to the dense reference in the same pass (the
    dense model's pass builds that reference); then zero-shot with each item's correctness and
    choice log-likelihoods."""
    observer = ReferenceBuilder() if reference is None else FidelityMeter(reference)
    ppl, nlls = window_nlls(model, windows, progress=settings.progress, desc="wikitext2 ppl", observe=observer)
    tokens = int(windows.shape[1]) - 1
    metrics: dict[str, float] = {"wikitext2_ppl": ppl}
    info: dict[str, Any] = {"ppl_windows": int(windows.shape[0]), "fidelity_reference": reference_path.stem, "fidelity_topk": TOPK}
    items: dict[str, Any] = {
        "per_item": {},
        "per_item_choices": {},
        "ppl_per_window": {"nll": [float(f"{value:.7g}") for value in nlls], "tokens": tokens},
    }
    if isinstance(observer, ReferenceBuilder):
        if not reference_path.exists():
            save_reference(reference_path, observer.reference())
    else:
        total = tokens * len(observer.kl)
        metrics["kl_to_dense"] = sum(observer.kl) / total
        metrics["top1_agreement"] = sum(observer.agree) / total
        items["fidelity_per_window"] = {"kl": [float(f"{value:.7g}") for value in observer.kl], "top1": observer.agree, "tokens": tokens}
    if evaluation["tasks"]:
        from harness.evaluation.zeroshot import evaluate_zeroshot

        result = evaluate_zeroshot(
            model, tokenizer, evaluation["tasks"], data_dir=settings.data_dir, limit=evaluation["limit"],
            mmlu_limit=evaluation.get("mmlu_limit", "same"),
            batch_size=settings.eval_batch_size, hellaswag=settings.hellaswag, progress=settings.progress,
        )
        metrics.update(result.metrics)
        items.update(per_item=result.per_item, per_item_choices=result.per_item_choices)
        info.update({"n_items": result.n_items, **result.info})
    return metrics, items, info


def _save_model(model, tokenizer, root: Path, planned: PlannedCell) -> None:
    cell = planned.cell
    target = Path(root) / slug(cell.model) / cell.method / f"{cell.sparsity.label().replace(':', 'of')}_seed{cell.seed}"
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
