"""The plan of a sweep: its cells (models × methods × sparsities × seeds, dense rows first), each
with its method config resolved for the device, its identity, hash and record path, computed
once; and every check that can refuse the run before any model is loaded.

`plan_cells` needs only the settings (a sweep for GPUs can be planned on a laptop);
`check_environment` then asks the machine: is the device there, does each model exist, are the
data files present."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.config import PrunerConfig, build_config, stable_hash
from harness.data import calibration_file, data_file, data_root
from harness.distributed import launched_ranks
from harness.errors import HarnessError
from harness.layout import HELLASWAG_FULL_FILE, WIKITEXT2_FILE
from harness.manifest import manifest_for
from harness.models import check_model_spec
from harness.registry import get_pruner
from harness.settings import DENSE, SETTINGS, RunSettings
from harness.sparsity import UNIFORM, Sparsity
from harness.store import record_path

DENSE_SPARSITY = Sparsity(0.0)
CALIBRATION_NAMES = {"c4-local": "c4", "c4-train": "c4-train"}
"""A calibration source's name in the identity (`c4` for the local documents, as every record
before the setting existed)."""


@dataclass(frozen=True)
class Cell:
    """One point of the sweep grid. Picklable, so an executor can ship it elsewhere."""

    model: str
    method: str
    sparsity: Sparsity
    seed: int

    @property
    def tag(self) -> str:
        return f"{self.model} {self.method} {self.sparsity.label()} seed={self.seed}"


@dataclass(frozen=True)
class PlannedCell:
    """A cell with everything derived from it once: the method's resolved config (None for the
    dense row), the identity that names its record, that identity's hash and the record's path."""

    cell: Cell
    config: PrunerConfig | None
    identity: dict[str, Any]
    config_hash: str
    path: Path


def method_configs(settings: RunSettings) -> dict[str, PrunerConfig]:
    """Each pruning method's config: the sweep's overrides, validated, with the defaults that
    depend on the device (LEAP's budget) resolved for `settings.device`. A sparsity the method
    cannot produce is refused here."""
    import torch

    unknown = set(settings.overrides) - set(settings.methods)
    if unknown:
        raise HarnessError(f"--set names method(s) not in --methods: {', '.join(sorted(unknown))}")
    device = torch.device(settings.device)
    configs = {}
    for method in settings.methods:
        if method == DENSE:
            if settings.overrides.get(DENSE):
                raise HarnessError("the dense model takes no --set options")
            continue
        pruner_cls = get_pruner(method)
        config = build_config(pruner_cls.Config, settings.overrides.get(method, {}), method).resolve(device)
        pruner = pruner_cls(config)
        for sparsity in settings.sparsities:
            pruner.check_sparsity(sparsity)
        pruner.check_profile(settings.profile)
        if pruner_cls.data_parallel:
            pruner.check_ranks(launched_ranks())
        configs[method] = config
    return configs


def uses_calibration(method: str, settings: RunSettings) -> bool:
    """Whether a cell of `method` reads calibration windows: the method needs them, or the
    layer-wise profile (OWL scores the dense model on them)."""
    return get_pruner(method).needs_calibration or settings.profile != UNIFORM


def _check_settings(settings: RunSettings) -> None:
    """What no single setting can say alone."""
    if settings.methods == (DENSE,) and not settings.include_dense:
        raise HarnessError("--methods dense with --no-dense leaves nothing to run; drop one of them")
    unused = [SETTINGS[name].flag for name in ("owl_lambda", "owl_m") if getattr(settings, name) != SETTINGS[name].default]
    if settings.profile == UNIFORM and unused:
        raise HarnessError(f"{', '.join(unused)} set the OWL profile; add --profile owl or drop them")
    nm = [str(sparsity) for sparsity in settings.sparsities if sparsity.is_nm]
    if settings.profile != UNIFORM and nm:
        raise HarnessError(
            f"--profile {settings.profile} sets unstructured layer ratios; it cannot apply to --sparsity {','.join(nm)} (use --profile uniform)"
        )
    if settings.ppl_tokens is not None and settings.ppl_tokens < settings.ppl_seqlen:
        raise HarnessError(
            f"--ppl-tokens {settings.ppl_tokens} is less than one perplexity window (--ppl-seqlen {settings.ppl_seqlen}); "
            "raise it or use --ppl-tokens all"
        )


def _evaluation(settings: RunSettings) -> dict[str, Any]:
    """The evaluation part of a cell's identity. `mmlu_limit` appears only where it differs from
    `limit`, so cells from before it existed keep their names."""
    tasks = list(settings.tasks)
    evaluation = {
        "ppl_dataset": "wikitext2",
        "ppl_seqlen": settings.ppl_seqlen,
        "ppl_tokens": settings.ppl_tokens,
        "tasks": tasks,
        "limit": settings.limit if tasks else None,
        "hellaswag": settings.hellaswag if "hellaswag" in tasks else None,
    }
    if "mmlu" in tasks and settings.mmlu_limit != settings.limit:
        evaluation["mmlu_limit"] = settings.mmlu_limit
    return evaluation


def _identity(cell: Cell, config: PrunerConfig | None, settings: RunSettings, evaluation: dict[str, Any]) -> dict[str, Any]:
    """Everything that changes a cell's numbers; its hash names the record file."""
    identity: dict[str, Any] = {
        "model": cell.model,
        "method": cell.method,
        "sparsity": cell.sparsity.label(),
        "dtype": settings.dtype,
        "evaluation": evaluation,
        "target_pattern": settings.target_pattern,
    }
    if config is not None:
        identity["config"] = config.to_dict()
        identity["seed"] = cell.seed
        profile = settings.sparsity_profile.identity()
        if profile is not None:
            identity["profile"] = profile
        if uses_calibration(cell.method, settings):
            identity["calibration"] = {"dataset": CALIBRATION_NAMES[settings.calibration], "nsamples": settings.nsamples, "seqlen": settings.seqlen, "seed": cell.seed}
    return identity


def _planned(cell: Cell, config: PrunerConfig | None, settings: RunSettings, evaluation: dict[str, Any]) -> PlannedCell:
    identity = _identity(cell, config, settings, evaluation)
    digest = stable_hash(identity)
    path = record_path(settings.out, cell.model, cell.method, cell.sparsity.label(), cell.seed, digest)
    return PlannedCell(cell, config, identity, digest, path)


def plan_cells(settings: RunSettings) -> list[PlannedCell]:
    """Dense row first per model, then methods × sparsities × seeds, for resolved `settings`.
    Refuses bad method names, configs and setting combinations before anything runs."""
    if not settings.is_resolved:
        raise ValueError("plan_cells takes resolved settings (RunSettings.resolved())")
    _check_settings(settings)
    configs = method_configs(settings)
    evaluation = _evaluation(settings)
    dense = settings.include_dense or DENSE in settings.methods
    planned: list[PlannedCell] = []
    for model in settings.models:
        if dense:
            planned.append(_planned(Cell(model, DENSE, DENSE_SPARSITY, 0), None, settings, evaluation))
        for method, config in configs.items():
            for sparsity in settings.sparsities:
                for seed in settings.seeds:
                    planned.append(_planned(Cell(model, method, sparsity, seed), config, settings, evaluation))
    return planned


def check_environment(settings: RunSettings, cells: list[PlannedCell]) -> None:
    """Fail before any model loads when the device, a model or a data file the sweep needs (the
    tasks' files included) is not there or does not match its manifest."""
    import torch

    if settings.on_gpu and not torch.cuda.is_available():
        raise HarnessError("--device cuda was asked for but no CUDA device is visible; use --device cpu")
    for model in settings.models:
        check_model_spec(model)
    entries, _ = manifest_for(data_root(settings.data_dir))  # a task's files sit in the folder of its name
    needed = {path for path in entries for task in settings.tasks if path.startswith(f"{task}/") and path != HELLASWAG_FULL_FILE}
    needed.add(WIKITEXT2_FILE)
    if "hellaswag" in settings.tasks and settings.hellaswag == "full":
        needed.add(HELLASWAG_FULL_FILE)
    for planned in cells:
        if planned.config is not None:
            pruner = get_pruner(planned.cell.method)
            needed.update(pruner.data_files(planned.config))
            if uses_calibration(planned.cell.method, settings):
                needed.add(calibration_file(settings.calibration))
    for relative in sorted(needed):
        data_file(settings.data_dir, relative)
