"""The sequential layer-wise protocol of SparseGPT, Wanda and ADMM, written once.

Capture the inputs of decoder layer 0 for every calibration sample, then for each decoder layer:
run the samples through it with hooks that accumulate what the method needs, let the method
prune every targeted linear of the layer, and re-run the pruned layer so that the next layer is
calibrated on the outputs of the already-pruned model.

Layer arguments. A decoder layer receives more than the hidden states: attention masks, position
ids, rotary (cos, sin) and cache flags, and these differ between layers of different attention
types (Gemma-3 alternates sliding-window and full attention, each with its own mask and rotary
base). The engine therefore records the exact arguments that the model itself passes to every
layer, by running the model's own forward once per distinct mini-batch size with each layer's
`forward` temporarily replaced by a recorder (cheap: embeddings, masks and rotary only; the last
recorder aborts the forward before the norm and head). Calibration windows are unpadded, so
these arguments depend only on the batch shape.

Memory. One float32 buffer [nsamples, seqlen, hidden] holds the activations between layers, on
CPU by default; each mini-batch is streamed to the layer's device, and its output overwrites its
own input slot, so at most one layer's activations exist at a time (plus one mini-batch)."""

from __future__ import annotations

import abc
import functools
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from harness.accumulators import Accumulator, AccumulatorFactory, GramAccumulator, InputStatistics
from harness.config import PrunerConfig
from harness.errors import HarnessError
from harness.pruner import PruneContext, Pruner
from harness.sparsity import Sparsity
from harness.targets import decoder_layers

LayerCall = tuple[tuple[Any, ...], dict[str, Any]]  # arguments after the hidden states


class _StopForward(Exception):
    """Raised by the last layer recorder: nothing after the decoder stack is needed."""


def _param_device_dtype(module: nn.Module) -> tuple[torch.device, torch.dtype]:
    param = next(p for p in module.parameters() if p.is_floating_point())
    return param.device, param.dtype


def _sync(device: torch.device) -> None:
    """Wait for the accelerator so wall-clock timings measure the work, not its launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextmanager
def _replaced_forwards(layers: nn.ModuleList, recorder: Any) -> Iterator[None]:
    """Route every layer's call to `recorder(index, *args, **kwargs)`; restore on exit. Hooks
    stay registered and an instance-level forward (e.g. accelerate's) is put back as it was."""
    saved = [layer.__dict__.get("forward") for layer in layers]
    for index, layer in enumerate(layers):
        layer.forward = functools.partial(recorder, index)
    try:
        yield
    finally:
        for layer, forward in zip(layers, saved):
            if forward is None:
                del layer.forward
            else:
                layer.forward = forward


class LayerwiseEngine:
    """Calibration activations pushed through a causal LM's decoder layers one layer at a time.

    Iterate `layers()`: at each step `hidden` holds the inputs of the yielded layer for every
    sample; `forward(index)` runs them through it (with whatever hooks the caller has placed),
    and after the caller's step the engine re-runs the (possibly pruned) layer in place."""

    def __init__(
        self,
        model: nn.Module,
        calibration: torch.Tensor,
        batch_size: int = 8,
        offload: bool = True,
        progress: bool = False,
    ) -> None:
        if calibration.dim() != 2 or calibration.dtype != torch.long:
            raise HarnessError(
                f"calibration must be token ids [nsamples, seqlen], got {calibration.dtype} {tuple(calibration.shape)}"
            )
        self.model = model
        self.layers = decoder_layers(model)
        self.calibration = calibration
        self.batch_size = batch_size
        self.progress = progress
        self.input_device = model.get_input_embeddings().weight.device
        self.buffer_device = torch.device("cpu") if offload else _param_device_dtype(self.layers[0])[0]
        self.hidden: torch.Tensor | None = None
        self.calls: list[dict[int, LayerCall]] = [{} for _ in self.layers]
        self.capture_seconds = 0.0
        self.forward_seconds = 0.0

    def _batches(self) -> Iterator[slice]:
        for start in range(0, self.calibration.shape[0], self.batch_size):
            yield slice(start, min(start + self.batch_size, self.calibration.shape[0]))

    @torch.no_grad()
    def capture(self) -> None:
        """Fill `hidden` with the inputs of layer 0 and record every layer's other arguments."""
        start_time = time.perf_counter()
        last = len(self.layers) - 1
        current = slice(0, 0)

        def record(index: int, *args: Any, **kwargs: Any) -> torch.Tensor:
            if args:
                hidden, args = args[0], args[1:]
            else:
                hidden = kwargs.pop("hidden_states")
            if index == 0:
                if self.hidden is None:
                    shape = (self.calibration.shape[0], *hidden.shape[1:])
                    self.hidden = torch.empty(shape, dtype=torch.float32, device=self.buffer_device)
                self.hidden[current].copy_(hidden)
            self.calls[index].setdefault(current.stop - current.start, (args, kwargs))
            if index == last:
                raise _StopForward
            return hidden

        with _replaced_forwards(self.layers, record):
            for current in self._batches():
                try:
                    self.model(input_ids=self.calibration[current].to(self.input_device), use_cache=False)
                except _StopForward:
                    pass
        if self.hidden is None or not self.calls[last]:
            raise HarnessError(
                f"{type(self.model).__name__} did not call all its decoder layers; cannot prune it layer by layer"
            )
        self.capture_seconds += time.perf_counter() - start_time

    @torch.no_grad()
    def forward(self, index: int, update: bool = False) -> None:
        """Run every sample through layer `index`; with `update`, its outputs replace `hidden`."""
        if self.hidden is None:
            raise RuntimeError("LayerwiseEngine.forward before capture()")
        layer = self.layers[index]
        device, dtype = _param_device_dtype(layer)
        _sync(device)
        start_time = time.perf_counter()
        for batch in self._batches():
            x = self.hidden[batch].to(device=device, dtype=dtype)
            args, kwargs = self.calls[index][x.shape[0]]
            out = layer(x, *args, **kwargs)
            if isinstance(out, tuple):  # decoder layers of transformers < 5 return a tuple
                out = out[0]
            if update:
                self.hidden[batch].copy_(out)
        _sync(device)
        self.forward_seconds += time.perf_counter() - start_time

    def steps(self, count: int | None = None) -> Iterator[tuple[int, nn.Module]]:
        """Yield (index, layer) for the first `count` layers (all by default), capturing first
        and propagating each layer after the caller's step."""
        self.capture()
        count = len(self.layers) if count is None else count
        for index in tqdm(range(count), desc="layers", disable=not self.progress):
            yield index, self.layers[index]
            self.forward(index, update=True)


@dataclass
class LayerwiseConfig(PrunerConfig):
    """Engine settings shared by the layer-wise methods; they do not change the math."""

    batch_size: int = 8  # calibration samples per layer forward
    offload: bool = True  # keep activations between layers on CPU (float32), not on the model's device

    def validate(self) -> None:
        if self.batch_size < 1:
            raise HarnessError(f"batch_size must be at least 1, got {self.batch_size}")


@contextmanager
def _ieee_float32() -> Iterator[None]:
    """Full float32 matmuls (no TF32), as the reference implementations require."""
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)


MatrixPrune = Callable[[str, torch.Tensor, Accumulator], torch.Tensor]
"""`prune(name, weight, stats)` -> the pruned weight [out, in] of the targeted linear `name`,
given a float32 copy of its weight (which it may overwrite) and its input statistics."""


@torch.no_grad()
def prune_layerwise(
    model: nn.Module,
    linears: dict[str, nn.Linear],
    calibration: torch.Tensor,
    accumulator: AccumulatorFactory,
    prune: MatrixPrune,
    config: LayerwiseConfig,
    progress: bool = True,
) -> dict[str, Any]:
    """The sequential loop over decoder layers for the given linears (named as in `model`): each
    layer's inputs come from the already-pruned layers before it. Returns timing statistics."""
    engine = LayerwiseEngine(model, calibration, config.batch_size, config.offload, progress)
    per_layer = targets_per_layer(engine.layers, linears)
    accumulate_seconds = prune_seconds = 0.0
    with _ieee_float32():
        for index, layer in engine.steps(max(per_layer) + 1):
            layer_linears = per_layer.get(index)
            if not layer_linears:
                continue
            statistics = InputStatistics(layer_linears, accumulator)
            with statistics.hooked():
                engine.forward(index)
            accumulate_seconds += statistics.seconds
            for name, linear in layer_linears.items():
                if name not in statistics.stats:
                    raise HarnessError(f"{name} received no calibration input; exclude it with --targets")
                device = linear.weight.device
                _sync(device)
                start = time.perf_counter()
                weight = linear.weight.detach().to(torch.float32, copy=True)
                linear.weight.copy_(prune(name, weight, statistics.stats[name]))
                _sync(device)
                prune_seconds += time.perf_counter() - start
    return {
        "capture_seconds": round(engine.capture_seconds, 3),
        "forward_seconds": round(engine.forward_seconds - accumulate_seconds, 3),
        "accumulate_seconds": round(accumulate_seconds, 3),
        "prune_math_seconds": round(prune_seconds, 3),
        "calibration_shape": list(calibration.shape),
    }


class LayerwisePruner(Pruner):
    """Base of the sequential one-shot methods (Wanda, SparseGPT, ADMM): a subclass says what to
    accumulate from a linear's inputs (`accumulator`) and how to prune one matrix given it
    (`prune_matrix`); the engine runs the layer-by-layer protocol around them."""

    Config = LayerwiseConfig
    supports_nm = True
    honours_profile = True

    @abc.abstractmethod
    def accumulator(self, linear: nn.Linear) -> Accumulator:
        """A fresh accumulator for the inputs of `linear` (e.g. `InputNormAccumulator`, or
        `GramAccumulator` for XᵀX); the engine feeds it every calibration batch of that linear."""

    @abc.abstractmethod
    def prune_matrix(self, weight: torch.Tensor, stats: Accumulator, sparsity: Sparsity) -> torch.Tensor:
        """The pruned weight [out, in] of one linear. `weight` is a float32 copy the method may
        overwrite; `stats` is its filled accumulator. Must hit `sparsity` exactly for this matrix
        (e.g. through `select_mask`) and be deterministic."""

    def prune(self, model: nn.Module, sparsity: Sparsity, ctx: PruneContext) -> dict[str, Any]:
        def prune(name: str, weight: torch.Tensor, stats: Accumulator) -> torch.Tensor:
            return self.prune_matrix(weight, stats, ctx.sparsity_of(name, sparsity))

        return prune_layerwise(model, ctx.targets(model), ctx.calibration, self.accumulator, prune, self.config, ctx.progress)


class GramPruner(LayerwisePruner):
    """A layer-wise method that works from the inputs' Gram matrix XᵀX, the layer Hessian up to
    scale (SparseGPT, Thanos, ADMM)."""

    def accumulator(self, linear: nn.Linear) -> GramAccumulator:
        return GramAccumulator(linear.in_features, linear.weight.device)


def check_blocks_hold_groups(method: str, blocksize: int, sparsity: Sparsity) -> None:
    """Column blocks must not split N:M groups: `blocksize` a multiple of M."""
    if sparsity.is_nm and blocksize % sparsity.m:
        raise HarnessError(f"{method}.blocksize ({blocksize}) must be a multiple of M={sparsity.m}")


def targets_per_layer(layers: nn.ModuleList, targets: dict[str, nn.Linear]) -> dict[int, dict[str, nn.Linear]]:
    """Targeted linears grouped by the index of the decoder layer that owns them."""
    owner = {id(module): index for index, layer in enumerate(layers) for module in layer.modules()}
    grouped: dict[int, dict[str, nn.Linear]] = {}
    for name, linear in targets.items():
        grouped.setdefault(owner[id(linear)], {})[name] = linear
    return grouped
