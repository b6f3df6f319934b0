"""Paired bootstrap tests for accuracy deltas between two methods answering the same items.

Both methods answer the same questions, so the per-item differences carry the comparison:
resampling items asks whether a delta would survive another draw of questions from the task.

- Per task: the shared items (same task, same key) are resampled with replacement
  `RESAMPLES` times from a fixed seed. The two-sided p-value inverts the percentile interval:
  twice the smaller share of resampled deltas on either side of zero (zero counts on both
  sides), with a +1 correction, capped at 1. So p < 0.05 exactly when the 95% interval shown
  next to it excludes zero, and a delta of zero has p = 1.
- Average: items are resampled within each task and the task means averaged, so every task
  weighs the same, as in the suite average.
- Several seeds: a method's score on an item is its mean correctness over the seeds that
  answered it (items pooled across seeds). The item stays the unit of resampling, so extra
  seeds cannot pose as extra evidence; their spread is shown separately as ± std in the tables.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

RESAMPLES = 10_000
ALPHA = 0.05
_INDICES_PER_CHUNK = 4_000_000  # bounds memory when a task has many items (e.g. full MMLU)

ItemScores = dict[str, dict[str, float]]  # task -> item key -> mean correctness in [0, 1]


@dataclass(frozen=True)
class BootstrapResult:
    """Observed delta (fraction, a - b) with its bootstrap p-value and 95% interval."""

    delta: float
    p_value: float
    ci_low: float
    ci_high: float
    n_items: int

    @property
    def significant(self) -> bool:
        return self.p_value < ALPHA


@dataclass(frozen=True)
class Comparison:
    """Tests of a - b for every task both answered, and for their average."""

    per_task: dict[str, BootstrapResult]
    average: BootstrapResult


def item_scores(per_item_results: Iterable[Mapping[str, Mapping[str, float]]]) -> ItemScores:
    """Pool the `per_item` blocks of one method's records (one per seed) into mean scores."""
    sums: dict[str, dict[str, float]] = {}
    counts: dict[str, dict[str, int]] = {}
    for per_item in per_item_results:
        for task, items in per_item.items():
            task_sums = sums.setdefault(task, {})
            task_counts = counts.setdefault(task, {})
            for key, value in items.items():
                task_sums[key] = task_sums.get(key, 0.0) + float(value)
                task_counts[key] = task_counts.get(key, 0) + 1
    return {
        task: {key: total / counts[task][key] for key, total in task_sums.items()} for task, task_sums in sums.items()
    }


def paired_bootstrap(a: ItemScores, b: ItemScores, *, seed: int = 0) -> Comparison | None:
    """Test a - b per shared task and on the task average; None when no item is shared."""
    rng = np.random.default_rng(seed)
    per_task: dict[str, BootstrapResult] = {}
    resampled: list[np.ndarray] = []
    for task in sorted(set(a) & set(b)):
        keys = sorted(set(a[task]) & set(b[task]))
        if not keys:
            continue
        diffs = np.array([a[task][key] - b[task][key] for key in keys])
        boot = _resampled_means(diffs, rng)
        per_task[task] = _result(float(diffs.mean()), boot, len(keys))
        resampled.append(boot)
    if not per_task:
        return None
    observed = float(np.mean([result.delta for result in per_task.values()]))
    n_items = sum(result.n_items for result in per_task.values())
    average = _result(observed, np.mean(resampled, axis=0), n_items)
    return Comparison(per_task, average)


def _resampled_means(diffs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Means of `RESAMPLES` resamples of `diffs`, drawn in chunks to bound memory."""
    n = len(diffs)
    means = np.empty(RESAMPLES)
    step = max(1, _INDICES_PER_CHUNK // n)
    for start in range(0, RESAMPLES, step):
        stop = min(start + step, RESAMPLES)
        means[start:stop] = diffs[rng.integers(0, n, size=(stop - start, n))].mean(axis=1)
    return means


def _result(observed: float, boot: np.ndarray, n_items: int) -> BootstrapResult:
    tail = min(np.count_nonzero(boot <= 0), np.count_nonzero(boot >= 0))
    p_value = min(1.0, 2 * (tail + 1) / (RESAMPLES + 1))
    low, high = np.percentile(boot, [2.5, 97.5])
    return BootstrapResult(observed, p_value, float(low), float(high), n_items)


@dataclass(frozen=True)
class RatioResult:
    """Perplexity of a over b on the same windows, with its paired bootstrap 95% interval."""

    ratio: float
    ci_low: float
    ci_high: float
    n_windows: int

    @property
    def decided(self) -> bool:
        """The interval excludes 1: one model's perplexity is lower on another draw of windows too."""
        return self.ci_high < 1.0 or self.ci_low > 1.0


def window_nlls_mean(blocks: Iterable[Mapping[str, object]]) -> tuple[np.ndarray, int] | None:
    """The `ppl_per_window` blocks of one method's records (one per seed) as the mean summed NLL
    per window and the tokens per window; None when a record lacks them or they disagree."""
    arrays, tokens = [], set()
    for block in blocks:
        if not block or "nll" not in block:
            return None
        arrays.append(np.asarray(block["nll"], dtype=float))
        tokens.add(int(block["tokens"]))
    if not arrays or len(tokens) != 1 or len({len(array) for array in arrays}) != 1:
        return None
    return np.mean(arrays, axis=0), tokens.pop()


def paired_ppl_ratio(a: np.ndarray, b: np.ndarray, tokens: int, *, seed: int = 0) -> RatioResult:
    """ppl(a) / ppl(b) from summed NLLs per window (every window `tokens` predicted tokens): the
    exponential of the mean per-token NLL difference, whose windows are resampled with
    replacement `RESAMPLES` times for the percentile interval. Pairing removes the variance that
    both models share (hard and easy windows), which an interval per model would keep."""
    if a.shape != b.shape or not len(a):
        raise ValueError("paired windows must match in number")
    diffs = (a - b) / tokens
    boot = np.exp(_resampled_means(diffs, np.random.default_rng(seed)))
    low, high = np.percentile(boot, [2.5, 97.5])
    return RatioResult(float(np.exp(diffs.mean())), float(low), float(high), len(diffs))


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value for b items right only for A and c right only for B: the
    binomial test of min(b, c) among b + c discordant items at 1/2, doubled, capped at 1."""
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(b, c) + 1)) / 2**n
    return min(1.0, 2 * tail)


Z_ALPHA = NormalDist().inv_cdf(1 - ALPHA / 2)  # 1.960 for a two-sided 5% test
Z_POWER = NormalDist().inv_cdf(0.8)  # 0.842 for 80% power


def minimum_detectable_effect(sd: float, n: int) -> float:
    """The smallest true mean paired difference a two-sided 5% test on `n` items with per-item
    difference standard deviation `sd` detects with 80% power: (z₀.₉₇₅ + z₀.₈)·sd/√n."""
    return (Z_ALPHA + Z_POWER) * sd / math.sqrt(n) if n else math.inf


def items_needed(sd: float, effect: float) -> int:
    """Items a paired test needs to detect `effect` with 80% power at 5%, given the per-item
    difference standard deviation `sd` (for 0/1 scores about √(discordant share))."""
    return math.ceil(((Z_ALPHA + Z_POWER) * sd / effect) ** 2)


@dataclass(frozen=True)
class PairedCounts:
    """Per-item agreement of A with B on the items both answered (0/1 correctness)."""

    both: int
    only_a: int  # A right, B wrong
    only_b: int  # A wrong, B right
    neither: int

    @property
    def n(self) -> int:
        return self.both + self.only_a + self.only_b + self.neither

    @property
    def delta(self) -> float:
        return (self.only_a - self.only_b) / self.n

    @property
    def sd(self) -> float:
        """Sample standard deviation of the per-item difference (values −1, 0, 1)."""
        if self.n < 2:
            return 0.0
        mean = self.delta
        square = (self.only_a + self.only_b) / self.n
        return math.sqrt(max(square - mean * mean, 0.0) * self.n / (self.n - 1))

    @property
    def p_mcnemar(self) -> float:
        return mcnemar_exact(self.only_a, self.only_b)


def paired_counts(a: Mapping[str, float], b: Mapping[str, float]) -> PairedCounts:
    """Counts on the keys both answered; a mean over seeds counts as right when ≥ 0.5."""
    keys = set(a) & set(b)
    right_a = {key for key in keys if a[key] >= 0.5}
    right_b = {key for key in keys if b[key] >= 0.5}
    return PairedCounts(len(right_a & right_b), len(right_a - right_b), len(right_b - right_a), len(keys - right_a - right_b))


def margins(per_item_choices: Mapping[str, Mapping[str, list[float]]]) -> dict[str, dict[str, float]]:
    """The gold answer's log-likelihood margin per item: its score minus the best other choice's
    (positive exactly when lm-eval's `acc` counts the item right), from `per_item_choices`."""
    out: dict[str, dict[str, float]] = {}
    for task, items in per_item_choices.items():
        task_margins = out.setdefault(task, {})
        for key, (gold, *scores) in items.items():
            gold = int(gold)
            others = [score for index, score in enumerate(scores) if index != gold]
            if others:
                task_margins[key] = scores[gold] - max(others)
    return out


def mean_interval(values: np.ndarray, *, seed: int = 0) -> tuple[float, float, float]:
    """(mean, 95% bootstrap interval) of per-window values, e.g. a window's mean KL to dense."""
    boot = _resampled_means(np.asarray(values, dtype=float), np.random.default_rng(seed))
    low, high = np.percentile(boot, [2.5, 97.5])
    return float(np.mean(values)), float(low), float(high)
