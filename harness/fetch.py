"""`harness data fetch`: the paper-scale sources, downloaded from the Hugging Face hub into a data
root's layout, each file entered in that root's manifest (rows, size, sha256, source, license).

Sources (`SOURCES`): the C4 train shard the pruning papers calibrate on, a SlimPajama-6B slice
(LEAP's training corpus) sized in tokens of a tokenizer, WikiText-2 raw test, and the full
HellaSwag validation split in the HF schema (the project ships 1000 exact and 10042 normalized
items). Downloads go through `huggingface_hub` / `datasets`, with their cache and progress bars.
The conversion from hub rows to the layout is a pure function per source (`*_rows`), tested on
local files that have the hub's row format; the download itself needs a connected machine."""

from __future__ import annotations

import gzip
import json
import shutil
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.errors import HarnessError
from harness.layout import C4_TRAIN_FILE, HELLASWAG_FULL_FILE, SLIMPAJAMA_FILE, WIKITEXT2_FILE
from harness.manifest import FETCHED_MANIFEST_FILE, IN_CHECKOUT, PROJECT_DATA, Entry, is_project_data, make_entry, problem, read_manifest, write_manifest



def write_jsonl_gz(path: Path, rows: Iterable[dict[str, Any]]) -> int:
    """JSON lines, gzip without a timestamp (the same rows give the same bytes); returns the rows."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(path.name + ".part")
    count = 0
    with open(staging, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as handle:
        for row in rows:
            handle.write((json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8"))
            count += 1
    staging.replace(path)
    return count


def c4_rows(rows: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """allenai/c4 `en` rows -> {text, timestamp, url}, the fields of the shipped validation file."""
    for row in rows:
        yield {"text": row["text"], "timestamp": str(row["timestamp"]), "url": row["url"]}


def wikitext_rows(rows: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """HF `wikitext` rows -> {text}, every row kept (empty ones too): the papers join them with "\\n\\n"."""
    for row in rows:
        yield {"text": row["text"]}


def slimpajama_rows(rows: Iterable[dict[str, Any]], tokens: int, count_tokens: Callable[[str], int]) -> Iterator[dict[str, Any]]:
    """SlimPajama-6B rows -> {text, set}, in stream order, until `tokens` tokens are reached."""
    total = 0
    for row in rows:
        if total >= tokens:
            return
        meta = row.get("meta") or {}
        yield {"text": row["text"], "set": meta.get("redpajama_set_name", "")}
        total += count_tokens(row["text"])


HELLASWAG_FIELDS = ("ind", "activity_label", "ctx_a", "ctx_b", "ctx", "endings", "source_id", "split", "split_type", "label")


def hellaswag_rows(rows: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Rowan/hellaswag validation rows, the HF schema that lm-eval's `process_docs` expects."""
    for row in rows:
        yield {field: row[field] for field in HELLASWAG_FIELDS}


@dataclass(frozen=True)
class Source:
    """One fetchable source: its file in the layout, where it comes from, and its license."""

    file: str
    origin: str
    license: str


SOURCES: dict[str, Source] = {
    "c4-train": Source(C4_TRAIN_FILE, "allenai/c4 en/c4-train.00000-of-01024.json.gz (Hugging Face hub)", "ODC-BY 1.0"),
    "slimpajama": Source(SLIMPAJAMA_FILE, "DKYoon/SlimPajama-6B train, first rows in stream order (Hugging Face hub)", "the licenses of SlimPajama's sources (Common Crawl, C4, GitHub, Books, ArXiv, Wikipedia, StackExchange)"),
    "wikitext2": Source(WIKITEXT2_FILE, "wikitext wikitext-2-raw-v1 test (Hugging Face hub)", "CC BY-SA 3.0 and GFDL"),
    "hellaswag": Source(HELLASWAG_FULL_FILE, "Rowan/hellaswag validation, all 10042 rows (Hugging Face hub)", "MIT"),
}


def _offline_error() -> HarnessError:
    return HarnessError(
        "the Hugging Face hub is not reachable from here (offline); run `harness data fetch` on a connected machine "
        "and copy the folder, then pass it with --data-dir"
    )


def _hub_resolves(endpoint: str) -> bool:
    """Whether the hub's host name resolves: a machine without network says no at once, instead of
    after the download libraries' retries."""
    import socket
    from urllib.parse import urlparse

    try:
        socket.getaddrinfo(urlparse(endpoint).hostname, 443)
    except OSError:
        return False
    return True


def _download_rows(name: str, tokens: int, count_tokens: Callable[[str], int]) -> Iterator[dict[str, Any]]:
    """Hub rows of source `name`, converted. Network errors become one line naming the fix."""
    import datasets
    from huggingface_hub import hf_hub_download

    if name == "c4-train":
        path = hf_hub_download("allenai/c4", "en/c4-train.00000-of-01024.json.gz", repo_type="dataset")
        with gzip.open(path, "rt", encoding="utf-8") as handle:
            yield from c4_rows(json.loads(line) for line in handle)
    elif name == "slimpajama":
        stream = datasets.load_dataset("DKYoon/SlimPajama-6B", split="train", streaming=True)
        yield from slimpajama_rows(stream, tokens, count_tokens)
    elif name == "wikitext2":
        yield from wikitext_rows(datasets.load_dataset("wikitext", "wikitext-2-raw-v1", split="test"))
    elif name == "hellaswag":
        yield from hellaswag_rows(datasets.load_dataset("Rowan/hellaswag", split="validation"))


def prepare_root(out: Path) -> None:
    """A new root starts as a copy of the project's data and manifest, so it is complete."""
    out = Path(out)
    if is_project_data(out) or (out / "MANIFEST.json").exists():
        return
    shutil.copytree(PROJECT_DATA, out, dirs_exist_ok=True, ignore=shutil.ignore_patterns("*.md"))


def add_to_manifest(root: Path, relative: str, source: Source) -> Entry:
    """Enter (or replace) the file's entry among the root's fetched entries."""
    entries = dict(read_manifest(root, FETCHED_MANIFEST_FILE) or {})
    entry = make_entry(root, relative, source.origin, source.license)
    entries[relative] = entry
    write_manifest(root, list(entries.values()), FETCHED_MANIFEST_FILE)
    return entry


def fetch(names: list[str], out: Path, tokens: int, count_tokens: Callable[[str], int], log: Callable[[str], None] = print) -> list[Entry]:
    """Download `names` into the root `out`; every file lands in its manifest."""
    from huggingface_hub import constants

    unknown = [name for name in names if name not in SOURCES]
    if unknown:
        raise HarnessError(f"unknown data source {unknown[0]!r}; choose from {', '.join(SOURCES)}")
    if is_project_data(out) and not IN_CHECKOUT:
        raise HarnessError(
            f"an installed harness does not write into its packaged data ({PROJECT_DATA}); "
            "fetch into a folder of your own with --out DIR and run with --data-dir DIR (or $HARNESS_DATA_DIR)"
        )
    if constants.HF_HUB_OFFLINE or not _hub_resolves(constants.ENDPOINT):
        raise _offline_error()
    prepare_root(out)
    entries = []
    shipped = read_manifest(out) or {}
    for name in names:
        source = SOURCES[name]
        if source.file in shipped and problem(out, shipped[source.file]) is None:
            log(f"{name}: {Path(out) / source.file} is shipped and verified; kept as it is")
            continue
        log(f"fetching {name} -> {Path(out) / source.file}")
        try:
            rows = write_jsonl_gz(Path(out) / source.file, _download_rows(name, tokens, count_tokens))
        except Exception as error:  # network and hub errors come in many types; one line each
            first = (str(error).splitlines() or [""])[0]
            raise HarnessError(
                f"fetching {name} failed ({type(error).__name__}: {first}); check the connection and re-run, "
                "or fetch on a connected machine and pass the folder with --data-dir"
            ) from None
        entries.append(add_to_manifest(out, source.file, source))
        log(f"  {rows} rows, sha256 {entries[-1].sha256[:16]}…")
    return entries
