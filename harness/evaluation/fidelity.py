"""Fidelity to the dense model on the perplexity windows: per-token KL(dense ‖ pruned) and top-1
agreement, as llama.cpp reports them for quantized models.

What is stored of the dense side. Per predicted token, the dense model's top-k log-probabilities
(float16) and their token ids (int32), plus the log of the remaining ("tail") probability mass:
k·6 + 4 bytes a token, whatever the vocabulary (49k for SmolLM2, 262k for Gemma-3). With
`TOPK` = 32 the whole WikiText-2 test set of SmolLM2 (305k tokens) takes 60 MB. It is computed once
per (model, data file, window, token limit, dtype) from the freshly loaded dense model of the
first cell that needs it, saved under the harness cache folder, and reused by every later cell and
re-run; its key is in the record.

The KL. With p the dense and q the pruned distribution, the stored part gives
    KL_k = Σ_{i ∈ top-k(p)} p_i (log p_i − log q_i) + p_tail (log p_tail − log q_tail),
the KL divergence between the two distributions with every token outside the dense top-k merged
into one "tail" outcome. Merging outcomes never increases a KL divergence, so KL_k is a lower
bound of the full KL, and it is exact when the dense top-k holds all the mass."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

TOPK = 32


@dataclass
class DenseReference:
    """The dense model's top-k log-probabilities, ids and tail log-mass for every predicted token
    of the windows [n, seqlen − 1, k], [n, seqlen − 1, k], [n, seqlen − 1]."""

    logp: torch.Tensor
    ids: torch.Tensor
    tail: torch.Tensor


def reference_key(model: str, data_sha256: str, seqlen: int, tokens: int | None, dtype: str, windows: int) -> str:
    """The identity of a dense reference: what changes the dense model's distributions."""
    text = f"{model}|{data_sha256}|{seqlen}|{tokens}|{dtype}|{windows}|top{TOPK}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _log_tail(topk_logp: torch.Tensor) -> torch.Tensor:
    """log(1 − Σ exp(topk_logp)), clamped so that a top-k holding all the mass gives a finite value."""
    mass = topk_logp.float().exp().sum(-1).clamp(max=1 - 1e-7)
    return torch.log1p(-mass)


class ReferenceBuilder:
    """Collects the dense side while the dense model's perplexity pass runs: an `observe` callback
    of `window_nlls`, called with each batch's next-token logits."""

    def __init__(self) -> None:
        self.parts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def __call__(self, start: int, stop: int, logits: torch.Tensor) -> None:
        top = F.log_softmax(logits, dim=-1).topk(TOPK, dim=-1)
        self.parts.append((top.values.half().cpu(), top.indices.int().cpu(), _log_tail(top.values).cpu()))

    def reference(self) -> DenseReference:
        return DenseReference(*(torch.cat([part[i] for part in self.parts]) for i in range(3)))


class FidelityMeter:
    """Per-window summed KL_k and top-1 agreement against a dense reference, while the pruned
    model's perplexity pass runs (an `observe` callback of `window_nlls`)."""

    def __init__(self, reference: DenseReference) -> None:
        self.reference = reference
        self.kl: list[float] = []
        self.agree: list[int] = []

    def __call__(self, start: int, stop: int, logits: torch.Tensor) -> None:
        device = logits.device
        logp = F.log_softmax(logits, dim=-1)
        ids = self.reference.ids[start:stop].to(device).long()
        at_topk = logp.gather(-1, ids)
        kl = kl_topk(self.reference.logp[start:stop].to(device), self.reference.tail[start:stop].to(device), at_topk)
        self.kl += kl.double().sum(-1).tolist()
        self.agree += (logp.argmax(-1) == ids[..., 0]).sum(-1).tolist()


def compute_reference(model: nn.Module, windows: torch.Tensor, progress: bool = False) -> DenseReference:
    """The dense side from a dense model, by a perplexity pass over the windows."""
    from harness.evaluation.perplexity import window_nlls

    builder = ReferenceBuilder()
    window_nlls(model, windows, progress=progress, desc="dense reference", observe=builder)
    return builder.reference()


def load_reference(path: Path) -> DenseReference | None:
    return DenseReference(**torch.load(path, weights_only=True)) if path.exists() else None


def save_reference(path: Path, reference: DenseReference) -> None:
    """Saved atomically, so a concurrent cell never reads half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.{os.getpid()}")
    torch.save({"logp": reference.logp, "ids": reference.ids, "tail": reference.tail}, staging)
    os.replace(staging, path)


def kl_topk(reference_logp: torch.Tensor, reference_tail: torch.Tensor, pruned_logp_at_topk: torch.Tensor) -> torch.Tensor:
    """KL_k per token (see the module docstring) from the dense top-k log-probs and tail log-mass
    and the pruned model's log-probs at the same token ids."""
    p_logp = reference_logp.float()
    q_tail = _log_tail(pruned_logp_at_topk)
    head = (p_logp.exp() * (p_logp - pruned_logp_at_topk)).sum(-1)
    return head + reference_tail.exp() * (reference_tail - q_tail)
