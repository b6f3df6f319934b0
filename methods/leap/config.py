"""LEAP's settings: the mask-training hyperparameters (the reference's defaults), the training
budget with its device-dependent defaults, the named recipes, and LEAP's own choices (prior, final
mask, refit).

A recipe is a named set of values for fields the user left at None (`RECIPES`): `resolve` fills
them in as it fills in the budget from the device, so the resolved config, which names each
record, states every concrete value, and an explicit `--set leap.FIELD=...` wins over the recipe.
The recipe itself, left unset, follows the number of steps (`default_recipe`): `small-budget`
for a short schedule (the CPU's 128 steps, a short GPU check), the paper's settings for the paper's
2000 steps on CUDA. Adding a recipe is one entry in `RECIPES`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

import torch

from harness.config import PrunerConfig
from harness.errors import HarnessError
from harness.registry import get_pruner

_HARNESS = {"logit_dtype": "float32", "schedule_end": "last-step", "final_mask": "topk"}
RECIPES: dict[str, dict[str, str | float]] = {
    "paper": {**_HARNESS, "tau_start": 4.0, "sampling": "sequence"},
    "reference": {"logit_dtype": "bfloat16", "schedule_end": "t/T", "final_mask": "threshold", "tau_start": 4.0, "sampling": "sequence"},
    "small-budget": {**_HARNESS, "tau_start": 1.0, "sampling": "micro-batch"},
}
"""paper: the paper's hyperparameters as the harness runs them (float32 logits, τ from 4, one mask
per sequence, τ and s reaching their end values at the last step, an exact global top-k).
reference: the authors' code as it runs on their GPUs (bfloat16 logits and noise, their
controller's t/T that never reaches the end values, θ > 0). small-budget: what the CPU budget
study found learns in a few hundred steps (τ from 1, one mask per micro-batch, so twice the steps
in the same time). docs/leap.md, Recipes and Budget study."""
SMALL_BUDGET_MAX_STEPS = 256
"""The longest schedule the small-budget recipe was measured to win at (docs/leap.md, Budget study);
longer ones keep the paper's settings."""


def default_recipe(steps: int) -> str:
    """The recipe where leap.recipe is unset: small-budget up to SMALL_BUDGET_MAX_STEPS steps, where
    the paper's τ_start = 4 spends too much of a short schedule on masks near one half, else paper."""
    return "small-budget" if steps <= SMALL_BUDGET_MAX_STEPS else "paper"


UNRESOLVED = "the LEAP config is not resolved for a device; call config.resolve(device) first"


@dataclass
class MaskTrainingConfig(PrunerConfig):
    """Hyperparameters of mask learning; defaults are the reference's (Paramathic/patch, leap).

    The budget fields left at None are resolved by `Budget.resolve` from the device: the paper's
    scale on CUDA, a small budget on CPU. The fields a recipe sets, left at None, come from the
    recipe (`_with_recipe`), itself the budget's (`default_recipe`) where it is None."""

    steps: int | None = None  # optimizer steps
    batch_size: int | None = None  # sequences per micro-batch
    grad_accum: int | None = None  # micro-batches per optimizer step
    seqlen: int | None = None  # tokens per training sequence
    # One relaxed mask per sequence (the reference's local batch of 1; each sequence its own
    # forward) or one per micro-batch (one forward of batch_size sequences): training.py.
    sampling: Literal["sequence", "micro-batch"] | None = None  # None: the recipe's
    lr: float = 1e-3
    warmup_steps: int = 5
    beta2: float = 0.95
    max_grad_norm: float = 1.0  # the reference's HF Trainer clips at 1.0; 0 disables clipping
    tau_start: float | None = None  # None: the recipe's
    tau_end: float = 0.05
    scale_start: float = 25.0
    scale_end: float = 350.0
    init_std: float = 0.014
    prior_strength: float = 3.0
    sparse_reg: float = 7.0  # λ_s on |soft density − target density|
    weight_reg: float = 10.0  # λ_w on the kept weight norm ratio, decaying linearly to 0
    distill: float = 0.0  # weight of KL(dense teacher ‖ masked student); 0 = off (the paper)
    checkpoint_every: int = 25  # steps between checkpoints in the run's work folder; 0 = never
    autocast_bf16: bool | None = None  # None: on for CUDA, off for CPU
    grad_checkpointing: bool = False  # recompute each decoder layer in backward (large models)
    recipe: str | None = None  # a name in RECIPES, whose values fill the fields it names that are left at None; None: the budget's
    # θ's dtype, which also keeps AdamW's moments and decides the relaxed sample's arithmetic.
    logit_dtype: Literal["float32", "bfloat16"] | None = None
    # τ and s reach their end values at the last step, or follow the reference's t/T (never reaching them).
    schedule_end: Literal["last-step", "t/T"] | None = None

    def validate(self) -> None:
        if self.recipe is not None and self.recipe not in RECIPES:
            raise HarnessError(f"leap.recipe must be one of {', '.join(RECIPES)}; got {self.recipe!r}")
        for name in ("steps", "batch_size", "grad_accum", "seqlen"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise HarnessError(f"leap.{name} must be at least 1, got {value}")
        if self.seqlen is not None and self.seqlen < 2:
            raise HarnessError(f"leap.seqlen must be at least 2, got {self.seqlen}")
        positive = ("lr", "tau_start", "tau_end", "scale_start", "scale_end", "init_std")
        for name in positive:
            if getattr(self, name) is not None and not getattr(self, name) > 0:
                raise HarnessError(f"leap.{name} must be positive, got {getattr(self, name)}")
        for name in ("warmup_steps", "max_grad_norm", "prior_strength", "sparse_reg", "weight_reg", "distill", "checkpoint_every"):
            if getattr(self, name) < 0:
                raise HarnessError(f"leap.{name} must be non-negative, got {getattr(self, name)}")
        if not 0 < self.beta2 < 1:
            raise HarnessError(f"leap.beta2 must be in (0, 1), got {self.beta2}")

    def resolve(self, device: torch.device) -> MaskTrainingConfig:
        budget = Budget.resolve(self, device)
        autocast = self.autocast_bf16 if self.autocast_bf16 is not None else device.type == "cuda"
        return dataclasses.replace(self._with_recipe(budget.steps), **dataclasses.asdict(budget), autocast_bf16=autocast)

    def _with_recipe(self, steps: int) -> MaskTrainingConfig:
        """This config with its recipe (the budget's where unset) named and the recipe's values in
        the fields left at None."""
        recipe = self.recipe or default_recipe(steps)
        names = {f.name for f in dataclasses.fields(self)}
        unset = {name: value for name, value in RECIPES[recipe].items() if name in names and getattr(self, name) is None}
        return dataclasses.replace(self, recipe=recipe, **unset)

    @property
    def logit_torch_dtype(self) -> torch.dtype:
        """`logit_dtype` of a resolved config as a torch dtype."""
        return getattr(torch, self.logit_dtype)


@dataclass(frozen=True)
class Budget:
    """The training budget actually used: steps × grad_accum × batch_size sequences of seqlen."""

    steps: int
    batch_size: int
    grad_accum: int
    seqlen: int

    # Paper scale (README: 2000 steps of 128 × 4096 tokens) as 32 micro-batches of 4 on one GPU.
    GPU = (2000, 4, 32, 4096)
    # 131k tokens: 6-7 minutes of training for SmolLM2-135M on two idle CPU cores with the
    # small-budget recipe (docs/leap.md, Budget study).
    CPU = (128, 4, 1, 256)

    @classmethod
    def resolve(cls, config: MaskTrainingConfig, device: torch.device) -> "Budget":
        defaults = cls.GPU if device.type == "cuda" else cls.CPU
        given = (config.steps, config.batch_size, config.grad_accum, config.seqlen)
        return cls(*(value if value is not None else default for value, default in zip(given, defaults)))

    @property
    def sequences(self) -> int:
        return self.steps * self.grad_accum * self.batch_size

    @property
    def tokens(self) -> int:
        return self.sequences * self.seqlen

    @classmethod
    def of(cls, config: MaskTrainingConfig) -> "Budget":
        """The budget of a config already resolved for its device (`config.resolve(device)`)."""
        given = (config.steps, config.batch_size, config.grad_accum, config.seqlen)
        if None in given:
            raise ValueError(UNRESOLVED)
        return cls(*given)


@dataclass
class LEAPConfig(MaskTrainingConfig):
    prior: str = "wanda"  # registered pruner giving the initial mask (the paper's text says magnitude)
    final_mask: Literal["topk", "threshold"] | None = None  # exact global top-k of θ, or θ > 0 (reference); None: the recipe's
    refit: bool = False  # re-fit the kept weights on the final mask (ADMM update, fixed mask)
    corpus: Literal["c4-local", "slimpajama"] = "c4-local"  # training text; slimpajama: the paper's, once fetched

    def validate(self) -> None:
        super().validate()
        if self.prior == "leap":
            raise HarnessError("leap.prior must be a one-shot method such as wanda or magnitude, not leap")
        get_pruner(self.prior)  # an unknown name fails here, with the registry's suggestion
