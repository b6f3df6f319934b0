"""Statistics of a linear layer's calibration inputs, gathered by forward hooks.

Wanda needs the column norms ‖X_j‖₂ of the inputs X (tokens × in_features); SparseGPT and ADMM
need the Gram matrix XᵀX. Both are plain sums over every calibration token in float32, so no
method depends on how the engine splits the samples into mini-batches (the methods that consume
them are invariant to the overall scale, which is why the references' 1/n or 2/n factors are
left out). Linears that receive the very same input tensor (q/k/v, gate/up) share one
accumulator, so each distinct input is reduced once."""

from __future__ import annotations

import abc
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn


class Accumulator(abc.ABC):
    """Running statistic of the inputs seen by one linear layer (or several sharing its input).

    Contract for a plugin's own statistic: subclass and implement `fold`; keep the state as
    tensors on the device given to the constructor (the layer's), so the engine never moves them;
    make the statistic a sum over tokens (or otherwise independent of how the engine splits the
    calibration windows into batches). The engine calls `add` once per hooked forward and hands
    the accumulator, finished, to the method's one-matrix prune."""

    def __init__(self) -> None:
        self.tokens = 0

    def add(self, inputs: torch.Tensor) -> None:
        """Fold in a batch of inputs of shape [..., in_features]; counts its tokens."""
        x = inputs.reshape(-1, inputs.shape[-1]).float()
        self.tokens += x.shape[0]
        self.fold(x)

    @abc.abstractmethod
    def fold(self, x: torch.Tensor) -> None:
        """Fold in float32 inputs of shape [tokens, in_features] (the inputs are not kept)."""


class InputNormAccumulator(Accumulator):
    """Sum over tokens of X_j², per input feature j; `norms` gives ‖X_j‖₂ (Wanda's scale)."""

    def __init__(self, in_features: int, device: torch.device) -> None:
        super().__init__()
        self.sq_sum = torch.zeros(in_features, dtype=torch.float32, device=device)

    def fold(self, x: torch.Tensor) -> None:
        self.sq_sum += x.square().sum(dim=0)

    def norms(self) -> torch.Tensor:
        return self.sq_sum.sqrt()


class GramAccumulator(Accumulator):
    """Gram matrix XᵀX (in_features²) summed over tokens: the layer-wise Hessian up to scale."""

    def __init__(self, in_features: int, device: torch.device) -> None:
        super().__init__()
        self.gram = torch.zeros(in_features, in_features, dtype=torch.float32, device=device)

    def fold(self, x: torch.Tensor) -> None:
        self.gram.addmm_(x.T, x)


AccumulatorFactory = Callable[[nn.Linear], Accumulator]


class InputStatistics:
    """Forward hooks that feed each linear's input into its accumulator and time that work.

    Sharing is decided per call: a linear whose input is the same tensor object as the previous
    hooked call's reuses that accumulator instead of adding the input a second time."""

    def __init__(self, linears: dict[str, nn.Linear], factory: AccumulatorFactory) -> None:
        self.linears = linears
        self.factory = factory
        self.stats: dict[str, Accumulator] = {}
        self.seconds = 0.0
        self._shares: dict[str, bool] = {}
        self._last: tuple[torch.Tensor, Accumulator] | None = None

    def _hook(self, name: str) -> Callable[[nn.Module, tuple, torch.Tensor], None]:
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            x = args[0]
            if x.is_cuda:  # time this hook's kernels only, not the layer's queued before it
                torch.cuda.synchronize(x.device)
            start = time.perf_counter()
            shared = self._last is not None and self._last[0] is x
            if name not in self.stats:
                self.stats[name] = self._last[1] if shared else self.factory(module)
                self._shares[name] = shared
            elif self._shares[name] != shared:
                raise RuntimeError(f"{name}: its input is shared with another linear in some batches only")
            if not shared:
                self.stats[name].add(x.detach())
                self._last = (x, self.stats[name])
            if x.is_cuda:
                torch.cuda.synchronize(x.device)
            self.seconds += time.perf_counter() - start

        return hook

    @contextmanager
    def hooked(self) -> Iterator["InputStatistics"]:
        """Accumulate while inside the block; the hooks (and the last input held) go on exit."""
        handles = [linear.register_forward_hook(self._hook(name)) for name, linear in self.linears.items()]
        try:
            yield self
        finally:
            for handle in handles:
                handle.remove()
            self._last = None
