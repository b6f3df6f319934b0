"""LEAP's checkpoints: everything a killed run needs to continue bit for bit, written atomically."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from harness.errors import HarnessError


@dataclass
class Checkpoint:
    """Everything needed to continue training: logits, optimizer moments, the next step, the
    curve so far, and caller data (LEAP keeps its prior's bits and statistics there)."""

    step: int
    logits: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    curve: list[dict[str, float]]
    seconds: float
    extra: dict[str, Any]
    fingerprint: dict[str, Any]

    def save(self, path: Path) -> None:
        """Atomic: written beside the target and renamed, so a kill never leaves half a file."""
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = path.with_name(path.name + ".tmp")
        torch.save(self.__dict__, staging)
        os.replace(staging, path)

    @classmethod
    def load(cls, path: Path, fingerprint: dict[str, Any]) -> "Checkpoint | None":
        """The checkpoint at `path` if any; an error if it belongs to a different run."""
        if not path.exists():
            return None
        data = torch.load(path, map_location="cpu", weights_only=False)
        if data.get("fingerprint") != fingerprint:
            raise HarnessError(f"checkpoint {path} was written by a different run (config, sparsity, seed or model); delete it to start over")
        return cls(**data)
