"""Command line: `harness run`, `harness report`, `harness list`. Thin: parse, validate, call."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import click

from harness.errors import HarnessError
from harness.models import BUNDLED, DEFAULT_MODEL


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _parse_sets(pairs: tuple[str, ...]) -> dict[str, dict[str, str]]:
    """['leap.steps=10', 'wanda.group=row'] -> {'leap': {'steps': '10'}, 'wanda': {...}}."""
    overrides: dict[str, dict[str, str]] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        method, dot, name = key.partition(".")
        if not sep or not dot or not method or not name:
            raise HarnessError(f"--set takes METHOD.FIELD=VALUE, e.g. --set leap.steps=100; got {pair!r}")
        overrides.setdefault(method.strip(), {})[name.strip()] = value.strip()
    return overrides


def _seeds(text: str) -> list[int]:
    try:
        return [int(s) for s in _split(text)]
    except ValueError:
        raise HarnessError(f"--seed takes integers separated by commas; got {text!r}") from None


@click.group()
@click.version_option(package_name="leap-harness")
def cli() -> None:
    """Prune LLMs with several methods under one protocol and report who wins."""


# CLI option name -> RunSettings field, for the options a sweep file may also set
SETTING_OPTIONS = {
    "model": "models", "methods": "methods", "sparsity": "sparsities", "seed": "seeds", "out": "out",
    "nsamples": "nsamples", "seqlen": "seqlen", "ppl_tokens": "ppl_tokens", "tasks": "tasks", "limit": "limit",
    "eval_batch_size": "eval_batch_size", "hellaswag": "hellaswag", "device": "device", "dtype": "dtype",
    "data_dir": "data_dir", "target_pattern": "target_pattern", "no_dense": "include_dense",
    "executor": "executor", "address": "address",
}
LIST_OPTIONS = {"model", "methods", "sparsity"}


def _cli_value(name: str, value):
    if name in LIST_OPTIONS:
        return _split(value)
    if name == "seed":
        return _seeds(value)
    if name == "no_dense":
        return not value
    if name == "eval_batch_size" and value and value.isdigit():
        return int(value)
    return value


@cli.command()
@click.option("--config", "config_file", type=click.Path(path_type=Path), default=None, help="Sweep YAML (see sweeps/); flags given on the command line override it.")
@click.option("--model", default=DEFAULT_MODEL, show_default=True, help="Comma list: bundled alias, local folder or hub id.")
@click.option("--methods", default="magnitude", show_default=True, help="Comma list of registered methods (see `harness list`).")
@click.option("--sparsity", default="0.5", show_default=True, help="Comma list of ratios in [0, 1) or N:M patterns like 2:4.")
@click.option("--seed", default="0", show_default=True, help="Comma list of seeds (calibration sampling and method randomness).")
@click.option("--out", type=click.Path(path_type=Path), default=Path("results"), show_default=True, help="Folder for the JSON records.")
@click.option("--nsamples", type=int, default=None, help="Calibration samples [default: 128 on GPU, 32 on CPU].")
@click.option("--seqlen", type=int, default=None, help="Calibration and perplexity window length [default: 2048 on GPU, 512 on CPU].")
@click.option("--ppl-tokens", type=int, default=None, help="Limit the WikiText-2 tokens [default: all].")
@click.option("--tasks", default="leap6", show_default=True, help="Zero-shot suites/tasks (leap6, wanda7, piqa, ...) or 'none'.")
@click.option("--limit", type=int, default=None, help="Items per task (per MMLU subject) [default: all on GPU, 20 on CPU].")
@click.option("--eval-batch-size", default=None, help="lm-eval batch size (integer or 'auto').")
@click.option("--hellaswag", type=click.Choice(["exact", "normalized"]), default="exact", show_default=True, help="HellaSwag data: 1000 exact lm-eval items or all 10042 normalized.")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda[:N].")
@click.option("--dtype", default="auto", show_default=True, help="auto (bf16 on CUDA, float32 on CPU) | float32 | bfloat16.")
@click.option("--force", is_flag=True, help="Recompute cells whose record exists.")
@click.option("--save-model", type=click.Path(path_type=Path), default=None, help="Save each pruned model here as a safetensors folder.")
@click.option("--set", "sets", multiple=True, metavar="METHOD.FIELD=VALUE", help="Set a field of a method's config (repeatable).")
@click.option("--data-dir", type=click.Path(path_type=Path), default=None, help="Data root [default: $HARNESS_DATA_DIR or ../shared/data].")
@click.option("--targets", "target_pattern", default=None, help="Regex over module names restricting the pruned linears.")
@click.option("--no-dense", is_flag=True, help="Do not evaluate the dense model.")
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True, help="Run cells here in sequence, or as Ray tasks.")
@click.option("--address", default=None, help="Ray cluster address (auto | HOST:PORT) [default: start a local Ray].")
@click.option("--cell", "cell_index", type=int, default=None, help="Run only this 0-based cell of the plan (Slurm job arrays).")
@click.option("--report/--no-report", default=True, show_default=True, help="Write the report into reports/latest at the end.")
def run(config_file: Path | None, sets: tuple[str, ...], force: bool, save_model: Path | None, cell_index: int | None, report: bool, **options) -> None:
    """Prune and evaluate every cell of models x methods x sparsities x seeds."""
    from harness.runner import RunSettings, run_sweep
    from harness.sweep import load_sweep

    context = click.get_current_context()
    values = {field: _cli_value(name, options[name]) for name, field in SETTING_OPTIONS.items()}
    overrides: dict[str, dict[str, str]] = {}
    if config_file is not None:
        from_file = load_sweep(config_file)
        overrides = from_file.pop("overrides", {})
        explicit = {SETTING_OPTIONS[name] for name in SETTING_OPTIONS if context.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE}
        values.update({field: value for field, value in from_file.items() if field not in explicit})
    for method, fields in _parse_sets(sets).items():
        overrides.setdefault(method, {}).update(fields)
    executor, address = values.pop("executor"), values.pop("address")
    settings = RunSettings(**values, force=force, save_model=save_model, overrides=overrides)
    outcome = run_sweep(settings, executor=executor, address=address, cell_index=cell_index)
    click.echo(summary_table(outcome.records))
    if report and outcome.records:
        methods = {r["method"] for r in outcome.records}
        baseline = "admm" if "admm" in methods else "dense"
        # this sweep's records only: the out folder may hold other runs (e.g. committed references)
        _report(settings.out, Path("reports") / "latest", baseline, "leap", ("md", "latex"), False, outcome.records)
    if outcome.failures:
        for failure in outcome.failures:
            click.echo(f"failed: {failure.cell.model} {failure.cell.method} {failure.cell.sparsity} seed={failure.cell.seed}: {failure.error}", err=True)
        raise HarnessError(f"{len(outcome.failures)} cell(s) failed (listed above); re-run to retry them")


def summary_table(records: list[dict]) -> str:
    """Plain table of the sweep's cells: realized sparsity, perplexity and average accuracy."""
    lines = [f"{'model':<16} {'method':<10} {'sparsity':>8} {'seed':>4} {'realized':>8} {'wikitext2_ppl':>13} {'avg_acc':>8}"]
    for r in records:
        m = r["metrics"]
        acc = f"{100 * m['avg_acc']:.2f}" if "avg_acc" in m else "-"
        lines.append(
            f"{r['model']:<16} {r['method']:<10} {r['sparsity_label']:>8} {r['seed']:>4} "
            f"{r['realized_sparsity']:>8.4f} {m.get('wikitext2_ppl', float('nan')):>13.2f} {acc:>8}"
        )
    return "\n".join(lines)


def _report(
    results: Path, out: Path, baseline: str, target: str, formats: tuple[str, ...], stderr: bool, records: list[dict] | None = None
) -> None:
    from harness.report import write_report

    command = shlex.join(["harness", *sys.argv[1:]])
    output = write_report(results, out, baseline=baseline, target=target, formats=formats, stderr=stderr, command=command, records=records)
    for warning in output.warnings:
        click.echo(f"warning: {warning}", err=True)
    click.echo(output.main_markdown)
    click.echo(f"report written to {out}/ ({len(output.files)} files)")


@cli.command()
@click.argument("results_dir", type=click.Path(path_type=Path), default=Path("results"))
@click.option("--baseline", default="admm", show_default=True, help="Method the deltas are taken against.")
@click.option("--target", default="leap", show_default=True, help="Method whose deltas vs the baseline are summarized.")
@click.option("--format", "formats", default="md,latex", show_default=True, help="Comma list: md, latex.")
@click.option("--out", type=click.Path(path_type=Path), default=Path("reports") / "latest", show_default=True, help="Output folder.")
@click.option("--stderr", is_flag=True, help="Also write the standard errors of every accuracy.")
def report(results_dir: Path, baseline: str, target: str, formats: str, out: Path, stderr: bool) -> None:
    """Tables (Markdown, LaTeX), deltas, significance and plots from the records in RESULTS_DIR."""
    if not results_dir.is_dir():
        raise HarnessError(f"results folder {results_dir} does not exist; run `harness run` first or pass the folder")
    _report(results_dir, out, baseline, target, tuple(_split(formats)), stderr)


@cli.command(name="list")
def list_command() -> None:
    """Print the registered methods, bundled models and task suites."""
    from harness.evaluation.zeroshot import SUITES
    from harness.registry import PRUNERS

    click.echo("methods:")
    for name in PRUNERS.names():
        try:
            summary = (PRUNERS.get(name).__doc__ or "").strip().splitlines()[:1]
        except Exception as error:  # a broken plugin must not hide the others
            summary = [f"(cannot load: {error.__class__.__name__}: {error})"]
        click.echo(f"  {name:<12} {''.join(summary)}")
    click.echo("models:")
    for alias, bundle in BUNDLED.items():
        default = " (default)" if alias == DEFAULT_MODEL else ""
        click.echo(f"  {alias:<12} {bundle.description}{default}")
    click.echo("  (or a local folder / hub id)")
    click.echo("task suites:")
    for suite, tasks in SUITES.items():
        click.echo(f"  {suite:<12} {', '.join(tasks)}")


def main() -> None:
    """Entry point: bad input exits 2 with one line on stderr, Ctrl-C exits 130 keeping records."""
    try:
        cli.main(standalone_mode=False)
    except HarnessError as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo("interrupted: finished cells are saved; re-run the same command to complete the rest", err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        click.echo("interrupted: finished cells are saved; re-run the same command to complete the rest", err=True)
        sys.exit(130)
    except click.ClickException as error:
        error.show()
        sys.exit(error.exit_code)


if __name__ == "__main__":
    main()
