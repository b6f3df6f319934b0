"""Speed of the layer-wise methods on one calibration set (issue #3). Not a test: it prints tables.

Table 1 prunes the model with each method at the same sparsity, each in a fresh process (so peak
RSS is the method's own), and reports the total prune time, the time in calibration forwards (the
floor no layer-wise method can go under: capturing layer-0 inputs plus two passes per layer), the
method's own math (accumulating statistics in the hooks + pruning the matrices), peak RSS and
WikiText-2 perplexity.

Table 2 times the per-matrix math alone on identical inputs (the real statistics of decoder
layer 0): ours against llmcompressor (if installed) and against the reference implementations
if `--reference-root` points at a folder holding checkouts of IST-DASLab/sparsegpt (as
`sparsegpt/`) and fmfi-compbio/admm-pruning (as `admm-pruning/`); nothing of theirs is vendored.
Table 3 isolates the cubic steps: the inverse factor of SparseGPT and the inverse of ADMM.

    python benchmarks/layerwise.py --nsamples 32 --seqlen 512 [--reference-root DIR] [--json FILE]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import copy
import importlib.util
import io
import json
import multiprocessing
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from harness.accumulators import GramAccumulator, InputNormAccumulator, InputStatistics
from harness.data import c4_windows
from harness.engine import LayerwiseEngine
from harness.evaluation.perplexity import wikitext2_windows, window_perplexity
from harness.methods.admm import ADMMPruner
from harness.methods.sparsegpt import SparseGPTPruner, inverse_hessian_factor
from harness.methods.wanda import WandaPruner
from harness.models import DEFAULT_MODEL, load_model, needs_bos_per_window
from harness.pruner import PruneContext
from harness.registry import get_pruner
from harness.settings import RunSettings
from harness.sparsity import Sparsity
from harness.targets import decoder_layers, find_linears


def _load(args: argparse.Namespace) -> tuple[nn.Module, Any]:
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = RunSettings(device=args.device, dtype=args.dtype).resolved()  # the harness's device defaults
    return load_model(args.model, torch.device(settings.device), getattr(torch, settings.dtype))


def _calibration(tokenizer: Any, args: argparse.Namespace) -> torch.Tensor:
    return c4_windows(tokenizer, args.nsamples, args.seqlen, args.seed, "calibration", args.data_dir)


def _perplexity(model: nn.Module, tokenizer: Any, args: argparse.Namespace) -> float:
    bos = needs_bos_per_window(model)
    windows = wikitext2_windows(tokenizer, args.seqlen, args.ppl_tokens or None, bos, args.data_dir)
    return window_perplexity(model, windows, batch_size=args.batch_size)


def prune_and_measure(method: str, args: argparse.Namespace) -> dict[str, Any]:
    """One row of table 1, run in a fresh process."""
    model, tokenizer = _load(args)
    ids = _calibration(tokenizer, args)
    pruner_cls = get_pruner(method)
    overrides = {"batch_size": args.batch_size} if "batch_size" in pruner_cls.Config.__dataclass_fields__ else {}
    pruner = pruner_cls(**overrides)
    ctx = PruneContext(tokenizer=tokenizer, calibration=ids, seed=args.seed, data_dir=args.data_dir, progress=False)
    result = pruner.run(model, Sparsity.parse(args.sparsity), ctx)
    stats = result.stats
    forwards = stats.get("capture_seconds", 0.0) + stats.get("forward_seconds", 0.0)
    math = stats.get("accumulate_seconds", 0.0) + stats.get("prune_math_seconds", result.seconds)
    return {
        "method": method,
        "total_s": result.seconds,
        "forward_s": forwards,
        "math_s": math,
        "accumulate_s": stats.get("accumulate_seconds", 0.0),
        "peak_rss_mb": result.peak_rss_mb,
        "sparsity": result.realized_sparsity,
        "ppl": _perplexity(model, tokenizer, args),
    }


def dense_perplexity(args: argparse.Namespace) -> float:
    model, tokenizer = _load(args)
    return _perplexity(model, tokenizer, args)


# ------------------------------------------------------------------ per-matrix math ------------


Statistics = dict[str, tuple[nn.Linear, GramAccumulator, InputNormAccumulator]]


def layer0_statistics(args: argparse.Namespace) -> Statistics:
    """Weights, Gram matrices and input norms of decoder layer 0's linears on the calibration set."""
    model, tokenizer = _load(args)
    engine = LayerwiseEngine(model, _calibration(tokenizer, args), batch_size=args.batch_size)
    engine.capture()
    linears = find_linears(decoder_layers(model)[0])
    grams = InputStatistics(linears, lambda lin: GramAccumulator(lin.in_features, lin.weight.device))
    norms = InputStatistics(linears, lambda lin: InputNormAccumulator(lin.in_features, lin.weight.device))
    with grams.hooked(), norms.hooked():
        engine.forward(0)
    return {name: (linears[name], grams.stats[name], norms.stats[name]) for name in linears}


def best_of(fn: Callable[[], Any], repeats: int) -> float:
    """Fastest of `repeats` runs in ms (the machine may be shared; the minimum is the least noisy)."""
    times = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return 1000 * min(times)


@contextlib.contextmanager
def _quiet_reference() -> Any:
    """The references print per layer and call torch.cuda.synchronize() unconditionally."""
    saved = torch.cuda.synchronize
    if not torch.cuda.is_available():
        torch.cuda.synchronize = lambda *a, **k: None
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        torch.cuda.synchronize = saved


def _load_module(name: str, path: Path) -> Any:
    if not path.exists():
        raise SystemExit(f"--reference-root: {path} is missing")
    sys.path.insert(0, str(path.parent))
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def matrix_timings(args: argparse.Namespace, stats: Statistics) -> list[dict[str, Any]]:
    """Table 2: per-matrix math of each implementation on the same weight and statistics."""
    sparsity = Sparsity.parse(args.sparsity)
    ours = {"wanda": WandaPruner(), "sparsegpt": SparseGPTPruner(), "admm": ADMMPruner()}
    peers: dict[str, dict[str, Callable[[nn.Linear, GramAccumulator, InputNormAccumulator], Any]]] = {
        "wanda": {}, "sparsegpt": {}, "admm": {}
    }
    if importlib.util.find_spec("llmcompressor") is not None:
        from llmcompressor.modifiers.pruning.sparsegpt import sgpt_sparsify
        from llmcompressor.modifiers.pruning.wanda import wanda_sparsify

        nm = (sparsity.m - sparsity.n, sparsity.m) if sparsity.is_nm else (0, 0)
        peers["wanda"]["llmcompressor"] = lambda lin, gram, norm: wanda_sparsify.sparsify_weight(
            lin, {lin: norm.sq_sum.clone()}, sparsity.ratio, *nm
        )
        peers["sparsegpt"]["llmcompressor"] = lambda lin, gram, norm: sgpt_sparsify.sparsify_weight(
            lin, {lin: gram.gram.clone()}, sparsity.ratio, *nm, 128, 0.01, False
        )
    if args.reference_root:
        root = Path(args.reference_root)
        sgpt = _load_module("sparsegpt_reference", root / "sparsegpt" / "sparsegpt.py")
        admm = _load_module("admm_reference", root / "admm-pruning" / "lib" / "admm.py")
        nm = (sparsity.m - sparsity.n, sparsity.m) if sparsity.is_nm else (0, 0)

        def reference_sparsegpt(lin: nn.Linear, gram: GramAccumulator, norm: InputNormAccumulator) -> None:
            with _quiet_reference():
                pruner = sgpt.SparseGPT(copy.deepcopy(lin))
                pruner.H = gram.gram.clone()
                pruner.fasterprune(sparsity.ratio, *nm, blocksize=128, percdamp=0.01)

        def reference_admm(lin: nn.Linear, gram: GramAccumulator, norm: InputNormAccumulator) -> None:
            with _quiet_reference():
                pruner = admm.AdmmPruner(copy.deepcopy(lin))
                pruner.XX = gram.gram.clone()
                pruner.fasterprune(sparsity.ratio, *nm, percdamp=0.1, iterative_prune=15, iters=20)

        peers["sparsegpt"]["reference"] = reference_sparsegpt
        peers["admm"]["reference"] = reference_admm

    rows = []
    with torch.no_grad():
        for name, (linear, gram, norm) in stats.items():
            for method, pruner in ours.items():
                stat = norm if method == "wanda" else gram
                row = {"matrix": f"{name} {tuple(linear.weight.shape)}", "method": method}
                weight = linear.weight.float()
                row["ours_ms"] = best_of(lambda: pruner.prune_matrix(weight.clone(), stat, sparsity), args.repeats)
                for peer, fn in peers[method].items():
                    row[f"{peer}_ms"] = best_of(lambda: fn(linear, gram, norm), args.repeats)
                rows.append(row)
    return rows


def inverse_timings(args: argparse.Namespace, stats: Statistics) -> list[dict[str, Any]]:
    """Table 3: the cubic steps alone, on the damped real Gram of each distinct input width.
    SparseGPT: the reference's chol -> cholesky_inverse -> chol(upper) against our one Cholesky
    plus one triangular inverse. ADMM: the reference's LU inverse against our Cholesky +
    cholesky_inverse, and per-iteration cholesky_solve against the matmul with that inverse."""
    rows = []
    grams = {gram.gram.shape[0]: gram.gram for _, gram, _ in stats.values()}
    for n, gram in sorted(grams.items()):
        H = gram + 0.01 * gram.diagonal().mean() * torch.eye(n, device=gram.device)
        rhs = torch.randn(n, n, device=gram.device)
        factor = torch.linalg.cholesky(H)
        inverse = torch.cholesky_inverse(factor)

        def reference_chain() -> torch.Tensor:
            return torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)

        rows.append({
            "n": n,
            "sgpt_reference_ms": best_of(reference_chain, args.repeats),
            "sgpt_ours_ms": best_of(lambda: inverse_hessian_factor(H), args.repeats),
            "admm_reference_ms": best_of(lambda: torch.inverse(H), args.repeats),
            "admm_ours_ms": best_of(lambda: torch.cholesky_inverse(torch.linalg.cholesky(H)), args.repeats),
            "solve_per_iter_ms": best_of(lambda: torch.cholesky_solve(rhs, factor), args.repeats),
            "matmul_per_iter_ms": best_of(lambda: inverse @ rhs, args.repeats),
        })
    return rows


def print_table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    def cell(value: Any) -> str:
        return f"{value:.2f}" if isinstance(value, float) else str(value)

    print("| " + " | ".join(columns) + " |")
    print("|" + "|".join("---" for _ in columns) + "|")
    for row in rows:
        print("| " + " | ".join(cell(row.get(c, "")) for c in columns) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--methods", default="magnitude,wanda,sparsegpt,admm")
    parser.add_argument("--sparsity", default="0.5")
    parser.add_argument("--nsamples", type=int, default=32)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--ppl-tokens", type=int, default=40000, help="WikiText-2 test tokens scored (0: all)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--reference-root", default=None, help="folder with sparsegpt/ and admm-pruning/ checkouts")
    parser.add_argument("--repeats", type=int, default=3, help="runs per matrix in table 2 (fastest is reported)")
    parser.add_argument("--skip-end-to-end", action="store_true", help="only table 2")
    parser.add_argument("--json", type=Path, default=None, help="also write every table to this JSON file")
    args = parser.parse_args()

    print(f"model {args.model}, sparsity {args.sparsity}, calibration {args.nsamples} x {args.seqlen} C4 tokens, "
          f"torch {torch.__version__}, threads {args.threads or torch.get_num_threads()}")
    tables: dict[str, object] = {"settings": {key: str(value) for key, value in vars(args).items()}, "torch": torch.__version__}
    if not args.skip_end_to_end:
        context = multiprocessing.get_context("spawn")
        rows = []
        with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
            dense = pool.submit(dense_perplexity, args).result()
            for method in args.methods.split(","):
                rows.append(pool.submit(prune_and_measure, method, args).result())
        print(f"\nTable 1: end to end (dense WikiText-2 perplexity {dense:.2f})\n")
        columns = ["method", "total_s", "forward_s", "math_s", "accumulate_s", "peak_rss_mb", "sparsity", "ppl"]
        print_table(rows, columns)
        tables["end_to_end"] = {"dense_ppl": dense, "rows": rows}
    print("\nTable 2: per-matrix math on layer 0's real statistics (ms, fastest of --repeats)\n")
    stats = layer0_statistics(args)
    tables["per_matrix"] = matrix_timings(args, stats)
    print_table(tables["per_matrix"], ["matrix", "method", "ours_ms", "reference_ms", "llmcompressor_ms"])
    print("\nTable 3: the inverse steps alone (ms; right-hand side n x n for the ADMM iteration)\n")
    columns = ["n", "sgpt_reference_ms", "sgpt_ours_ms", "admm_reference_ms", "admm_ours_ms"]
    columns += ["solve_per_iter_ms", "matmul_per_iter_ms"]
    tables["inverse"] = inverse_timings(args, stats)
    print_table(tables["inverse"], columns)
    if args.json is not None:
        args.json.write_text(json.dumps(tables, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
