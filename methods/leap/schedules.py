"""LEAP's schedules, pure functions of the step: τ and s anneal linearly from their start values
at step 0 to their end values at the last step; the learning rate follows HF's cosine schedule
with linear warm-up (as the reference's Trainer); the weight-norm bonus decays as (1 − t/T)."""

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

    def _progress(self, step: int) -> float:
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
