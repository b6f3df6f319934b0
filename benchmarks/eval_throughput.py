"""Zero-shot evaluation throughput at several lm-eval batch sizes, to pick the default.

For each batch size and task, times `evaluate_zeroshot` on the first `--limit` items and counts the
token positions the model actually ran (padding included, MMLU's shared contexts once), so the
table shows seconds per task, tokens/s, peak RSS, and the accuracy, which batching must not
change; the 1-minute load average is kept with each cell,
since a shared machine skews timings. "auto" is the harness's (memory-sized on CPU, see
`harness.evaluation.zeroshot`); the batch sizes it chose are recorded.

    PYTHONPATH=. .venv/bin/python benchmarks/eval_throughput.py --limit 20 --mmlu-limit 1
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import psutil
import torch

from harness.data import default_data_dir
from harness.evaluation.suites import resolve_tasks
from harness.evaluation.zeroshot import evaluate_zeroshot
from harness.memory import PeakMemory
from harness.models import DEFAULT_MODEL, load_model


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
        "auto_batch_sizes": result.info["auto_batch_sizes"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--tasks", default="leap6", help="suite or comma-separated lm-eval task names")
    parser.add_argument("--limit", type=int, default=20, help="items per task")
    parser.add_argument("--mmlu-limit", type=int, default=1, help="items per MMLU subject (57 subjects)")
    parser.add_argument("--batch-sizes", default="1,8,16,auto", help="comma-separated ints or 'auto'")
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
            cell = run_one(model, tokenizer, name, limit, batch_size, args.data_dir)
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
    """One line per task and batch size, then the totals per batch size."""
    columns = ["task", "batch", "items", "forwards", "tokens", "seconds", "tok/s", "peak MB", "acc", "load"]
    print("\n| " + " | ".join(columns) + " |\n|" + "---|" * len(columns))
    for name in tasks:
        for batch_size, per_task in rows.items():
            cell = per_task[name]
            batch = f"auto {cell['auto_batch_sizes']}" if batch_size == "auto" else batch_size
            values = [cell["items"], cell["forwards"], cell["tokens"], cell["seconds"]]
            rate = cell["tokens"] / cell["seconds"]
            print(
                f"| {name} | {batch} | "
                + " | ".join(map(str, values))
                + f" | {rate:.0f} | {cell['peak_rss_mb']} | {cell['acc']:.3f} | {cell['load_1min']} |"
            )
    for batch_size, per_task in rows.items():
        seconds = sum(cell["seconds"] for cell in per_task.values())
        tokens = sum(cell["tokens"] for cell in per_task.values())
        print(f"| all | {batch_size} | | | {tokens} | {seconds:.1f} | {tokens / seconds:.0f} | | | |")


if __name__ == "__main__":
    main()
