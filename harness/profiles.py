"""Layer-wise sparsity profiles: every targeted matrix at the target (`uniform`), or OWL's
(Yin et al. 2024, luuyin/OWL `prune_wanda_outlier`): decoder layers rich in outliers keep more.

OWL, as the reference computes it. The dense model's calibration activations go through the
decoder layers one at a time (the layers stay dense). For layer l, the Wanda scores |W_ij|·‖X_j‖₂
of all its targeted linears together give its outlier ratio D_l, the percentage of scores above
M × their mean. The ratios are min-max scaled to [0, 2λ] and layer l gets sparsity
s − (D̂_l − mean D̂): a spread of 2λ, ±λ around the target s when the ratios are spread evenly. Defaults λ = 0.08, M = 5 (the reference's
`Lamda`, `Hyper_m`; llm-compressor's `owl_lmbda`, `owl_m`).

Exactness. The reference's mean is over layers; here it is weighted by each layer's number of
targeted weights (the same when every layer is targeted alike), so the sparsity over all targeted
weights is the target. Per-matrix zero counts are then rounded by largest remainder so that they
sum to exactly round(N·s) for the N targeted weights; each matrix gets its own exact `Sparsity`.
A layer pushed outside [0, 1) is refused (lower λ)."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from harness.accumulators import InputNormAccumulator
from harness.engine import LayerwiseConfig, prune_layerwise, targets_per_layer
from harness.errors import HarnessError
from harness.masks import prune_count
from harness.sparsity import UNIFORM, Sparsity
from harness.targets import decoder_layers


def outlier_ratio(scores: torch.Tensor, m: float) -> float:
    """Percentage of `scores` above `m` × their mean (OWL's layer-wise outlier distribution)."""
    return 100.0 * int((scores > scores.mean() * m).sum()) / scores.numel()


def owl_layer_sparsities(ratios: Sequence[float], target: float, lam: float, sizes: Sequence[int] | None = None) -> list[float]:
    """Each layer's sparsity from its outlier ratio: ratios scaled to [0, 2λ], centred on their
    mean (weighted by `sizes`, the layers' targeted weights; unweighted without), subtracted
    from `target`. All ratios equal: every layer at the target."""
    values = torch.tensor(ratios, dtype=torch.float64)
    weights = torch.ones_like(values) if sizes is None else torch.tensor(sizes, dtype=torch.float64)
    spread = float(values.max() - values.min())
    scaled = (values - values.min()) / spread * 2 * lam if spread > 0 else torch.zeros_like(values)
    centre = float((scaled * weights).sum() / weights.sum())
    return [target - (float(value) - centre) for value in scaled]


def exact_zero_counts(sizes: dict[str, int], ratios: dict[str, float], target: float) -> dict[str, int]:
    """Per-matrix zero counts close to numel·ratio that sum to exactly round(N·target): floors
    first, then one more for the largest remainders (ties in the order of `sizes`). The ratios must
    average to the target over the weights, as `owl_layer_sparsities` makes them."""
    wanted = {name: sizes[name] * ratios[name] for name in sizes}
    counts = {name: math.floor(value) for name, value in wanted.items()}
    missing = prune_count(sum(sizes.values()), target) - sum(counts.values())
    order = sorted(sizes, key=lambda name: counts[name] - wanted[name])  # largest remainder first, stable
    if not 0 <= missing <= len(order):
        raise ValueError(f"ratios do not average to the target {target}: {missing} zeros to place")
    for name in order[:missing]:
        counts[name] += 1
    return counts


@dataclass(frozen=True)
class ProfileSettings:
    """The run's profile choice as the cell needs it (from the schema's `--profile`, `--owl-*`)."""

    name: str
    owl_lambda: float
    owl_m: float

    def identity(self) -> dict[str, Any] | None:
        """The profile's part of a cell's identity; None for uniform, so older records keep their
        names. Its keys are the record's (harness.store.PROFILE_PARAMETERS)."""
        return None if self.name == UNIFORM else {"name": self.name, "lambda": self.owl_lambda, "m": self.owl_m}


@dataclass
class LayerProfile:
    """Per-matrix target sparsities and what produced them, for the record."""

    matrices: dict[str, Sparsity]
    layers: list[int] = field(default_factory=list)  # decoder layers holding targeted linears
    layer_sparsity: list[float] = field(default_factory=list)
    outlier_ratio: list[float] = field(default_factory=list)
    seconds: float = 0.0

    def record(self, settings: ProfileSettings) -> dict[str, Any]:
        return {
            **(settings.identity() or {}),
            "layers": self.layers,
            "layer_sparsity": [round(value, 6) for value in self.layer_sparsity],
            "outlier_ratio": [round(value, 4) for value in self.outlier_ratio],
            "seconds": round(self.seconds, 2),
        }


@torch.no_grad()
def layer_outlier_ratios(
    model: nn.Module, per_layer: dict[int, dict[str, nn.Linear]], calibration: torch.Tensor, m: float, batch_size: int = 8, progress: bool = False
) -> dict[int, float]:
    """OWL's outlier ratio of every decoder layer in `per_layer` (its targeted linears), on the
    dense model: the shared layer-wise loop with a step that scores each linear and leaves its
    weight as it is, so the calibration inputs pass through unpruned layers. A layer's scores
    are held only until its last linear is scored."""
    owner = {name: index for index, linears in per_layer.items() for name in linears}
    pending: dict[int, list[torch.Tensor]] = {}
    ratios: dict[int, float] = {}

    def score(name: str, weight: torch.Tensor, stats: InputNormAccumulator) -> torch.Tensor:
        index = owner[name]
        pending.setdefault(index, []).append((weight.abs() * stats.norms()[None, :]).flatten().cpu())
        if len(pending[index]) == len(per_layer[index]):
            ratios[index] = outlier_ratio(torch.cat(pending.pop(index)), m)
        return weight

    def accumulator(linear: nn.Linear) -> InputNormAccumulator:
        return InputNormAccumulator(linear.in_features, linear.weight.device)

    linears = {name: linear for group in per_layer.values() for name, linear in group.items()}
    prune_layerwise(model, linears, calibration, accumulator, score, LayerwiseConfig(batch_size=batch_size), progress)
    return ratios


def owl_profile(
    model: nn.Module, linears: dict[str, nn.Linear], calibration: torch.Tensor, sparsity: Sparsity,
    settings: ProfileSettings, batch_size: int = 8, progress: bool = False,
) -> LayerProfile:
    """OWL's per-matrix sparsities for `linears` of the dense `model` at `sparsity`."""
    start = time.perf_counter()
    per_layer = targets_per_layer(decoder_layers(model), linears)
    ratios = layer_outlier_ratios(model, per_layer, calibration, settings.owl_m, batch_size, progress)
    layers = sorted(ratios)
    sizes = [sum(linear.weight.numel() for linear in per_layer[index].values()) for index in layers]
    layer_sparsity = owl_layer_sparsities([ratios[index] for index in layers], sparsity.ratio, settings.owl_lambda, sizes)
    if not all(0.0 <= value < 1.0 for value in layer_sparsity):
        raise HarnessError(
            f"OWL with lambda {settings.owl_lambda} puts a layer at {min(layer_sparsity):.3f}..{max(layer_sparsity):.3f} "
            f"sparsity for the target {sparsity}; lower --owl-lambda"
        )
    by_layer = dict(zip(layers, layer_sparsity))
    matrix_ratio = {name: by_layer[index] for index in layers for name in per_layer[index]}
    matrix_size = {name: linear.weight.numel() for name, linear in linears.items()}
    counts = exact_zero_counts(matrix_size, matrix_ratio, sparsity.ratio)
    matrices = {name: Sparsity(counts[name] / matrix_size[name]) for name in linears}
    return LayerProfile(matrices, layers, layer_sparsity, [ratios[index] for index in layers], time.perf_counter() - start)
