"""Local evaluation files (see `data/PROVENANCE*.md`) converted to the Hugging Face schema that
lm-eval's official task configs expect, keyed by the official split name.

Only the layout is converted (field names, label encodings, files split by subject); the text is
passed through untouched, so lm-eval's own `doc_to_text`/`doc_to_choice`/`process_docs` render the
prompts. The one exception is HellaSwag "exact", whose file holds `process_docs` output already.
Records stay in file order, which is the HF row order."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from harness.data import data_file, read_jsonl_gz
from harness.errors import HarnessError
from harness.layout import HELLASWAG_FULL_FILE

Records = list[dict]
Splits = dict[str, Records]

HELLASWAG_VARIANTS = {"exact": "exact-1000", "normalized": "normalized-10042", "full": "full-10042"}
"""`exact`: the 1000 OLMES items carrying lm-eval's exact strings; `normalized`: all 10042 items,
text normalized by klosax (close to, not identical with, lm-eval's prompts); `full`: all 10042
rows in the HF schema, which `harness data fetch` downloads (lm-eval's own processing, exact)."""

_LETTERS = "ABCDE"


def _jsonl(path: Path) -> Records:
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def piqa(data_dir: Path) -> Splits:
    """Goals/solutions and labels live in two files; line i of each is HF row i."""
    rows = _jsonl(data_file(data_dir, "piqa/valid.jsonl"))
    labels = data_file(data_dir, "piqa/valid-labels.lst").read_text(encoding="utf-8").split()
    records = [
        {"goal": row["goal"], "sol1": row["sol1"], "sol2": row["sol2"], "label": int(label)}
        for row, label in zip(rows, labels, strict=True)
    ]
    return {"validation": records}


def arc_easy(data_dir: Path) -> Splits:
    """The file has choice texts and the gold index but not the letters; letters A.. in order
    reproduce `choices.label.index(answerKey) == gold`, all that lm-eval reads of them."""
    records = []
    for row in _jsonl(data_file(data_dir, "arc_easy/arc_easy_test.jsonl")):
        labels = list(_LETTERS[: len(row["choices"])])
        records.append(
            {
                "id": row["id"],
                "question": row["question"],
                "choices": {"text": row["choices"], "label": labels},
                "answerKey": labels[row["gold"]],
            }
        )
    return {"test": records}


def arc_challenge(data_dir: Path) -> Splits:
    """Original ARC schema: the stem and choices are nested under `question`."""
    records = []
    for row in _jsonl(data_file(data_dir, "arc_challenge/ARC-Challenge-Test.jsonl")):
        choices = row["question"]["choices"]
        records.append(
            {
                "id": row["id"],
                "question": row["question"]["stem"],
                "choices": {"text": [c["text"] for c in choices], "label": [c["label"] for c in choices]},
                "answerKey": row["answerKey"],
            }
        )
    return {"test": records}


def winogrande(data_dir: Path) -> Splits:
    return {"validation": _jsonl(data_file(data_dir, "winogrande/winogrande_xl_validation.jsonl"))}


def openbookqa(data_dir: Path) -> Splits:
    return {"test": _jsonl(data_file(data_dir, "openbookqa/test.jsonl"))}


def boolq(data_dir: Path) -> Splits:
    return {"validation": read_jsonl_gz(data_file(data_dir, "boolq/super_glue_boolq_validation.jsonl.gz"))}


def rte(data_dir: Path) -> Splits:
    """lm-eval's `rte` is GLUE RTE; the parquet is HF's own `glue/rte` validation file."""
    import pyarrow.parquet as pq

    return {"validation": pq.read_table(data_file(data_dir, "rte/validation.parquet")).to_pylist()}


def hellaswag_exact(data_dir: Path) -> Splits:
    """The OLMES rows are lm-eval's `process_docs` output already (`query`, `choices`, `gold`; the
    raw `ctx_a`/`ctx_b` split is not recoverable), so they are served as processed docs: `label`
    is the HF string label that the official `doc_to_target: "{{label}}"` reads."""
    rows = read_jsonl_gz(data_file(data_dir, "hellaswag/hellaswag_val_olmes_subset1000.jsonl.gz"))
    records = [
        {
            "ind": row["ind"],
            "query": row["query"],
            "choices": row["choices"],
            "gold": row["gold"],
            "label": str(row["gold"]),
        }
        for row in rows
    ]
    return {"validation": records}


def hellaswag_normalized(data_dir: Path) -> Splits:
    """All 10042 items in the HF schema; `ctx` is klosax's normalized `ctx_a + " " + ctx_b` (the
    split is lost, so it all goes to `ctx_a`), label as HF's string. See README section 3."""
    records = [
        {
            "ind": row["val_idx"],
            "activity_label": row["activity_label"],
            "ctx_a": row["ctx"],
            "ctx_b": "",
            "ctx": row["ctx"],
            "endings": row["endings"],
            "label": str(row["label"]),
        }
        for row in read_jsonl_gz(data_file(data_dir, "hellaswag/hellaswag_val_klosax.jsonl.gz"))
    ]
    return {"validation": records}


def hellaswag_full(data_dir: Path) -> Splits:
    """The HF rows as fetched (`harness data fetch --sources hellaswag`): lm-eval processes them."""
    return {"validation": read_jsonl_gz(data_file(data_dir, HELLASWAG_FULL_FILE))}


def mmlu(data_dir: Path, subject: str) -> Splits:
    """Headerless per-subject CSVs (question, A, B, C, D, answer letter); `dev` feeds lm-eval's
    few-shot sampler, which it builds even for zero-shot runs."""
    return {
        split: _mmlu_csv(data_file(data_dir, f"mmlu/{split}/{subject}_{split}.csv"), subject)
        for split in ("test", "dev")
    }


def _mmlu_csv(path: Path, subject: str) -> Records:
    with path.open(encoding="utf-8", newline="") as handle:
        return [
            {"question": row[0], "subject": subject, "choices": row[1:5], "answer": "ABCD".index(row[5])}
            for row in csv.reader(handle)
        ]


_READERS: dict[str, Callable[[Path], Splits]] = {
    "piqa": piqa,
    "arc_easy": arc_easy,
    "arc_challenge": arc_challenge,
    "winogrande": winogrande,
    "openbookqa": openbookqa,
    "boolq": boolq,
    "rte": rte,
}


@dataclass(frozen=True)
class LocalData:
    """Records per official split; `processed` marks records that are already the output of the
    task's `process_docs` (lm-eval must not process them again)."""

    splits: Splits
    processed: bool = False


def local_data(task: str, dataset_name: str | None, data_dir: Path, hellaswag: str = "exact") -> LocalData:
    """Local records of one lm-eval task. `dataset_name` is the config's HF subset (the subject
    for `mmlu_<subject>` tasks)."""
    if task.startswith("mmlu_") and dataset_name:
        return LocalData(mmlu(data_dir, dataset_name))
    if task == "hellaswag":
        if hellaswag not in HELLASWAG_VARIANTS:
            raise HarnessError(f"unknown hellaswag variant {hellaswag!r}; use one of: {', '.join(HELLASWAG_VARIANTS)}")
        if hellaswag == "exact":
            return LocalData(hellaswag_exact(data_dir), processed=True)
        if hellaswag == "full":
            return LocalData(hellaswag_full(data_dir))
        return LocalData(hellaswag_normalized(data_dir))
    if task not in _READERS:
        available = ", ".join([*_READERS, "hellaswag", "mmlu_<subject>"])
        raise HarnessError(f"no local data for lm-eval task {task!r}; available: {available}")
    return LocalData(_READERS[task](data_dir))
