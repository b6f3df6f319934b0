"""Seconds per training step and peak RSS of LEAP against a plain dense fine-tuning step.

Both steps use the same model, batch and sequence length: the dense step trains every parameter
with AdamW; the LEAP step is `train_masks` itself (relaxed masks on the targeted linears, AdamW
on the logits, the paper's regularizers). Each side runs in its own subprocess so its peak RSS is
its own; sides alternate `--repeats` times so that a noisy shared machine affects both alike. The
first step of each run is a warm-up and is not timed.

    python benchmarks/leap_step.py [--model smollm2-135m] [--batch 4] [--seqlen 256] [--steps 4]
        [--repeats 2] [--write docs/leap.md] [--json FILE]

`--write FILE` replaces the table between the `<!-- leap_step:begin -->` and
`<!-- leap_step:end -->` markers of FILE."""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

BEGIN, END = "<!-- leap_step:begin -->", "<!-- leap_step:end -->"


def dense_step_seconds(model: torch.nn.Module, batches: torch.Tensor) -> list[float]:
    """Full fine-tuning as HF's Trainer does it: every parameter trains with fused AdamW (as LEAP's
    logits do), gradients clipped at norm 1.0, same loss call as LEAP's CE."""
    model.train()
    params = list(model.parameters())
    optimizer = torch.optim.AdamW(params, lr=1e-5, betas=(0.9, 0.95), weight_decay=0.0, fused=True)
    times = []
    for batch in batches:
        start = time.perf_counter()
        model(input_ids=batch, labels=batch).loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    return times


def leap_step_seconds(model: torch.nn.Module, batches: torch.Tensor) -> list[float]:
    """LEAP's own training loop for len(batches) steps, timed per step by its curve."""
    from harness.methods.leap.relaxed_mask import LearnableMasks, init_logits
    from harness.methods.leap.training import train_masks
    from harness.methods.leap import LEAPConfig
    from harness.targets import target_linears

    linears = target_linears(model)
    generator = torch.Generator().manual_seed(0)
    logits = {
        name: init_logits(linear.weight.abs() > linear.weight.abs().median(), 0.014, 3.0, generator, torch.empty(linear.weight.shape))
        for name, linear in linears.items()
    }
    steps, batch, seqlen = batches.shape
    config = LEAPConfig(steps=steps, batch_size=batch, grad_accum=1, seqlen=seqlen, checkpoint_every=0).resolve(torch.device("cpu"))
    masks = LearnableMasks(model, linears, logits)
    flat = batches.reshape(-1, seqlen)
    with masks.installed():
        outcome = train_masks(model, masks, lambda s, c: flat[s : s + c], config, 0.5, seed=0, progress=False)
    return [point["seconds"] for point in outcome.curve]


def run_side(side: str, model_spec: str, batch: int, seqlen: int, steps: int) -> dict:
    """One side in this process: time `steps` + 1 steps, report the median and the peak RSS."""
    from harness.memory import PeakMemory
    from harness.models import load_model

    model, tokenizer = load_model(model_spec)
    batches = torch.randint(0, len(tokenizer), (steps + 1, batch, seqlen), generator=torch.Generator().manual_seed(0))
    with PeakMemory() as memory:
        times = (dense_step_seconds if side == "dense" else leap_step_seconds)(model, batches)
    return {"side": side, "times": times[1:], "median": statistics.median(times[1:]), "peak_rss_mb": memory.rss_mb}


def markdown_table(results: dict[str, list[dict]], args: argparse.Namespace) -> str:
    dense = statistics.median(r["median"] for r in results["dense"])
    lines = [
        f"`python benchmarks/leap_step.py --model {args.model} --batch {args.batch} --seqlen {args.seqlen} --steps {args.steps} --repeats {args.repeats}`"
        f" on {platform.machine()} CPU, {torch.get_num_threads()} threads, torch {torch.__version__}:",
        "",
        "| step | s/step (median) | runs (medians) | peak RSS (MB) | vs dense |",
        "|---|---|---|---|---|",
    ]
    for side, label in (("dense", "dense fine-tuning (all parameters, fused AdamW, clip 1.0)"), ("leap", "LEAP (relaxed masks on the targeted linears, fused AdamW on the logits)")):
        medians = [r["median"] for r in results[side]]
        seconds = statistics.median(medians)
        rss = max(r["peak_rss_mb"] for r in results[side])
        lines.append(f"| {label} | {seconds:.2f} | {', '.join(f'{m:.2f}' for m in medians)} | {rss:.0f} | {seconds / dense:.2f}× |")
    return "\n".join(lines)


def write_between_markers(path: Path, table: str) -> None:
    text = path.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{path} has no {BEGIN} ... {END} block to replace")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    path.write_text(f"{head}{BEGIN}\n{table}\n{END}{tail}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seqlen", type=int, default=256)
    parser.add_argument("--steps", type=int, default=4, help="timed steps per run (after one warm-up step)")
    parser.add_argument("--repeats", type=int, default=2, help="alternating dense/LEAP runs")
    parser.add_argument("--write", type=Path, default=None, help="markdown file whose leap_step block gets the table")
    parser.add_argument("--json", type=Path, default=None, help="also write every run's numbers to this JSON file")
    parser.add_argument("--side", choices=["dense", "leap"], help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.side:
        print(json.dumps(run_side(args.side, args.model, args.batch, args.seqlen, args.steps)))
        return
    results: dict[str, list[dict]] = {"dense": [], "leap": []}
    common = ["--model", args.model, "--batch", str(args.batch), "--seqlen", str(args.seqlen), "--steps", str(args.steps)]
    for _ in range(args.repeats):
        for side in ("dense", "leap"):
            out = subprocess.run([sys.executable, __file__, "--side", side, *common], check=True, capture_output=True, text=True)
            results[side].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"{side}: {results[side][-1]['median']:.2f} s/step, peak RSS {results[side][-1]['peak_rss_mb']:.0f} MB", flush=True)
    table = markdown_table(results, args)
    print(table)
    if args.write is not None:
        write_between_markers(args.write, table)
    if args.json is not None:
        settings = {"model": args.model, "batch": args.batch, "seqlen": args.seqlen, "steps": args.steps, "threads": torch.get_num_threads()}
        args.json.write_text(json.dumps({"settings": settings, "torch": torch.__version__, "runs": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
