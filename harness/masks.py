"""Mask selection shared by every pruner: lowest scores pruned, exact counts, ties broken stably."""

from __future__ import annotations

import torch

from harness.sparsity import Sparsity


def prune_count(numel: int, ratio: float) -> int:
    """Number of entries to zero so that a matrix hits `ratio` exactly (rounded to nearest)."""
    return int(round(numel * ratio))


def lowest_mask_matrix(scores: torch.Tensor, ratio: float) -> torch.Tensor:
    """Boolean keep-mask that drops the `ratio` lowest scores of the whole tensor."""
    return lowest_k_mask(scores, prune_count(scores.numel(), ratio))


def lowest_k_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean keep-mask that drops exactly the `k` lowest scores of the whole tensor."""
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


def _sortable_keys(values: torch.Tensor) -> torch.Tensor:
    """int32 keys in the order of the float32 values (negative below positive, −0 below +0)."""
    bits = values.detach().float().contiguous().view(torch.int32)
    return torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits)


def global_lowest_masks(scores: dict[str, torch.Tensor], ratio: float) -> dict[str, torch.Tensor]:
    """Keep-masks that drop the `ratio` lowest scores of all tensors together, exactly, without
    concatenating them: the threshold is the k-th smallest score, found by bisection over the
    float32 order (32 counting passes, each one tensor at a time), and scores equal to it are
    dropped in tensor order, then flat index order, until the count is exact. Extra memory: the
    keys and masks of the largest tensor, not of the model (an 8B model's logits need 28 GB to
    concatenate)."""
    total = sum(t.numel() for t in scores.values())
    k = prune_count(total, ratio)
    if k == 0:
        return {name: torch.ones_like(t, dtype=torch.bool) for name, t in scores.items()}

    def count_at_most(key: int) -> int:
        return sum(int((_sortable_keys(t) <= key).sum()) for t in scores.values())

    low = min(int(_sortable_keys(t).min()) for t in scores.values())
    high = max(int(_sortable_keys(t).max()) for t in scores.values())
    while low < high:  # the smallest key with at least k scores at or below it
        middle = (low + high) // 2
        if count_at_most(middle) >= k:
            high = middle
        else:
            low = middle + 1
    ties_to_drop = k - (count_at_most(low - 1) if low > -(2**31) else 0)
    masks = {}
    for name, tensor in scores.items():
        keys = _sortable_keys(tensor)
        keep = keys > low
        if ties_to_drop > 0:
            tied = (keys == low).flatten().nonzero().squeeze(1)
            keep.view(-1)[tied[ties_to_drop:]] = True  # the first ties_to_drop equal scores go
            ties_to_drop -= min(ties_to_drop, tied.numel())
        else:
            keep |= keys == low
        masks[name] = keep
    return masks
