"""LEAP's schedules, pure functions of the step: τ and s anneal linearly from their start values
at step 0, reaching their end values at the last step (`end="last-step"`) or, as the reference's
`TemperatureScalerController` (patch/mask_trainer.py: start + (end − start)·min(t/T, 1), its step
counted from 0 and advanced after each optimizer step), at progress t/T, which is (T − 1)/T at the
last step (`end="t/T"`); the learning rate follows HF's cosine schedule with linear warm-up (as the
reference's Trainer); the weight-norm bonus decays as (1 − t/T)."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Schedule:
    """Per-step values of τ, the logit scale s, the lr factor and the weight-bonus factor."""

    steps: int
    warmup_steps: int
    tau: tuple[float, float]
    scale: tuple[float, float]
    end: str  # "last-step" or "t/T": where the linear anneal of τ and s ends

    def __post_init__(self) -> None:
        if self.end not in ("last-step", "t/T"):
            raise ValueError(f"schedule end must be 'last-step' or 't/T', got {self.end!r} (resolve the config first)")

    def _progress(self, step: int) -> float:
        if self.end == "t/T":
            return step / self.steps
        return step / (self.steps - 1) if self.steps > 1 else 1.0

    def tau_at(self, step: int) -> float:
        start, end = self.tau
        return start + (end - start) * self._progress(step)

    def scale_at(self, step: int) -> float:
        start, end = self.scale
        return start + (end - start) * self._progress(step)

    def lr_factor(self, step: int) -> float:
        """HF `get_cosine_schedule_with_warmup` (the reference's Trainer: 'cosine', 5 warm-up steps)."""
        if step < self.warmup_steps:
            return step / max(1, self.warmup_steps)
        progress = (step - self.warmup_steps) / max(1, self.steps - self.warmup_steps)
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))

    def weight_reg_factor(self, step: int) -> float:
        """(1 − t/T), as the reference's `1 − global_step / max_steps`."""
        return 1.0 - step / self.steps
