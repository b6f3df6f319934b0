"""Seconds per training step and peak RSS of LEAP against a plain dense fine-tuning step, and of
LEAP's two mask samplings against each other.

All steps use the same model, batch and sequence length: the dense step trains every parameter
with AdamW; a LEAP step is `train_masks` itself (relaxed masks on the targeted linears, AdamW on
the logits, the paper's regularizers), once with one mask per sequence (`sampling=sequence`, the
paper recipe's: a forward per sequence) and once with one per micro-batch
(`sampling=micro-batch`, the small-budget recipe's: one forward of the batch). Each side runs in
its own subprocess so its peak RSS is its own; sides alternate `--repeats` times so that a noisy
shared machine affects all alike. The first step of each run is a warm-up and is not timed.

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
SIDES = {
    "dense": "dense fine-tuning (all parameters, fused AdamW, clip 1.0)",
    "sequence": "LEAP, one mask per sequence (the paper recipe's; relaxed masks on the targeted linears, fused AdamW on the logits)",
    "micro-batch": "LEAP, one mask per micro-batch (`sampling=micro-batch`)",
}


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


def leap_step_seconds(model: torch.nn.Module, batches: torch.Tensor, sampling: str) -> list[float]:
    """LEAP's own training loop for len(batches) steps with `sampling`, timed per step by its curve."""
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
    config = LEAPConfig(steps=steps, batch_size=batch, grad_accum=1, seqlen=seqlen, sampling=sampling, checkpoint_every=0)
    config = config.resolve(torch.device("cpu"))
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
        times = dense_step_seconds(model, batches) if side == "dense" else leap_step_seconds(model, batches, side)
    return {"side": side, "times": times[1:], "median": statistics.median(times[1:]), "peak_rss_mb": memory.rss_mb}


def summarize(results: dict[str, list[dict]]) -> dict[str, dict[str, float]]:
    """Per side: the median of the runs' median s/step, the largest peak RSS, and the ratios of
    both to the dense step and to one mask per micro-batch."""
    medians = {side: statistics.median(r["median"] for r in runs) for side, runs in results.items()}
    rss = {side: max(r["peak_rss_mb"] for r in runs) for side, runs in results.items()}
    return {
        side: {
            "seconds": medians[side],
            "peak_rss_mb": rss[side],
            "seconds_vs_dense": medians[side] / medians["dense"],
            "seconds_vs_micro_batch": medians[side] / medians["micro-batch"],
            "peak_rss_vs_micro_batch": rss[side] / rss["micro-batch"],
        }
        for side in results
    }


def markdown_table(results: dict[str, list[dict]], summary: dict[str, dict[str, float]], args: argparse.Namespace) -> str:
    lines = [
        f"`python benchmarks/leap_step.py --model {args.model} --batch {args.batch} --seqlen {args.seqlen} --steps {args.steps} --repeats {args.repeats}`"
        f" on {platform.machine()} CPU, {torch.get_num_threads()} threads, torch {torch.__version__}:",
        "",
        "| step | s/step (median) | runs (medians) | peak RSS (MB) | vs dense | s/step vs one mask per micro-batch | peak RSS vs one mask per micro-batch |",
        "|---|---|---|---|---|---|---|",
    ]
    for side, label in SIDES.items():
        row = summary[side]
        runs = ", ".join(f"{r['median']:.2f}" for r in results[side])
        lines.append(
            f"| {label} | {row['seconds']:.2f} | {runs} | {row['peak_rss_mb']:.0f} | {row['seconds_vs_dense']:.2f}× "
            f"| {row['seconds_vs_micro_batch']:.2f}× | {row['peak_rss_vs_micro_batch']:.2f}× |"
        )
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
    parser.add_argument("--repeats", type=int, default=2, help="alternating runs of every side")
    parser.add_argument("--write", type=Path, default=None, help="markdown file whose leap_step block gets the table")
    parser.add_argument("--json", type=Path, default=None, help="also write every run's numbers to this JSON file")
    parser.add_argument("--side", choices=list(SIDES), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.side:
        print(json.dumps(run_side(args.side, args.model, args.batch, args.seqlen, args.steps)))
        return
    results: dict[str, list[dict]] = {side: [] for side in SIDES}
    common = ["--model", args.model, "--batch", str(args.batch), "--seqlen", str(args.seqlen), "--steps", str(args.steps)]
    for _ in range(args.repeats):
        for side in SIDES:
            out = subprocess.run([sys.executable, __file__, "--side", side, *common], check=True, capture_output=True, text=True)
            results[side].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"{side}: {results[side][-1]['median']:.2f} s/step, peak RSS {results[side][-1]['peak_rss_mb']:.0f} MB", flush=True)
    summary = summarize(results)
    table = markdown_table(results, summary, args)
    print(table)
    if args.write is not None:
        write_between_markers(args.write, table)
    if args.json is not None:
        settings = {"model": args.model, "batch": args.batch, "seqlen": args.seqlen, "steps": args.steps, "threads": torch.get_num_threads()}
        payload = {"settings": settings, "torch": torch.__version__, "summary": summary, "runs": results}
        args.json.write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
