"""One JSON record per cell: where it lives, atomic writes, reads that fail with a clear message."""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from harness.errors import HarnessError

SCHEMA_VERSION = 1


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "model"


def record_path(out_dir: Path, model: str, method: str, sparsity_label: str, seed: int, config_hash: str) -> Path:
    """results/<model>/<method>/sparsity-<label>_seed<seed>_<hash>.json: one file per cell."""
    name = f"sparsity-{sparsity_label.replace(':', 'of')}_seed{seed}_{config_hash}.json"
    return Path(out_dir) / slug(model) / slug(method) / name


def write_record(path: Path, record: dict[str, Any]) -> None:
    """Write via a temporary file and rename, so a crash never leaves half a record."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(record, handle, indent=2, sort_keys=False, default=str)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_record(path: Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as handle:
            record = json.load(handle)
    except (OSError, json.JSONDecodeError) as error:
        raise HarnessError(f"unreadable record file {path} ({error.__class__.__name__}); delete it to recompute the cell") from None
    if not isinstance(record, dict) or "method" not in record or "metrics" not in record:
        raise HarnessError(f"record file {path} is not a harness record; delete it to recompute the cell")
    return record


PROFILE_MARK = "+"
PROFILE_PARAMETERS = {"lambda": "owl_lambda", "m": "owl_m"}  # a record's profile key -> its run setting


def row_name(record: dict[str, Any]) -> str:
    """The method as a report row names it: `wanda`, or `wanda+owl` for a non-uniform layer
    profile (`wanda+owl(lambda=0.1)` where a profile parameter is not the default), so they can
    sit in one results folder and one table."""
    profile = record.get("profile") or {}
    if not profile.get("name"):
        return record["method"]
    from harness.settings import SETTINGS

    changed = [f"{key}={profile[key]:g}" for key, name in PROFILE_PARAMETERS.items() if key in profile and profile[key] != SETTINGS[name].default]
    return f"{record['method']}{PROFILE_MARK}{profile['name']}" + (f"({','.join(changed)})" if changed else "")


def method_of_row(row: str) -> str:
    """The registered method behind a report row (`wanda+owl` -> `wanda`, `leap(steps=32)` -> `leap`)."""
    return re.split(r"[+(]", row, maxsplit=1)[0]
