"""Mask selection shared by every pruner: lowest scores pruned, exact counts, ties broken stably."""

from __future__ import annotations

import torch

from harness.sparsity import Sparsity


def prune_count(numel: int, ratio: float) -> int:
    """Number of entries to zero so that a matrix hits `ratio` exactly (rounded to nearest)."""
    return int(round(numel * ratio))


def lowest_mask_matrix(scores: torch.Tensor, ratio: float) -> torch.Tensor:
    """Boolean keep-mask that drops the `ratio` lowest scores of the whole tensor."""
    k = prune_count(scores.numel(), ratio)
    keep = torch.ones(scores.numel(), dtype=torch.bool, device=scores.device)
    if k > 0:
        idx = torch.topk(scores.flatten().float(), k, largest=False, sorted=False).indices
        keep[idx] = False
    return keep.view_as(scores)


def lowest_mask_rows(scores: torch.Tensor, ratio: float) -> torch.Tensor:
    """Keep-mask that drops the lowest scores within each row (Wanda's comparison group).

    Each row drops floor(k/rows) entries; the remainder goes to the rows whose next-lowest score is
    smallest, so the matrix as a whole hits its sparsity exactly."""
    rows, cols = scores.shape
    k_total = prune_count(scores.numel(), ratio)
    base, extra = divmod(k_total, rows)
    order = torch.argsort(scores.float(), dim=1, stable=True)
    per_row = torch.full((rows,), base, dtype=torch.long, device=scores.device)
    if extra:
        next_scores = scores.float().gather(1, order[:, base : base + 1]).squeeze(1)
        per_row[torch.topk(next_scores, extra, largest=False).indices] += 1
    ranks = torch.arange(cols, device=scores.device).expand(rows, cols)
    drop_sorted = ranks < per_row[:, None]
    keep = torch.ones_like(scores, dtype=torch.bool)
    keep.scatter_(1, order, ~drop_sorted)
    return keep


def nm_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep-mask with the n highest scores of every m consecutive inputs of each row."""
    rows, cols = scores.shape
    if cols % m:
        raise ValueError(f"N:M needs the input dimension ({cols}) divisible by M={m}")
    groups = scores.float().reshape(rows, cols // m, m)
    top = torch.topk(groups, n, dim=-1).indices
    keep = torch.zeros_like(groups, dtype=torch.bool)
    keep.scatter_(-1, top, True)
    return keep.reshape(rows, cols)


def select_mask(scores: torch.Tensor, sparsity: Sparsity, group: str = "matrix") -> torch.Tensor:
    """Keep-mask for one matrix: N:M if the spec says so, else the lowest scores per `group`."""
    if sparsity.is_nm:
        return nm_mask(scores, sparsity.n, sparsity.m)
    if group == "row":
        return lowest_mask_rows(scores, sparsity.ratio)
    if group == "matrix":
        return lowest_mask_matrix(scores, sparsity.ratio)
    raise ValueError(f"unknown comparison group {group!r}; use 'row' or 'matrix'")
