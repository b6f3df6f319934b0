"""Zero-shot accuracy of an in-memory (pruned) model through lm-eval's Python API, offline.

The model is wrapped in `HFLM(pretrained=model, tokenizer=...)` and scored by `simple_evaluate`,
so no checkpoint is written between pruning and evaluation. Prompts, metrics and the MMLU group
average are the installed lm-eval's own; only the data source is replaced by local files
(`harness.evaluation.tasks`). `limit` keeps the first N records of each task (of each MMLU
subject) in file order, so every method is scored on the same items."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import lm_eval
import psutil
from lm_eval.api.group import Group
from lm_eval.models.huggingface import HFLM

from harness.data import data_root
from harness.errors import HarnessError
from harness.evaluation.tasks.local_data import HELLASWAG_VARIANTS
from harness.evaluation.suites import resolve_tasks
from harness.evaluation.tasks.local_task import build_task, task_manager

DEFAULT_BATCH_SIZE = "auto"
"""lm-eval's "auto": on GPU its OOM probe; on CPU (see `_InMemoryHFLM`) the largest batch, up to
`CPU_MAX_BATCH_SIZE`, whose logits for the longest request fit in half the free memory."""
CPU_MAX_BATCH_SIZE = 16
"""benchmarks/eval_throughput.py, SmolLM2-135M float32, leap6 at 20 items (MMLU 1 per subject) on
the shared 2-core CPU: batch 1 730 s, 8 274 s, 16 231 s, this "auto" (16) 214 s, same accuracy.
lm-eval's own "auto" probes 64 rows of the longest request and, with no OOM raised on CPU to stop
it, settled on 64: 761 s and 12.5 GB peak for the 57 MMLU questions (batch 16: 80 s, 3.2 GB)."""
_CPU_MEMORY_FRACTION = 0.5

PRIMARY_METRIC = "acc"
_METRICS = ("acc", "acc_norm")


@dataclass
class ZeroShotResult:
    """Flat metrics for the result record, per-item correctness for paired comparisons, run info."""

    metrics: dict[str, float] = field(default_factory=dict)
    n_items: dict[str, int] = field(default_factory=dict)
    per_item: dict[str, dict[str, int]] = field(default_factory=dict)
    per_item_choices: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)


class _InMemoryHFLM(HFLM):
    """HFLM with a memory-safe "auto" batch size on CPU, and a progress bar that follows the
    caller's `progress` flag (simple_evaluate has none)."""

    def __init__(self, *args: Any, progress: bool, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.progress = progress

    def loglikelihood(self, requests: list, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        return super().loglikelihood(requests, disable_tqdm=disable_tqdm or not self.progress)

    def _detect_batch_size(self, requests: list | None = None, pos: int = 0) -> int:
        """Rows whose float32 logits and log-softmax (2 x length x vocab each) fit in half the free
        memory, for the longest request (lm-eval sorts them longest first); no trial forwards."""
        if self.device.type != "cpu":
            return super()._detect_batch_size(requests, pos)
        length = self.max_length if requests is None else len(requests[pos][1]) + len(requests[pos][2])
        vocab = self.model.get_output_embeddings().weight.shape[0]
        row_bytes = 2 * min(length, self.max_length) * vocab * 4
        fit = int(psutil.virtual_memory().available * _CPU_MEMORY_FRACTION // row_bytes)
        return max(1, min(self.max_batch_size, fit))


def evaluate_zeroshot(
    model: Any,
    tokenizer: Any,
    tasks: list[str],
    *,
    data_dir: Path | None = None,
    limit: int | None = None,
    mmlu_limit: int | None | str = "same",
    batch_size: int | str = DEFAULT_BATCH_SIZE,
    hellaswag: str = "exact",
    progress: bool = True,
) -> ZeroShotResult:
    """Evaluate an in-memory HF causal LM with lm-eval's official task configs on local data,
    offline. `limit` keeps the first items of every task (of every MMLU subject); `mmlu_limit`,
    unless "same", sets MMLU's apart (a decisive protocol scores the small tasks in full and
    MMLU's 14k questions on a subset)."""
    names = resolve_tasks(tasks)
    if not names:
        return ZeroShotResult()
    limits = {name: limit if name != "mmlu" or mmlu_limit == "same" else mmlu_limit for name in names}
    for value in set(limits.values()):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise HarnessError(f"zero-shot limit must be a positive integer or None, got {value!r}")

    if not progress:
        datasets.disable_progress_bars()
    try:
        built = {name: build_task(name, data_root(data_dir), hellaswag) for name in names}
        on_cpu = next(model.parameters()).device.type == "cpu"
        lm = _InMemoryHFLM(
            pretrained=model,
            tokenizer=tokenizer,
            batch_size=batch_size,
            max_batch_size=CPU_MAX_BATCH_SIZE if on_cpu else 64,  # 64: lm-eval's default
            progress=progress,
        )
        start = time.perf_counter()
        output: dict[str, dict] = {key: {} for key in ("results", "n-samples", "samples", "n-shot", "versions")}
        for value in dict.fromkeys(limits.values()):  # one lm-eval run per distinct limit
            # Seeds None: scoring is deterministic, and the caller's global RNG streams stay untouched.
            part = lm_eval.simple_evaluate(
                model=lm,
                tasks=[built[name] for name in names if limits[name] == value],
                limit=value,
                task_manager=task_manager(),
                log_samples=True,
                random_seed=None,
                numpy_random_seed=None,
                torch_random_seed=None,
            )
            for key, merged in output.items():
                merged.update(part[key])
    finally:
        if not progress:
            datasets.enable_progress_bars()
    seconds = time.perf_counter() - start

    result = ZeroShotResult()
    for name, obj in built.items():
        result.metrics.update(_task_metrics(name, output["results"][name]))
        grouped = isinstance(obj, Group)
        leaves = [task.task_name for task in obj.get_all_tasks()] if grouped else [name]
        result.n_items[name] = sum(output["n-samples"][leaf]["effective"] for leaf in leaves)
        samples = [(f"{leaf}/{sample['doc_id']}" if grouped else str(sample["doc_id"]), sample) for leaf in leaves for sample in output["samples"][leaf]]
        result.per_item[name] = {key: int(sample[PRIMARY_METRIC]) for key, sample in samples}
        result.per_item_choices[name] = {key: choices for key, sample in samples if (choices := _choice_scores(sample))}
    result.metrics["avg_acc"] = sum(result.metrics[f"{name}_{PRIMARY_METRIC}"] for name in names) / len(names)
    result.info = {
        "lm_eval_version": lm_eval.__version__,
        "tasks": names,
        "limit": limit,
        **({"mmlu_limit": limits["mmlu"]} if "mmlu" in names and limits["mmlu"] != limit else {}),
        "num_fewshot": max(output["n-shot"].values()),
        "batch_size": batch_size,
        "auto_batch_sizes": list(lm.batch_sizes.values()),
        "hellaswag": HELLASWAG_VARIANTS[hellaswag] if "hellaswag" in names else None,
        "mmlu_aggregate": "lm-eval group mean weighted by subject size" if "mmlu" in names else None,
        "primary_metric": PRIMARY_METRIC,
        "task_versions": {name: output["versions"].get(name) for name in names},
        "dtype": str(getattr(model, "dtype", "")).removeprefix("torch."),
        "device": str(lm.device),
        "seconds": round(seconds, 1),
    }
    return result


def _choice_scores(sample: dict[str, Any]) -> list[float] | None:
    """[gold index, log-likelihood of each choice] of one multiple-choice item as lm-eval scored
    it (rounded to 4 decimals), or None when the item is not a single-gold choice."""
    target = sample.get("target")
    if isinstance(target, str) and target.isdigit():
        target = int(target)
    if not isinstance(target, int) or isinstance(target, bool):
        return None
    scores = []
    for response in sample.get("filtered_resps") or []:
        value = response[0] if isinstance(response, (list, tuple)) else response
        if isinstance(value, (list, tuple)):  # [(ll, is_greedy)]
            value = value[0]
        scores.append(round(float(value), 4))
    return [target, *scores] if 0 <= target < len(scores) else None


def _task_metrics(name: str, scores: dict[str, Any]) -> dict[str, float]:
    """`<task>_acc`, `<task>_acc_norm` and their `_stderr` from lm-eval's "metric,filter" keys
    (acc_norm only where the task defines it; no stderr where lm-eval reports N/A, i.e. one item)."""
    metrics = {}
    for metric in _METRICS:
        if f"{metric},none" in scores:
            metrics[f"{name}_{metric}"] = float(scores[f"{metric},none"])
            if (stderr := scores[f"{metric}_stderr,none"]) != "N/A":
                metrics[f"{name}_{metric}_stderr"] = float(stderr)
    return metrics
