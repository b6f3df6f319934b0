"""Data manifests: every data file a run reads is listed in its data root's `MANIFEST.json` with
its rows, size, sha256, source and license, and is checked against that entry before first use.

A root without a manifest of its own (an older copy such as `../shared/data`) is checked against
the project's manifest, whose files it must hold unchanged. A check hashes a file once: the
result is remembered, keyed by the file's path, size and modification time, in this process and
in the harness cache folder, so a run does not re-hash 15 MB every time."""

from __future__ import annotations

import csv
import functools
import gzip
import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from harness.errors import HarnessError

MANIFEST_FILE = "MANIFEST.json"
FETCHED_MANIFEST_FILE = "MANIFEST.fetched.json"
"""Entries of files `harness data fetch` added to a root: kept apart, so that fetching into the
project's `data/` changes no tracked file (git ignores both the file and the fetched data)."""


def _project_data() -> tuple[Path, bool]:
    """`data/` of the repository in a checkout (and an editable install); in an installed wheel,
    the same files packaged as `harness/project_data`. Also whether this is a checkout."""
    package = Path(__file__).resolve().parent
    if (package.parent / "pyproject.toml").is_file() and (package.parent / "data").is_dir():
        return package.parent / "data", True
    return package / "project_data", False


PROJECT_DATA, IN_CHECKOUT = _project_data()
"""The project's own data root (what `make run` and the tests read), and whether it is the
repository's `data/` (else the installed package's copy, which fetch does not write into)."""


def is_project_data(root: Path) -> bool:
    """Whether `root` is the project's own data root."""
    return Path(root).resolve() == PROJECT_DATA.resolve()


@dataclass(frozen=True)
class Entry:
    """One data file of a manifest (`path` relative to the root, `/`-separated)."""

    path: str
    rows: int
    bytes: int
    sha256: str
    source: str
    license: str


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def count_rows(path: Path) -> int:
    """Records in a data file: JSON lines (plain or gzip), CSV rows, parquet rows, or lines."""
    name = path.name
    if name.endswith(".parquet"):
        import pyarrow.parquet as pq

        return pq.ParquetFile(path).metadata.num_rows
    opener = gzip.open if name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8", newline="") as handle:
        if name.endswith(".csv"):
            return sum(1 for _ in csv.reader(handle))
        return sum(1 for line in handle if line.strip())


def make_entry(root: Path, relative: str, source: str, license: str) -> Entry:
    path = Path(root) / relative
    return Entry(relative, count_rows(path), path.stat().st_size, file_sha256(path), source, license)


def write_manifest(root: Path, entries: list[Entry], name: str = MANIFEST_FILE) -> Path:
    """Write (or replace) `root/name` with `entries`, sorted by path."""
    target = Path(root) / name
    payload = {"files": [asdict(entry) for entry in sorted(entries, key=lambda e: e.path)]}
    staging = target.with_suffix(".tmp")
    staging.write_text(json.dumps(payload, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(staging, target)
    return target


def read_manifest(root: Path, name: str = MANIFEST_FILE) -> dict[str, Entry] | None:
    """The entries of `root/name` by path, or None when the root has none."""
    path = Path(root) / name
    if not path.exists():
        return None
    return _parsed_manifest(path, path.stat().st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _parsed_manifest(path: Path, mtime_ns: int) -> dict[str, Entry]:
    """Parsed once per version of the file: a run asks for it once per data file it opens."""
    try:
        files = json.loads(path.read_text(encoding="utf-8"))["files"]
        return {item["path"]: Entry(**item) for item in files}
    except (ValueError, KeyError, TypeError) as error:
        raise HarnessError(f"{path} is not a valid data manifest ({error.__class__.__name__}); restore it from the repository") from None


def manifest_for(root: Path) -> tuple[dict[str, Entry], Path]:
    """The manifest that governs `root`: its own (with the entries fetch added), else the project's."""
    own = read_manifest(root)
    if own is not None:
        return {**own, **(read_manifest(root, FETCHED_MANIFEST_FILE) or {})}, Path(root) / MANIFEST_FILE
    project = read_manifest(PROJECT_DATA)
    if project is None:
        raise HarnessError(f"the project's data manifest {PROJECT_DATA / MANIFEST_FILE} is missing; restore data/ from the repository")
    return project, PROJECT_DATA / MANIFEST_FILE


def problem(root: Path, entry: Entry) -> str | None:
    """Why the file of `entry` under `root` does not match it, or None when it does."""
    path = Path(root) / entry.path
    if not path.is_file():
        return "is missing"
    size = path.stat().st_size
    if size != entry.bytes:
        return f"has {size} bytes, the manifest {entry.bytes} (truncated or changed)"
    if file_sha256(path) != entry.sha256:
        return "has a different sha256 than the manifest (changed or corrupted)"
    return None


_VERIFIED: set[tuple[str, int, int, str]] = set()


def _cache_file() -> Path:
    from harness.models import cache_dir

    return cache_dir() / "verified-data.json"


def _stamp(path: Path, entry: Entry) -> tuple[str, int, int, str]:
    stat = path.stat()
    return (str(path.resolve()), stat.st_size, stat.st_mtime_ns, entry.sha256)


def _load_cache() -> set[tuple[str, int, int, str]]:
    try:
        return {tuple(item) for item in json.loads(_cache_file().read_text())}
    except (OSError, ValueError):
        return set()


def _remember(stamp: tuple[str, int, int, str]) -> None:
    _VERIFIED.add(stamp)
    cached = _load_cache() | {stamp}
    target = _cache_file()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = target.with_name(f".{target.name}.{os.getpid()}")
        staging.write_text(json.dumps(sorted(cached)))
        os.replace(staging, target)
    except OSError:
        pass  # a read-only cache only costs a re-hash next time


def verify_file(root: Path, relative: str) -> Path:
    """`root/relative`, checked against its manifest entry (once per file version); a mismatch
    or a file the manifest does not list is one HarnessError naming the file and the fix."""
    path = Path(root) / relative
    entries, manifest = manifest_for(root)
    entry = entries.get(relative)
    if entry is None:
        raise HarnessError(f"data file {path} is not listed in {manifest}; add it there (harness data fetch writes its entries)")
    if path.is_file():
        stamp = _stamp(path, entry)
        if stamp in _VERIFIED:
            return path
        if stamp in _load_cache():
            _VERIFIED.add(stamp)
            return path
    why = problem(root, entry)
    if why is not None:
        if not is_project_data(root):
            fix = "copy it again or fetch it (`harness data fetch`)"
        else:
            fix = "restore it with `git checkout -- data/`" if IN_CHECKOUT else "reinstall the harness"
        raise HarnessError(f"data file {path} {why}; {fix}, or point --data-dir elsewhere")
    _remember(_stamp(path, entry))
    return path


def verify_folder(root: Path) -> list[tuple[Entry, str | None]]:
    """Every entry of the root's manifest with its problem (None: the file matches)."""
    entries, _ = manifest_for(root)
    return [(entry, problem(root, entry)) for entry in entries.values()]
