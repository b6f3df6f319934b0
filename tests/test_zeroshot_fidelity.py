"""The zero-shot prompts are lm-eval's own: for every task, our local-data task renders the same
requests (context, continuation) and targets as the official config fed with HF-schema records
that this file builds on its own, straight from the data READMEs' mappings. Also: record counts
equal the official split sizes, the item selection for a limit is the file's first N, nothing
touches the network, and MMLU's four choices share one forward of their context."""

from __future__ import annotations

import csv
import gzip
import json
import socket
from pathlib import Path

import datasets
import lm_eval
import pytest
import torch
from lm_eval.api.group import Group
from lm_eval.api.task import ConfigurableTask
from lm_eval.tasks._yaml_loader import load_yaml

from harness.errors import HarnessError
from harness.evaluation.suites import SUITES, resolve_tasks
from harness.evaluation.tasks.local_data import local_data
from harness.evaluation.tasks.local_task import build_task, task_manager
from harness.evaluation.zeroshot import evaluate_zeroshot

OFFICIAL_SIZES = {
    "mmlu": 14042,
    "piqa": 1838,
    "arc_easy": 2376,
    "arc_challenge": 1172,
    "winogrande": 1267,
    "openbookqa": 500,
    "boolq": 3270,
    "rte": 277,
    "hellaswag": 10042,
}
FIRST_DOCS = 5


@pytest.fixture(scope="session")
def official_index():
    """lm-eval's index of all built-in tasks: how lm-eval itself resolves a task name (~6 s)."""
    from lm_eval.tasks import TaskManager

    return TaskManager().task_index


# ----------------------------------------------------------------------------- HF records, test side


def _jsonl(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def _mmlu_rows(path: Path, subject: str) -> list[dict]:
    with path.open(encoding="utf-8", newline="") as handle:
        return [
            {"question": q, "subject": subject, "choices": [a, b, c, d], "answer": "ABCD".index(key)}
            for q, a, b, c, d, key in csv.reader(handle)
        ]


def hf_records(task: str, data: Path) -> dict[str, list[dict]]:
    """HF-schema rows per split, written from the README mappings independently of the harness."""
    if task.startswith("mmlu_"):
        subject = task.removeprefix("mmlu_")
        return {s: _mmlu_rows(data / f"mmlu/{s}/{subject}_{s}.csv", subject) for s in ("test", "dev")}
    if task == "piqa":
        labels = (data / "piqa/valid-labels.lst").read_text().splitlines()
        rows = _jsonl(data / "piqa/valid.jsonl")
        return {"validation": [dict(row, label=int(label)) for row, label in zip(rows, labels, strict=True)]}
    if task == "arc_easy":
        rows = []
        for row in _jsonl(data / "arc_easy/arc_easy_test.jsonl"):
            letters = ["A", "B", "C", "D", "E"][: len(row["choices"])]
            choices = {"text": row["choices"], "label": letters}
            rows.append(
                {"id": row["id"], "question": row["question"], "choices": choices, "answerKey": letters[row["gold"]]}
            )
        return {"test": rows}
    if task == "arc_challenge":
        rows = []
        for row in _jsonl(data / "arc_challenge/ARC-Challenge-Test.jsonl"):
            options = row["question"]["choices"]
            choices = {"text": [o["text"] for o in options], "label": [o["label"] for o in options]}
            rows.append(
                {
                    "id": row["id"],
                    "question": row["question"]["stem"],
                    "choices": choices,
                    "answerKey": row["answerKey"],
                }
            )
        return {"test": rows}
    if task == "rte":  # from the JSONL (super_glue names), not the parquet the harness reads
        rows = _jsonl(data / "rte/validation.jsonl")
        return {
            "validation": [
                {"sentence1": r["premise"], "sentence2": r["hypothesis"], "label": r["label"], "idx": r["idx"]}
                for r in rows
            ]
        }
    if task == "hellaswag":  # the normalized full set; the exact subset is checked against its strings
        rows = _jsonl(data / "hellaswag/hellaswag_val_klosax.jsonl.gz")
        return {
            "validation": [
                {
                    "activity_label": r["activity_label"],
                    "ctx_a": r["ctx"],
                    "ctx_b": "",
                    "endings": r["endings"],
                    "label": str(r["label"]),
                }
                for r in rows
            ]
        }
    files = {
        "winogrande": ("validation", "winogrande/winogrande_xl_validation.jsonl"),
        "openbookqa": ("test", "openbookqa/test.jsonl"),
        "boolq": ("validation", "boolq/super_glue_boolq_validation.jsonl.gz"),
    }
    split, file = files[task]
    return {split: _jsonl(data / file)}


def official_task(yaml_path: Path, records: dict[str, list[dict]]) -> ConfigurableTask:
    """The installed YAML untouched except for the data source (lm-eval's `custom_dataset` hook).
    Declared splits without local rows (train) get the eval rows: zero-shot never reads them."""
    config = load_yaml(yaml_path, resolve_func=True)
    eval_rows = next(iter(records.values()))
    declared = {config.get(key) for key in ("training_split", "validation_split", "test_split")} - {None}
    splits = {name: records.get(name, eval_rows) for name in declared | set(records)}
    dataset = datasets.DatasetDict({name: datasets.Dataset.from_list(rows) for name, rows in splits.items()})
    return ConfigurableTask(config={**config, "custom_dataset": lambda **_: dataset})


def requests(task: ConfigurableTask, limit: int | None = FIRST_DOCS) -> list[tuple]:
    task.build_all_requests(limit=limit)
    return [(inst.doc_id, inst.idx, inst.args) for inst in task.instances]


def targets(task: ConfigurableTask, limit: int = FIRST_DOCS) -> list:
    return [task.doc_to_target(doc) for _, doc in task.doc_iterator(limit=limit)]


def leaves(obj) -> list[ConfigurableTask]:
    return obj.get_all_tasks() if isinstance(obj, Group) else [obj]


# ----------------------------------------------------------------------------- tests


SINGLE_TASKS = ["piqa", "arc_easy", "arc_challenge", "winogrande", "openbookqa", "boolq", "rte"]


@pytest.mark.parametrize("name", SINGLE_TASKS)
def test_requests_equal_official_config(name, data_dir, official_index):
    records = hf_records(name, data_dir)
    ours = build_task(name, data_dir)
    official = official_task(official_index[name].yaml_path, records)
    assert requests(ours) == requests(official)
    assert targets(ours) == targets(official)
    # a limit keeps the file's first records, converted to exactly the HF rows built here
    first_rows = next(iter(records.values()))[:FIRST_DOCS]
    assert [doc for _, doc in ours.doc_iterator(limit=FIRST_DOCS)] == first_rows


def test_mmlu_requests_equal_official_config_for_every_subject(data_dir, official_index):
    group = build_task("mmlu", data_dir)
    subjects = leaves(group)
    assert len(subjects) == 57
    for task in subjects:
        official = official_task(official_index[task.task_name].yaml_path, hf_records(task.task_name, data_dir))
        assert requests(task, 2) == requests(official, 2), task.task_name
        assert targets(task, 2) == targets(official, 2), task.task_name


def test_hellaswag_exact_requests_are_lm_evals_strings(data_dir):
    """The OLMES subset carries lm-eval's rendered query and choices: all 1000 must match."""
    task = build_task("hellaswag", data_dir, hellaswag="exact")
    rows = _jsonl(data_dir / "hellaswag/hellaswag_val_olmes_subset1000.jsonl.gz")
    expected = [
        (i, k, (row["query"], " " + choice)) for i, row in enumerate(rows) for k, choice in enumerate(row["choices"])
    ]
    assert requests(task, None) == expected
    assert targets(task, 1000) == [row["gold"] for row in rows]


def test_hellaswag_normalized_requests_equal_official_config(data_dir, official_index):
    ours = build_task("hellaswag", data_dir, hellaswag="normalized")
    first = {split: rows[:FIRST_DOCS] for split, rows in hf_records("hellaswag", data_dir).items()}
    official = official_task(official_index["hellaswag"].yaml_path, first)
    assert requests(ours) == requests(official)
    assert targets(ours) == targets(official)


def test_record_counts_equal_official_split_sizes(data_dir):
    for name, size in OFFICIAL_SIZES.items():
        if name != "hellaswag":  # its full set is the normalized variant; skip a 10k process_docs
            assert sum(len(t.eval_docs) for t in leaves(build_task(name, data_dir))) == size, name
    assert (
        len(local_data("hellaswag", None, data_dir, "normalized").splits["validation"]) == OFFICIAL_SIZES["hellaswag"]
    )
    assert len(build_task("hellaswag", data_dir, "exact").eval_docs) == 1000


def test_tasks_come_from_the_yaml_lm_eval_itself_resolves(data_dir, official_index):
    """Our narrowed index must pick the same official config files as lm-eval's full index."""
    for name in OFFICIAL_SIZES:
        assert task_manager().task_index[name].yaml_path == official_index[name].yaml_path, name
        for task in leaves(build_task(name, data_dir)):
            assert Path(task.config.metadata["config_source"]) == official_index[task.task_name].yaml_path


def test_resolve_tasks():
    assert resolve_tasks("leap6") == SUITES["leap6"]
    assert resolve_tasks("wanda7,leap6") == [*SUITES["wanda7"], "mmlu", "piqa"]
    assert resolve_tasks(" PIQA , arc_easy,piqa") == ["piqa", "arc_easy"]
    assert resolve_tasks(["rte", "boolq"]) == ["rte", "boolq"]
    assert resolve_tasks(None) == resolve_tasks("") == resolve_tasks("none") == []
    with pytest.raises(HarnessError, match="unknown zero-shot task 'lambada'.*leap6.*piqa"):
        resolve_tasks("piqa,lambada")


def test_missing_data_file_names_path_and_fix(tmp_path):
    with pytest.raises(HarnessError, match=r"piqa/valid\.jsonl.*--data-dir"):
        build_task("piqa", tmp_path)


def test_unknown_hellaswag_variant_is_refused(data_dir):
    with pytest.raises(HarnessError, match="hellaswag variant 'raw'"):
        build_task("hellaswag", data_dir, hellaswag="raw")


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("network access during zero-shot evaluation")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture
def tiny_lm(tmp_path):
    """A tiny random Llama and its small tokenizer; context window widened so MMLU prompts fit."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tests.helpers import tiny_model_folder

    folder = tiny_model_folder(tmp_path / "tiny")
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    model.config.max_position_embeddings = 4096  # rotary positions: any length works
    return model, AutoTokenizer.from_pretrained(folder)


def test_evaluate_zeroshot_end_to_end_offline(tiny_lm, data_dir, no_network):
    model, tokenizer = tiny_lm
    rows = []
    model.register_forward_pre_hook(
        lambda module, args, kwargs: rows.append(_batch_rows(args, kwargs)), with_kwargs=True
    )
    result = evaluate_zeroshot(
        model, tokenizer, ["piqa", "mmlu", "hellaswag"], data_dir=data_dir, limit=2, progress=False
    )

    # lm-eval's logits cache scores MMLU's four one-token answers from one forward of the context
    assert sum(rows) == 2 * 2 + 57 * 2 + 2 * 4
    assert result.n_items == {"piqa": 2, "mmlu": 57 * 2, "hellaswag": 2}
    assert set(result.per_item["piqa"]) == {"0", "1"}
    assert "mmlu_anatomy/1" in result.per_item["mmlu"] and len(result.per_item["mmlu"]) == 114
    for name in ("piqa", "hellaswag"):
        assert {f"{name}_acc", f"{name}_acc_stderr", f"{name}_acc_norm", f"{name}_acc_norm_stderr"} <= set(
            result.metrics
        )
        assert result.metrics[f"{name}_acc"] == sum(result.per_item[name].values()) / 2
    assert "mmlu_acc_norm" not in result.metrics  # the mmlu group aggregates acc only
    # lm-eval's group score is weighted by subject size: the mean over all questions
    assert result.metrics["mmlu_acc"] == pytest.approx(sum(result.per_item["mmlu"].values()) / 114)
    assert result.metrics["avg_acc"] == pytest.approx(
        sum(result.metrics[f"{name}_acc"] for name in ("piqa", "mmlu", "hellaswag")) / 3
    )
    assert result.info["lm_eval_version"] == lm_eval.__version__
    assert result.info["limit"] == 2 and result.info["num_fewshot"] == 0
    assert result.info["hellaswag"] == "exact-1000"
    assert result.info["auto_batch_sizes"] == [16]  # memory-sized "auto" on CPU, capped at 16


def _batch_rows(args: tuple, kwargs: dict) -> int:
    input_ids = args[0] if args else kwargs["input_ids"]
    assert isinstance(input_ids, torch.Tensor)
    return input_ids.shape[0]


def test_mmlu_takes_its_own_limit(tiny_lm, data_dir, no_network):
    """The decisive protocol scores the small tasks in full and MMLU on a subset: one lm-eval run
    per distinct limit, merged; every item keeps its choice log-likelihoods."""
    model, tokenizer = tiny_lm
    result = evaluate_zeroshot(model, tokenizer, ["mmlu", "openbookqa"], data_dir=data_dir, limit=3, mmlu_limit=1, progress=False)
    assert result.n_items == {"mmlu": 57, "openbookqa": 3}
    assert result.info["limit"] == 3 and result.info["mmlu_limit"] == 1
    assert set(result.per_item_choices["openbookqa"]) == set(result.per_item["openbookqa"])
    gold, *scores = result.per_item_choices["mmlu"]["mmlu_anatomy/0"]
    assert len(scores) == 4 and result.per_item["mmlu"]["mmlu_anatomy/0"] == int(scores.index(max(scores)) == gold)
