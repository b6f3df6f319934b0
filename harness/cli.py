"""Command line: `harness run`, `harness report`, `harness list`. Thin: parse, validate, call."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import click

from harness.errors import HarnessError
from harness.models import BUNDLED, DEFAULT_MODEL
from harness.settings import DEFAULT_BASELINE, DEFAULT_TARGET, DENSE, SETTINGS, RunSettings, accept, cli_options, options_table
from harness.store import method_of_row, row_name


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


@click.group()
@click.version_option(package_name="leap-harness")
def cli() -> None:
    """Prune LLMs with several methods under one protocol and report who wins."""


# The two options of `harness run` that are not run settings: (flag, metavar, help, default shown).
RUN_META_OPTIONS = (
    ("--config", "FILE", "A sweep YAML (see sweeps/); options given on the command line override it.", "none"),
    ("--set", "METHOD.FIELD=VALUE", "Set any field of a method's config (validated; repeatable).", "the method's defaults"),
)


@cli.command()
@click.option("--config", "config_file", type=click.Path(path_type=Path), default=None, metavar=RUN_META_OPTIONS[0][1], help=RUN_META_OPTIONS[0][2])
@click.option("--set", "sets", multiple=True, metavar=RUN_META_OPTIONS[1][1], help=RUN_META_OPTIONS[1][2])
@cli_options
def run(config_file: Path | None, sets: tuple[str, ...], **given) -> None:
    """Prune and evaluate every cell of models x methods x sparsities x seeds."""
    from harness.distributed import world
    from harness.runner import run_sweep
    from harness.sweep import load_sweep

    values = load_sweep(config_file) if config_file is not None else {}
    overrides = values.pop("overrides", {})
    values.update({name: value for name, value in given.items() if value is not None})
    # --methods may narrow a sweep file's methods; the file's options of the dropped ones lapse
    kept = accept("methods", values["methods"], SETTINGS["methods"].option) if "methods" in values else overrides
    overrides = {method: fields for method, fields in overrides.items() if method in kept}
    for method, fields in _parse_sets(sets).items():
        overrides.setdefault(method, {}).update(fields)
    settings = RunSettings(**values, overrides=overrides)
    outcome = run_sweep(settings)
    if not world().is_main:  # a torchrun rank other than 0: rank 0 summarizes and reports
        return
    click.echo(summary_table(outcome.records))
    if settings.report and outcome.records:
        baseline, target = _report_pair({row_name(r) for r in outcome.records})
        # this sweep's records only: the out folder may hold other runs (e.g. committed references)
        _report(settings.out, Path("reports") / "latest", baseline, target, ("md", "latex"), False, outcome.records)
    if outcome.failures:
        for failure in outcome.failures:
            click.echo(f"failed: {failure.cell.tag}: {failure.error}", err=True)
        raise HarnessError(f"{len(outcome.failures)} cell(s) failed (listed above); re-run to retry them")


def _report_pair(rows: set[str]) -> tuple[str, str]:
    """(baseline, target) rows for the report after a run: the defaults (admm, leap), or their
    profiled rows (admm+owl) when the sweep ran with a profile; else dense, else any row."""

    def pick(name: str, fallback: str) -> str:
        matches = sorted(row for row in rows if method_of_row(row) == name)
        return matches[0] if matches else fallback

    baseline = pick(DEFAULT_BASELINE, DENSE if DENSE in rows else min(rows))
    return baseline, pick(DEFAULT_TARGET, DEFAULT_TARGET)


def run_options_table() -> str:
    """The README's `harness run` options table: the run settings, then --config and --set."""
    return options_table([(flag, text, default) for flag, _, text, default in RUN_META_OPTIONS])


def summary_table(records: list[dict]) -> str:
    """Plain table of the sweep's cells: realized sparsity, perplexity and average accuracy."""
    lines = [f"{'model':<16} {'method':<10} {'sparsity':>8} {'seed':>4} {'realized':>8} {'wikitext2_ppl':>13} {'avg_acc':>8}"]
    for r in records:
        m = r["metrics"]
        acc = f"{100 * m['avg_acc']:.2f}" if "avg_acc" in m else "-"
        lines.append(
            f"{r['model']:<16} {row_name(r):<10} {r['sparsity_label']:>8} {r['seed']:>4} "
            f"{r['realized_sparsity']:>8.4f} {m.get('wikitext2_ppl', float('nan')):>13.2f} {acc:>8}"
        )
    return "\n".join(lines)


def _report(
    results: Path | list[Path], out: Path, baseline: str, target: str, formats: tuple[str, ...], stderr: bool, records: list[dict] | None = None
) -> None:
    from harness.report import write_report

    command = shlex.join(["harness", *sys.argv[1:]])
    output = write_report(results, out, baseline=baseline, target=target, formats=formats, stderr=stderr, command=command, records=records)
    for warning in output.warnings:
        click.echo(f"warning: {warning}", err=True)
    click.echo(output.main_markdown)
    click.echo(f"report written to {out}/ ({len(output.files)} files)")


@cli.command()
@click.argument("results_dirs", nargs=-1, type=click.Path(path_type=Path))
@click.option("--baseline", default=DEFAULT_BASELINE, show_default=True, help="Method the deltas are taken against.")
@click.option("--target", default=DEFAULT_TARGET, show_default=True, help="Method whose deltas vs the baseline are summarized.")
@click.option("--format", "formats", default="md,latex", show_default=True, help="Comma list: md, latex.")
@click.option("--out", type=click.Path(path_type=Path), default=Path("reports") / "latest", show_default=True, help="Output folder.")
@click.option("--stderr", is_flag=True, help="Also write the standard errors of every accuracy.")
def report(results_dirs: tuple[Path, ...], baseline: str, target: str, formats: str, out: Path, stderr: bool) -> None:
    """Tables (Markdown, LaTeX), deltas, significance and plots from the records in RESULTS_DIRS
    (one folder or several, e.g. a study beside the runs it is paired with; default: results)."""
    folders = list(results_dirs) or [Path("results")]
    for folder in folders:
        if not folder.is_dir():
            raise HarnessError(f"results folder {folder} does not exist; run `harness run` first or pass the folder")
    _report(folders, out, baseline, target, tuple(_split(formats)), stderr)


@cli.command(name="list")
def list_command() -> None:
    """Print the registered methods, bundled models and task suites."""
    from harness.evaluation.suites import SUITES
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


@cli.group()
def data() -> None:
    """The data roots: check one against its manifest, or fetch the paper-scale sources."""


@data.command(name="verify")
@click.argument("root", type=click.Path(path_type=Path), required=False)
def data_verify(root: Path | None) -> None:
    """Check every file of ROOT (default: the data root in use) against its manifest."""
    from harness.data import data_root
    from harness.manifest import manifest_for, verify_folder

    root = data_root(root)
    if not root.is_dir():
        raise HarnessError(f"data folder {root} does not exist; pass an existing folder")
    _, manifest = manifest_for(root)
    results = verify_folder(root)
    bad = [(entry, why) for entry, why in results if why]
    for entry, why in bad:
        click.echo(f"  {entry.path} {why}", err=True)
    click.echo(f"{root}: {len(results) - len(bad)} of {len(results)} files match {manifest}")
    if bad:
        raise HarnessError(f"{len(bad)} data file(s) in {root} do not match the manifest (listed above); restore or re-fetch them")


@data.command(name="fetch")
@click.option("--sources", default=",".join(["c4-train", "slimpajama", "wikitext2", "hellaswag"]), show_default=True, help="Comma list of sources to download.")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Data root to fetch into [default: the data root in use].")
@click.option("--tokens", type=click.IntRange(min=1), default=1_000_000_000, show_default=True, help="Size of the SlimPajama slice, in tokens of --tokenizer.")
@click.option("--tokenizer", "tokenizer_model", default=DEFAULT_MODEL, show_default=True, help="Model whose tokenizer counts the slice's tokens.")
def data_fetch(sources: str, out: Path | None, tokens: int, tokenizer_model: str) -> None:
    """Download the paper-scale data (C4 train shard, SlimPajama-6B slice, WikiText-2, full HellaSwag)."""
    from harness.data import data_root
    from harness.fetch import fetch

    names = _split(sources)
    count_tokens = _token_counter(tokenizer_model) if "slimpajama" in names else len
    entries = fetch(names, data_root(out), tokens, count_tokens, log=click.echo)
    click.echo(f"fetched {len(entries)} file(s) into {data_root(out)}; `harness data verify` checks them")


def _token_counter(model: str):
    from transformers import AutoTokenizer

    from harness.models import model_folder

    tokenizer = AutoTokenizer.from_pretrained(model_folder(model))
    return lambda text: len(tokenizer(text, add_special_tokens=False).input_ids)


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
