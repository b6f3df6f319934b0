"""Which weights get pruned: by default every nn.Linear inside the decoder layers (the papers' set).

Embeddings and lm_head stay dense. A regex on module names narrows or widens the set."""

from __future__ import annotations

import re

import torch
from torch import nn

from harness.errors import HarnessError


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The stack of decoder blocks of a causal LM (Llama, Gemma, Qwen, Mistral, OPT, GPT-2 styles)."""
    for path in ("model.layers", "model.language_model.layers", "model.decoder.layers", "transformer.h", "gpt_neox.layers"):
        module: nn.Module | None = model
        for part in path.split("."):
            module = getattr(module, part, None)
            if module is None:
                break
        if isinstance(module, nn.ModuleList):
            return module
    raise HarnessError(f"cannot find the decoder layers of {type(model).__name__}; pass a supported causal LM")


def find_linears(module: nn.Module, pattern: str | None = None) -> dict[str, nn.Linear]:
    """nn.Linear submodules of `module` by relative name, optionally filtered by a regex search."""
    regex = re.compile(pattern) if pattern else None
    return {
        name: sub
        for name, sub in module.named_modules()
        if isinstance(sub, nn.Linear) and (regex is None or regex.search(name))
    }


def target_linears(model: nn.Module, pattern: str | None = None) -> dict[str, nn.Linear]:
    """Targeted linears by their full model name, in decoder-layer order."""
    layers = decoder_layers(model)
    prefix = next(name for name, mod in model.named_modules() if mod is layers)
    targets: dict[str, nn.Linear] = {}
    for i, layer in enumerate(layers):
        for name, linear in find_linears(layer).items():
            full = f"{prefix}.{i}.{name}"
            if pattern is None or re.search(pattern, full):
                targets[full] = linear
    if not targets:
        raise HarnessError(f"no linear layer matches the target pattern {pattern!r}")
    return targets


@torch.no_grad()
def count_zeros(linears: dict[str, nn.Linear]) -> tuple[dict[str, float], float]:
    """Realized sparsity per matrix and overall, by counting exact zeros."""
    per_layer: dict[str, float] = {}
    zeros = total = 0
    for name, linear in linears.items():
        z = int((linear.weight == 0).sum())
        n = linear.weight.numel()
        per_layer[name] = z / n
        zeros += z
        total += n
    return per_layer, zeros / max(total, 1)
