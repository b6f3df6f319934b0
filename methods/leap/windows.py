"""LEAP's training data as a window source: token windows produced block by block from a seeded
maker, so a budget of any size holds one block in memory at a time."""

from __future__ import annotations

from collections.abc import Callable

import torch

from harness.methods.leap.relaxed_mask import noise_seed


WindowSource = Callable[[int, int], torch.Tensor]
"""`source(start, count)` -> token ids [count, seqlen]: windows start..start+count of the run."""


class BlockWindows:
    """A `WindowSource` over a function that makes `n` windows from a seed, produced in blocks so
    memory stays bounded for budgets of any size: block b holds windows [b·size, (b+1)·size)."""

    def __init__(self, make: Callable[[int, int], torch.Tensor], total: int, seed: int, block_size: int = 1024) -> None:
        self.make = make
        self.total = total
        self.seed = seed
        self.block_size = block_size
        self._block: tuple[int, torch.Tensor] | None = None

    def _block_rows(self, block: int) -> torch.Tensor:
        if self._block is None or self._block[0] != block:
            count = min(self.block_size, self.total - block * self.block_size)
            self._block = (block, self.make(count, noise_seed(self.seed, block) if block else self.seed))
        return self._block[1]

    def __call__(self, start: int, count: int) -> torch.Tensor:
        if start + count > self.total:
            raise IndexError(f"windows {start}..{start + count} requested from a source of {self.total}")
        rows = [self._block_rows(i // self.block_size)[i % self.block_size] for i in range(start, start + count)]
        return torch.stack(rows)
