"""LEAP, learnable end-to-end adaptive pruning, as a package: its config and budget
(`config`), the relaxed masks (`relaxed_mask`), the schedules, the training data source
(`windows`), the training loop (`training`), checkpoints, the pruner and its report figure."""

from harness.methods.leap.config import Budget, LEAPConfig, MaskTrainingConfig
from harness.methods.leap.pruner import CHECKPOINT_FILE, LEAPPruner

__all__ = ["CHECKPOINT_FILE", "Budget", "LEAPConfig", "LEAPPruner", "MaskTrainingConfig"]
