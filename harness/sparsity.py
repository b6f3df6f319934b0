"""Sparsity specs: an unstructured ratio in [0, 1) or an N:M pattern (N kept in every M)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from harness.errors import HarnessError

UNIFORM = "uniform"
OWL = "owl"
PROFILES = (UNIFORM, OWL)
"""Layer-wise sparsity profiles (`--profile`): every matrix at the target, or OWL's (harness.profiles)."""


@dataclass(frozen=True)
class Sparsity:
    """Target sparsity. `ratio` is the fraction of zeros; for N:M it is 1 - n/m.

    What a pruner must meet: unstructured, exactly `prune_count(numel, ratio)` zeros in every
    matrix it prunes (or in all of them together, for a method that allocates globally); N:M,
    at least M − N zeros in every group of M consecutive weights along the input dimension. The
    harness counts the zeros after every cell. Values compare and hash exactly, and `label()`
    round-trips through `parse`."""

    ratio: float
    n: int = 0
    m: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.ratio < 1.0:
            raise HarnessError(f"sparsity {self.ratio} is outside [0, 1); use e.g. --sparsity 0.5")
        if self.is_nm and not (0 < self.n < self.m):
            raise HarnessError(f"N:M sparsity needs 0 < N < M, got {self.n}:{self.m}")

    @property
    def is_nm(self) -> bool:
        return self.m > 0

    @classmethod
    def parse(cls, text: str | float) -> "Sparsity":
        """'0.5' -> 50% unstructured; '2:4' -> 2 of every 4 kept (50%)."""
        if isinstance(text, (int, float)):
            return cls(float(text))
        text = str(text).strip()
        match = re.fullmatch(r"(\d+):(\d+)", text)
        if match:
            n, m = int(match.group(1)), int(match.group(2))
            if m <= 0 or not 0 < n < m:
                raise HarnessError(f"N:M sparsity needs 0 < N < M, got {text!r}")
            return cls(1.0 - n / m, n, m)
        try:
            value = float(text)
        except ValueError:
            raise HarnessError(f"cannot read sparsity {text!r}; use a ratio like 0.5 or a pattern like 2:4") from None
        return cls(value)

    def label(self) -> str:
        """Exact text form used in records and file names: `parse(label())` gives this value back.
        Two decimals where they are exact (0.50, as every record so far), else the shortest exact
        decimal (0.125, 0.555); N:M as written (2:4)."""
        if self.is_nm:
            return f"{self.n}:{self.m}"
        short = f"{self.ratio:.2f}"
        return short if float(short) == self.ratio else repr(self.ratio)

    def __str__(self) -> str:
        return self.label()
