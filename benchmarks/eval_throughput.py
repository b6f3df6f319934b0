"""Zero-shot evaluation throughput at several lm-eval batch sizes, to pick the default.

For each batch size and task, times `evaluate_zeroshot` on the first `--limit` items and counts the
token positions the model actually ran (padding included, MMLU's shared contexts once), so the
table shows seconds per task, tokens/s, peak RSS, and whether accuracy is identical across batch
sizes (batching must not change answers); the 1-minute load average is kept with each cell,
since a shared machine skews timings. lm-eval's "auto" probes `max_batch_size` (64) rows of
the longest request; on CPU nothing raises OOM, so it is skipped where that probe's logits alone
would take over half the free memory.

    PYTHONPATH=. .venv/bin/python benchmarks/eval_throughput.py --limit 20 --mmlu-limit 1
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import psutil
import torch
from lm_eval.api.group import Group

from harness.data import default_data_dir
from harness.evaluation.tasks.local_task import build_task
from harness.evaluation.zeroshot import evaluate_zeroshot, resolve_tasks
from harness.memory import PeakMemory
from harness.models import DEFAULT_MODEL, load_model

AUTO_PROBE_ROWS = 64  # HFLM's default max_batch_size, the first size "auto" tries


def longest_request(name: str, limit: int, tokenizer, data_dir: Path) -> int:
    """Tokens in the longest (context + continuation) among the items that will be scored."""
    task = build_task(name, data_dir)
    lengths = []
    for leaf in task.get_all_tasks() if isinstance(task, Group) else [task]:
        leaf.build_all_requests(limit=limit)
        lengths += [
            len(tokenizer(context + continuation).input_ids)
            for context, continuation in (i.args for i in leaf.instances)
        ]
    return max(lengths)


def auto_is_unsafe(name: str, limit: int, model, tokenizer, data_dir: Path) -> str | None:
    """Why lm-eval's "auto" probe could exhaust host memory for this task, or None."""
    length = longest_request(name, limit, tokenizer, data_dir)
    probe_bytes = 2 * AUTO_PROBE_ROWS * length * model.config.vocab_size * 4  # logits + log_softmax, float32
    available = psutil.virtual_memory().available
    if probe_bytes > available / 2:
        return f"probe needs ~{probe_bytes / 2**30:.1f} GiB of logits, {available / 2**30:.1f} GiB free"
    return None


def run_one(model, tokenizer, name: str, limit: int, batch_size: int | str, data_dir: Path) -> dict:
    positions = []

    def count(module, args, kwargs):
        positions.append((args[0] if args else kwargs["input_ids"]).numel())

    hook = model.register_forward_pre_hook(count, with_kwargs=True)
    try:
        start = time.perf_counter()
        with PeakMemory() as memory:
            result = evaluate_zeroshot(
                model, tokenizer, [name], data_dir=data_dir, limit=limit, batch_size=batch_size, progress=False
            )
        seconds = time.perf_counter() - start
    finally:
        hook.remove()
    return {
        "seconds": round(seconds, 2),
        "tokens": sum(positions),
        "forwards": len(positions),
        "items": result.n_items[name],
        "acc": result.metrics[f"{name}_acc"],
        "peak_rss_mb": round(memory.rss_mb),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--tasks", default="leap6", help="suite or comma-separated lm-eval task names")
    parser.add_argument("--limit", type=int, default=20, help="items per task")
    parser.add_argument("--mmlu-limit", type=int, default=1, help="items per MMLU subject (57 subjects)")
    parser.add_argument("--batch-sizes", default="1,8,auto", help="comma-separated ints or 'auto'")
    parser.add_argument("--data-dir", type=Path, default=default_data_dir())
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--out", type=Path, default=Path("results/eval_throughput.json"))
    args = parser.parse_args()

    torch.set_grad_enabled(False)
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tokenizer = load_model(args.model, dtype=getattr(torch, args.dtype))
    tasks = resolve_tasks(args.tasks)
    batch_sizes = [size if size == "auto" else int(size) for size in args.batch_sizes.split(",")]
    rows: dict[str, dict] = {str(size): {} for size in batch_sizes}
    # Task-major order: the batch sizes of one task run back to back, under similar machine load.
    for name in tasks:
        limit = args.mmlu_limit if name == "mmlu" else args.limit
        for batch_size in batch_sizes:
            reason = auto_is_unsafe(name, limit, model, tokenizer, args.data_dir) if batch_size == "auto" else None
            cell = {"skipped": reason} if reason else run_one(model, tokenizer, name, limit, batch_size, args.data_dir)
            rows[str(batch_size)][name] = cell | {"load_1min": round(psutil.getloadavg()[0], 1)}
            print(f"batch {batch_size} {name}: {rows[str(batch_size)][name]}", flush=True)

    print_table(rows, tasks)
    record = {
        "model": args.model,
        "dtype": args.dtype,
        "limit": args.limit,
        "mmlu_limit": args.mmlu_limit,
        "threads": torch.get_num_threads(),
        "cpus": psutil.cpu_count(),
        "results": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out}")


def print_table(rows: dict[str, dict], tasks: list[str]) -> None:
    """Seconds per task, then totals; '-' where a run was skipped, '!' where accuracy differs."""
    reference = next(iter(rows.values()))
    header = ["batch", *tasks, "total s", "tok/s", "peak MB", "same acc"]
    print("\n| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for batch_size, per_task in rows.items():
        done = {name: cell for name, cell in per_task.items() if "seconds" in cell}
        seconds = sum(cell["seconds"] for cell in done.values())
        tokens = sum(cell["tokens"] for cell in done.values())
        same = all(cell["acc"] == reference[name].get("acc", cell["acc"]) for name, cell in done.items())
        cells = [str(done[name]["seconds"]) if name in done else "-" for name in tasks]
        peak = max((cell["peak_rss_mb"] for cell in done.values()), default=0)
        print(
            f"| {batch_size} | "
            + " | ".join(cells)
            + f" | {seconds:.1f} | {tokens / max(seconds, 1e-9):.0f} | {peak} | {'yes' if same else '!'} |"
        )


if __name__ == "__main__":
    main()
