"""Peak memory and time of LEAP's exact global top-k: the concatenating selection it used before
(`torch.cat` of every logit, then `torch.topk`) against `global_lowest_masks` (bisection over the
float32 order, one matrix at a time), on synthetic logits of a model-sized set of matrices.

Each side runs in its own subprocess, so its peak RSS is its own; the logits are made inside it
(seeded, identical for both) and the peak is reported above the RSS after making them.

    python benchmarks/topk_memory.py [--matrices 24] [--rows 4096] [--cols 4096] [--ratio 0.5] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time


def run_side(side: str, matrices: int, rows: int, cols: int, ratio: float) -> dict:
    import torch

    from harness.masks import global_lowest_masks, lowest_mask_matrix
    from harness.memory import PeakMemory

    generator = torch.Generator().manual_seed(0)
    logits = {f"m{i}": torch.randn(rows, cols, generator=generator) for i in range(matrices)}
    with PeakMemory(interval_s=0.01) as before:
        pass
    start = time.perf_counter()
    with PeakMemory(interval_s=0.01) as memory:
        if side == "concatenate":
            keep = lowest_mask_matrix(torch.cat([t.flatten() for t in logits.values()]), ratio)
            kept = int(keep.sum())
        else:
            kept = sum(int(mask.sum()) for mask in global_lowest_masks(logits, ratio).values())
    return {"side": side, "seconds": round(time.perf_counter() - start, 2), "extra_mb": round(memory.rss_mb - before.rss_mb, 1), "kept": kept}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--matrices", type=int, default=24)
    parser.add_argument("--rows", type=int, default=4096)
    parser.add_argument("--cols", type=int, default=4096)
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--json", default=None, help="also write the rows here")
    parser.add_argument("--side", choices=["concatenate", "chunked"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        print(json.dumps(run_side(args.side, args.matrices, args.rows, args.cols, args.ratio)))
        return
    shape = ["--matrices", str(args.matrices), "--rows", str(args.rows), "--cols", str(args.cols), "--ratio", str(args.ratio)]
    rows = []
    for side in ("concatenate", "chunked"):
        out = subprocess.run([sys.executable, __file__, "--side", side, *shape], capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    logits_mb = args.matrices * args.rows * args.cols * 4 / 2**20
    print(f"{args.matrices} logit matrices of {args.rows} x {args.cols} float32 ({logits_mb:,.0f} MB), ratio {args.ratio}")
    print(f"{'selection':<12} {'extra MB':>10} {'seconds':>8} {'kept':>12}")
    for row in rows:
        print(f"{row['side']:<12} {row['extra_mb']:>10.1f} {row['seconds']:>8.2f} {row['kept']:>12,}")
    assert rows[0]["kept"] == rows[1]["kept"], "the two selections kept different counts"
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"logits_mb": logits_mb, "rows": rows, "args": vars(args)}, handle, indent=1)


if __name__ == "__main__":
    main()
