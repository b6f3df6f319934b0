"""WikiText-2 perplexity, the SparseGPT/Wanda protocol: tokenize the joined test text once, cut
non-overlapping windows of `seqlen`, average the token-level NLL (exp of the mean)."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from harness.data import as_windows, wikitext2_text


@torch.no_grad()
def window_perplexity(
    model: nn.Module,
    windows: torch.Tensor,
    batch_size: int = 4,
    progress: bool = False,
    desc: str = "perplexity",
) -> float:
    """exp(mean token NLL) of a causal LM over rows of token ids [n, seqlen]."""
    return window_nlls(model, windows, batch_size, progress, desc)[0]


@torch.no_grad()
def window_nlls(
    model: nn.Module,
    windows: torch.Tensor,
    batch_size: int = 4,
    progress: bool = False,
    desc: str = "perplexity",
    observe: Callable[[int, int, torch.Tensor], None] | None = None,
) -> tuple[float, list[float]]:
    """(perplexity, summed NLL of every window). The perplexity is summed per batch exactly as it
    always was; the per-window sums (each over seqlen − 1 predicted tokens) are what a paired
    comparison of two models on the same windows resamples. `observe(start, stop, logits)` sees
    every batch's next-token logits (float32 [batch, seqlen − 1, vocab]), e.g. to measure
    fidelity to the dense model in the same pass."""
    device = next(model.parameters()).device
    total_nll = 0.0
    total_tokens = 0
    per_window: list[float] = []
    batches = range(0, windows.shape[0], batch_size)
    for start in tqdm(batches, desc=desc, disable=not progress, leave=False):
        batch = windows[start : start + batch_size].to(device)
        logits = model(input_ids=batch).logits.float()
        flat_logits, targets = logits[:, :-1].reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1)
        nll = nn.functional.cross_entropy(flat_logits, targets, reduction="sum")
        total_nll += float(nll)
        total_tokens += batch[:, 1:].numel()
        token_nll = nn.functional.cross_entropy(flat_logits, targets, reduction="none").view(batch.shape[0], -1)
        per_window += token_nll.double().sum(dim=1).tolist()
        if observe is not None:
            observe(start, start + batch.shape[0], logits[:, :-1])
    return math.exp(total_nll / total_tokens), per_window


def wikitext2_windows(
    tokenizer, seqlen: int, max_tokens: int | None = None, bos_per_window: bool = False, data_dir: Path | None = None
) -> torch.Tensor:
    """Token windows [n, seqlen] of the WikiText-2 test text, optionally limited to `max_tokens`."""
    ids = tokenizer(wikitext2_text(data_dir), return_tensors="pt", add_special_tokens=False).input_ids[0]
    if max_tokens is not None:
        ids = ids[:max_tokens]
    return as_windows(ids, seqlen, tokenizer.bos_token_id if bos_per_window else None)
