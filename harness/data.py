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
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Literal

import torch

from harness.errors import HarnessError
from harness.layout import C4_FILE, C4_TRAIN_FILE, SLIMPAJAMA_FILE, WIKITEXT2_FILE
from harness.manifest import PROJECT_DATA, verify_file

ENV_DATA_DIR = "HARNESS_DATA_DIR"


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
    """`nsamples` token windows of length `seqlen` from the local C4 documents of one split (even
    documents for calibration, odd ones for training)."""
    docs = c4_documents(data_dir)
    return stream_windows(tokenizer, docs[0::2] if split == "calibration" else docs[1::2], nsamples, seqlen, seed, bos_per_window)


def stream_windows(tokenizer, pool: Sequence[str], nsamples: int, seqlen: int, seed: int, bos_per_window: bool = False) -> torch.Tensor:
    """`nsamples` windows of `seqlen` tokens from a pool of documents: shuffled with `seed`,
    tokenized, joined with EOS and cut into consecutive windows; if the pool holds too few tokens
    the order is reshuffled and the stream continues (a further pass over the pool)."""
    if nsamples <= 0:
        raise HarnessError("nsamples must be positive")
    if seqlen < 2:
        raise HarnessError("seqlen must be at least 2")
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


@lru_cache(maxsize=2)
def c4_train_documents(data_dir: Path | None = None) -> tuple[str, ...]:
    """The texts of the C4 train shard (`harness data fetch --sources c4-train`)."""
    return tuple(row["text"] for row in read_jsonl_gz(data_file(data_dir, C4_TRAIN_FILE)))


def c4_train_windows(tokenizer, nsamples: int, seqlen: int, seed: int = 0, data_dir: Path | None = None, bos_per_window: bool = False) -> torch.Tensor:
    """The papers' calibration (SparseGPT's and Wanda's `get_c4`): Python's `random` seeded with
    `seed` draws documents of the C4 train shard until one is longer than `seqlen` tokens (as the
    reference tokenizes it, special tokens included), then a random window of `seqlen` tokens in
    it; `nsamples` times. With `bos_per_window` the window is <bos> and seqlen − 1 drawn tokens."""
    docs = c4_train_documents(data_dir)
    return sample_document_windows(tokenizer, docs, nsamples, seqlen, seed, bos_per_window)


def sample_document_windows(tokenizer, docs: Sequence[str], nsamples: int, seqlen: int, seed: int, bos_per_window: bool = False) -> torch.Tensor:
    """Random windows of random documents longer than the window (see `c4_train_windows`)."""
    rng = random.Random(seed)  # the same draws as the reference's random.seed(seed) + random.randint
    length = seqlen - 1 if bos_per_window else seqlen
    rows = []
    for _ in range(nsamples):
        for _attempt in range(100_000):
            ids = tokenizer(docs[rng.randint(0, len(docs) - 1)]).input_ids
            if len(ids) > length:
                break
        else:
            raise HarnessError(f"no document of the calibration corpus is longer than {length} tokens; lower --seqlen or use --calibration c4-local")
        start = rng.randint(0, len(ids) - length - 1)
        rows.append(ids[start : start + length])
    windows = torch.tensor(rows, dtype=torch.long)
    if bos_per_window:
        windows = torch.cat([torch.full((nsamples, 1), tokenizer.bos_token_id, dtype=torch.long), windows], dim=1)
    return windows


@lru_cache(maxsize=2)
def slimpajama_documents(data_dir: Path | None = None) -> tuple[str, ...]:
    """The texts of the fetched SlimPajama-6B slice (`harness data fetch --sources slimpajama`)."""
    return tuple(row["text"] for row in read_jsonl_gz(data_file(data_dir, SLIMPAJAMA_FILE)))


TRAINING_FILES = {"c4-local": C4_FILE, "slimpajama": SLIMPAJAMA_FILE}
"""Training corpora (LEAP's `corpus`) and the file each reads."""


def training_documents(corpus: str, data_dir: Path | None = None) -> Sequence[str]:
    """A training corpus: `c4-local` is the odd-indexed shipped C4 documents (disjoint from the
    calibration's even ones); `slimpajama` the fetched slice (LEAP's paper)."""
    if corpus == "slimpajama":
        return slimpajama_documents(data_dir)
    return c4_documents(data_dir)[1::2]


def estimate_tokens(tokenizer, docs: Sequence[str], sample: int = 64) -> int:
    """Tokens in `docs` (EOS separators included), from their characters and the tokens per
    character of the first `sample` documents: cheap for a corpus of any size."""
    head = docs[:sample]
    chars = sum(len(doc) for doc in head)
    tokens = sum(len(tokenizer(doc, add_special_tokens=False).input_ids) + 1 for doc in head)
    return round(sum(len(doc) for doc in docs) * tokens / max(chars, 1))


CALIBRATION_SOURCES = ("c4-local", "c4-train")


def calibration_windows(tokenizer, source: str, nsamples: int, seqlen: int, seed: int, data_dir: Path | None, bos_per_window: bool) -> torch.Tensor:
    """Calibration windows from `source`: `c4-local` (the shipped documents, concatenated) or
    `c4-train` (the papers' shard and sampling)."""
    if source == "c4-train":
        return c4_train_windows(tokenizer, nsamples, seqlen, seed, data_dir, bos_per_window)
    return c4_windows(tokenizer, nsamples, seqlen, seed, "calibration", data_dir, bos_per_window)


def calibration_file(source: str) -> str:
    return C4_TRAIN_FILE if source == "c4-train" else C4_FILE
