"""Data parallelism under `torchrun`: the ranks of one process group and the few collective
operations the harness needs.

`torchrun --nproc_per_node N -m harness run ...` starts N copies of the command; each finds
WORLD_SIZE, RANK and LOCAL_RANK in its environment and joins one process group (gloo on CPU,
NCCL on CUDA, one GPU per local rank). Every rank plans the same sweep. A method that shares its
work across ranks (`Pruner.data_parallel`, LEAP's mask training) runs its cells on every rank,
first; every other cell, and every evaluation, record and report, runs on rank 0 alone, after. Without
torchrun there is one rank and every operation here is a no-op."""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass

import torch

from harness.errors import HarnessError

COLLECTIVE_TIMEOUT = dt.timedelta(hours=6)
"""How long a rank waits in a collective: the other ranks may wait in a LEAP cell's first step
while rank 0 evaluates the previous LEAP cell (full zero-shot suites on a large model take
hours). Data-parallel cells run first under torchrun, so no rank waits longer than that."""


@dataclass(frozen=True)
class World:
    """This process's rank among `size` ranks (0 of 1 without torchrun)."""

    rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def sum(self, tensors: list[torch.Tensor]) -> None:
        """Sum each tensor over the ranks, in place: every rank gets the same result."""
        if self.size > 1:
            for tensor in tensors:
                torch.distributed.all_reduce(tensor)

    def sum_values(self, values: dict[str, float], device: torch.device) -> dict[str, float]:
        """A dict of numbers summed over the ranks (every rank must hold the same keys)."""
        if self.size == 1:
            return values
        keys = sorted(values)
        packed = torch.tensor([values[key] for key in keys], dtype=torch.float64, device=device)
        torch.distributed.all_reduce(packed)
        return dict(zip(keys, packed.tolist()))

    def agree(self, value: int, what: str, fix: str, device: torch.device) -> None:
        """Raise on every rank (so none is left waiting) unless all ranks hold the same `value`."""
        if self.size == 1:
            return
        bounds = torch.tensor([value, -value], dtype=torch.int64, device=device)
        torch.distributed.all_reduce(bounds, op=torch.distributed.ReduceOp.MAX)
        if int(bounds[0]) != -int(bounds[1]):
            raise HarnessError(f"the ranks disagree on {what} ({-int(bounds[1])} to {int(bounds[0])}); {fix}")

    def share_from_main(self, tensors: list[torch.Tensor]) -> None:
        """Rank 0's values of `tensors` on every rank, in place."""
        if self.size > 1:
            for tensor in tensors:
                torch.distributed.broadcast(tensor, src=0)

    def barrier(self) -> None:
        if self.size > 1:
            torch.distributed.barrier()


def world() -> World:
    """The current process group's view of this process (one rank when there is none)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return World(torch.distributed.get_rank(), torch.distributed.get_world_size())
    return World()


def launched_ranks() -> int:
    """How many ranks torchrun launched (its WORLD_SIZE; 1 without it), known before the group
    is joined, so the plan can check a data-parallel method's shares up front."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def join_from_environment(device: str) -> World:
    """Join the process group that torchrun describes in the environment, once; one rank
    without it. On CUDA each rank takes the GPU of its local rank (GPU 0 where the launcher
    shows each rank one GPU), so the device must be plain `cuda`."""
    if launched_ranks() > 1 and not torch.distributed.is_initialized():
        on_gpu = device.startswith("cuda")
        if on_gpu:
            if device != "cuda":
                raise HarnessError(f"under torchrun each rank takes its own GPU; use --device cuda, not {device}")
            local_rank, visible = int(os.environ.get("LOCAL_RANK", "0")), torch.cuda.device_count()
            if visible > 1 and local_rank >= visible:
                raise HarnessError(f"local rank {local_rank} has no GPU ({visible} visible); lower --nproc_per_node")
            torch.cuda.set_device(local_rank if visible > 1 else 0)
        torch.distributed.init_process_group("nccl" if on_gpu else "gloo", timeout=COLLECTIVE_TIMEOUT)
    return world()
