"""leap-harness: prune LLMs with several methods under one protocol and report who wins.

The plugin API: everything a third-party pruner needs, importable from `harness` itself.

    from harness import Pruner, PrunerConfig, Sparsity, select_mask

A one-shot method subclasses `Pruner` (see its contract) and registers by an entry point in the
`harness.pruners` group; a layer-wise method subclasses `LayerwisePruner` and supplies an
accumulator (`InputNormAccumulator`, `GramAccumulator` or its own `Accumulator`) and the
one-matrix prune. A data-parallel method shares its work over torchrun's ranks with `world()`.
Names load lazily, so `import harness` stays cheap."""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "Pruner": "harness.pruner",
    "PruneContext": "harness.pruner",
    "PruneResult": "harness.pruner",
    "PrunerConfig": "harness.config",
    "LayerwisePruner": "harness.engine",
    "LayerwiseConfig": "harness.engine",
    "GramPruner": "harness.engine",
    "Accumulator": "harness.accumulators",
    "InputNormAccumulator": "harness.accumulators",
    "GramAccumulator": "harness.accumulators",
    "Sparsity": "harness.sparsity",
    "select_mask": "harness.masks",
    "global_lowest_masks": "harness.masks",
    "lowest_mask_matrix": "harness.masks",
    "lowest_mask_rows": "harness.masks",
    "nm_mask": "harness.masks",
    "prune_count": "harness.masks",
    "register_pruner": "harness.registry",
    "get_pruner": "harness.registry",
    "HarnessError": "harness.errors",
    "World": "harness.distributed",
    "world": "harness.distributed",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'harness' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
