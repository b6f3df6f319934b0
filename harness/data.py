"""Local data: the data root (the project's `data/`, or --data-dir), C4 calibration/training
windows, WikiText-2 test text. Every file is checked against the root's manifest before use.

Only ~2000 C4 documents exist locally, so windows are cut from documents concatenated (joined by
the EOS token) in a seeded order rather than requiring each document to exceed `seqlen`. Even
documents feed calibration, odd ones LEAP training, so the two never share text."""

from __future__ import annotations

import gzip
import json
import os
import random
from functools import lru_cache
from pathlib import Path
from typing import Literal

import torch

from harness.errors import HarnessError
from harness.manifest import PROJECT_DATA, verify_file

ENV_DATA_DIR = "HARNESS_DATA_DIR"
C4_FILE = "c4/c4_validation_2k.jsonl.gz"
WIKITEXT2_FILE = "wikitext2/wikitext-2-raw-v1.test.jsonl.gz"


def default_data_dir() -> Path:
    """$HARNESS_DATA_DIR, else the project's own `data/` folder (shipped in the repository)."""
    env = os.environ.get(ENV_DATA_DIR)
    return Path(env) if env else PROJECT_DATA


def data_root(data_dir: Path | None) -> Path:
    """The data folder a `--data-dir` value means: itself, or the default when unset."""
    return Path(data_dir) if data_dir else default_data_dir()


def data_file(data_dir: Path | None, relative: str) -> Path:
    """Path of a data file, checked against its manifest entry; else a one-line error naming the fix."""
    root = data_root(data_dir)
    path = root / relative
    if not path.exists():
        raise HarnessError(f"missing data file {path}; point --data-dir or ${ENV_DATA_DIR} at a data folder (the project's is {PROJECT_DATA})")
    return verify_file(root, relative)


def read_jsonl_gz(path: Path) -> list[dict]:
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


@lru_cache(maxsize=4)
def c4_documents(data_dir: Path | None = None) -> tuple[str, ...]:
    return tuple(row["text"] for row in read_jsonl_gz(data_file(data_dir, C4_FILE)))


def wikitext2_text(data_dir: Path | None = None) -> str:
    """WikiText-2 raw test as the pruning papers join it: rows joined with blank lines."""
    rows = read_jsonl_gz(data_file(data_dir, WIKITEXT2_FILE))
    return "\n\n".join(row["text"] for row in rows)


def as_windows(ids: torch.Tensor | list[int], seqlen: int, bos_id: int | None = None) -> torch.Tensor:
    """Non-overlapping windows [n, seqlen] cut from a token stream (the tail is dropped). With
    `bos_id` every window is that token then seqlen − 1 stream tokens: Gemma models need <bos>
    first in every window, for perplexity and for calibration activations alike."""
    ids = torch.as_tensor(ids, dtype=torch.long)
    step = seqlen - 1 if bos_id is not None else seqlen
    n = ids.numel() // step
    windows = ids[: n * step].view(n, step)
    if bos_id is not None:
        windows = torch.cat([torch.full((n, 1), bos_id, dtype=torch.long), windows], dim=1)
    return windows


def c4_windows(
    tokenizer,
    nsamples: int,
    seqlen: int,
    seed: int = 0,
    split: Literal["calibration", "train"] = "calibration",
    data_dir: Path | None = None,
    bos_per_window: bool = False,
) -> torch.Tensor:
    """`nsamples` token windows of length `seqlen` from the C4 documents of one split.

    Documents are shuffled with `seed`, tokenized, joined with EOS and cut into consecutive
    windows; if the split holds too few tokens the order is reshuffled and the stream continues."""
    if nsamples <= 0:
        raise HarnessError("nsamples must be positive")
    if seqlen < 2:
        raise HarnessError("seqlen must be at least 2")
    docs = c4_documents(data_dir)
    pool = list(docs[0::2] if split == "calibration" else docs[1::2])
    rng = random.Random(seed)
    needed = nsamples * (seqlen - 1 if bos_per_window else seqlen)
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    stream: list[int] = []
    while len(stream) < needed:
        order = list(range(len(pool)))
        rng.shuffle(order)
        for index in order:
            stream.extend(tokenizer(pool[index], add_special_tokens=False).input_ids)
            stream.append(eos)
            if len(stream) >= needed:
                break
    return as_windows(stream[:needed], seqlen, tokenizer.bos_token_id if bos_per_window else None)
