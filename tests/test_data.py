"""The project's own data and its manifest: every file verified before use (once per version),
corrupted or truncated copies refused with one line, `harness data verify`, `harness data fetch`
offline, the fetch conversions on local files in the hub's row formats, and a run from a fresh
clone with no `../shared` anywhere."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from harness.data import data_file, default_data_dir, read_jsonl_gz
from harness.errors import HarnessError
from harness.fetch import SOURCES, add_to_manifest, c4_rows, hellaswag_rows, slimpajama_rows, wikitext_rows, write_jsonl_gz
from harness.manifest import MANIFEST_FILE, PROJECT_DATA, file_sha256, manifest_for, read_manifest, verify_file, verify_folder
from tests.helpers import run_cli, tiny_model_folder

ROOT = Path(__file__).resolve().parent.parent


def test_the_project_ships_its_data_and_it_matches_the_manifest():
    assert default_data_dir() == PROJECT_DATA
    results = verify_folder(PROJECT_DATA)
    assert len(results) >= 120 and all(why is None for _, why in results), [(e.path, w) for e, w in results if w]
    entries = read_manifest(PROJECT_DATA)
    assert entries["wikitext2/wikitext-2-raw-v1.test.jsonl.gz"].rows == 4358
    assert entries["c4/c4_validation_2k.jsonl.gz"].rows == 2000
    assert all(entry.source and entry.license for entry in entries.values())


@pytest.fixture
def copy_root(tmp_path, monkeypatch):
    """A copy of the project's data with its manifest, and a private verification cache."""
    monkeypatch.setenv("HARNESS_CACHE_DIR", str(tmp_path / "cache"))
    root = tmp_path / "data"
    shutil.copytree(PROJECT_DATA, root)
    return root


def test_a_corrupted_file_is_refused_with_one_line(copy_root):
    path = copy_root / "piqa" / "valid-labels.lst"
    text = path.read_text()
    path.write_text(("1" if text[0] == "0" else "0") + text[1:])  # same size, one label flipped
    with pytest.raises(HarnessError) as info:
        data_file(copy_root, "piqa/valid-labels.lst")
    message = str(info.value)
    assert "\n" not in message and "piqa/valid-labels.lst" in message and "sha256" in message and "--data-dir" in message


def test_a_corrupted_task_file_stops_the_run_before_any_model_loads(copy_root, monkeypatch, capsys, tmp_path):
    path = copy_root / "winogrande" / "winogrande_xl_validation.jsonl"
    path.write_bytes(path.read_bytes()[:-10])
    model = tiny_model_folder(tmp_path / "tiny")
    capsys.readouterr()
    code, _, err = run_cli(monkeypatch, capsys, "run", "--model", str(model), "--data-dir", str(copy_root), "--tasks", "winogrande",
                           "--out", str(tmp_path / "res"), "--device", "cpu")
    assert code == 2 and err.count("\n") == 1 and "winogrande/winogrande_xl_validation.jsonl" in err
    assert not (tmp_path / "res").exists()


def test_a_truncated_file_is_refused(copy_root):
    path = copy_root / "wikitext2" / "wikitext-2-raw-v1.test.jsonl.gz"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(HarnessError, match="truncated or changed"):
        data_file(copy_root, "wikitext2/wikitext-2-raw-v1.test.jsonl.gz")


def test_a_verified_file_is_not_hashed_again(copy_root, monkeypatch):
    calls = []
    import harness.manifest as manifest

    original = manifest.file_sha256
    monkeypatch.setattr(manifest, "file_sha256", lambda path: calls.append(path) or original(path))
    manifest._VERIFIED.clear()
    verify_file(copy_root, "openbookqa/test.jsonl")
    manifest._VERIFIED.clear()  # a new process: the on-disk cache still knows the file
    verify_file(copy_root, "openbookqa/test.jsonl")
    assert len(calls) == 1


def test_a_root_without_a_manifest_is_checked_against_the_projects(copy_root):
    (copy_root / MANIFEST_FILE).unlink()
    assert manifest_for(copy_root)[1] == PROJECT_DATA / MANIFEST_FILE
    assert data_file(copy_root, "openbookqa/test.jsonl").exists()


def test_data_verify_command(monkeypatch, capsys, copy_root):
    code, out, _ = run_cli(monkeypatch, capsys, "data", "verify", str(copy_root))
    assert code == 0 and "127 of 127 files match" in out
    (copy_root / "rte" / "validation.parquet").write_bytes(b"not parquet")
    code, _, err = run_cli(monkeypatch, capsys, "data", "verify", str(copy_root))
    assert code == 2 and "rte/validation.parquet" in err and err.strip().splitlines()[-1].startswith("error: 1 data file(s)")


def test_fetch_offline_says_so_in_one_line(monkeypatch, capsys, tmp_path):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    code, _, err = run_cli(monkeypatch, capsys, "data", "fetch", "--sources", "wikitext2", "--out", str(tmp_path / "fetched"))
    assert code == 2 and err.count("\n") == 1 and "offline" in err and "--data-dir" in err
    assert not (tmp_path / "fetched").exists()


def test_an_installed_harness_does_not_fetch_into_its_packaged_data(monkeypatch, capsys):
    import harness.fetch

    monkeypatch.setattr(harness.fetch, "IN_CHECKOUT", False)
    code, _, err = run_cli(monkeypatch, capsys, "data", "fetch", "--sources", "wikitext2")
    assert code == 2 and err.count("\n") == 1 and "--out DIR" in err


def test_the_wheel_leaves_out_what_git_ignores_in_data():
    """pyproject's exclude-package-data and .gitignore name the same fetched files."""
    tomllib = pytest.importorskip("tomllib")
    ignored = {line.removeprefix("data/") for line in (ROOT / ".gitignore").read_text().splitlines() if line.startswith("data/")}
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    excluded = set(config["exclude-package-data"]["harness.project_data"])
    assert excluded == {name + "*" if name.endswith("/") else name for name in ignored}


def test_wikitext_conversion_reproduces_the_shipped_file(tmp_path):
    """HF `wikitext` rows are {text}; the shipped file holds exactly those rows."""
    rows = read_jsonl_gz(PROJECT_DATA / "wikitext2" / "wikitext-2-raw-v1.test.jsonl.gz")
    target = tmp_path / "w.jsonl.gz"
    assert write_jsonl_gz(target, wikitext_rows(rows)) == 4358
    with gzip.open(target, "rb") as a, gzip.open(PROJECT_DATA / "wikitext2" / "wikitext-2-raw-v1.test.jsonl.gz", "rb") as b:
        assert [json.loads(line) for line in a] == [json.loads(line) for line in b]
    assert file_sha256(target) == file_sha256(tmp_path / "w.jsonl.gz")  # deterministic bytes (no gzip time stamp)


def test_c4_conversion_keeps_the_shipped_fields(tmp_path):
    hub_rows = read_jsonl_gz(PROJECT_DATA / "c4" / "c4_validation_2k.jsonl.gz")[:50]  # allenai/c4 rows: text, timestamp, url
    target = tmp_path / "c4.jsonl.gz"
    write_jsonl_gz(target, c4_rows(hub_rows))
    assert read_jsonl_gz(target) == hub_rows


def test_slimpajama_slice_stops_at_the_token_budget():
    docs = [{"text": row["text"], "meta": {"redpajama_set_name": "RedPajamaC4"}} for row in read_jsonl_gz(PROJECT_DATA / "c4" / "c4_validation_2k.jsonl.gz")[:100]]
    words = lambda text: len(text.split())  # noqa: E731
    out = list(slimpajama_rows(docs, tokens=5000, count_tokens=words))
    assert sum(words(row["text"]) for row in out[:-1]) < 5000 <= sum(words(row["text"]) for row in out)
    assert out[0] == {"text": docs[0]["text"], "set": "RedPajamaC4"}


def test_hellaswag_conversion_feeds_lm_evals_own_processing(tmp_path):
    """A row in the Rowan/hellaswag schema (from the shipped normalized file) goes through the
    `full` variant into lm-eval's official `process_docs`."""
    from harness.evaluation.tasks.local_task import build_task

    klosax = read_jsonl_gz(PROJECT_DATA / "hellaswag" / "hellaswag_val_klosax.jsonl.gz")[:5]
    hub_rows = [
        {"ind": r["val_idx"], "activity_label": r["activity_label"], "ctx_a": r["ctx"], "ctx_b": "", "ctx": r["ctx"],
         "endings": r["endings"], "source_id": "x", "split": "val", "split_type": "indomain", "label": str(r["label"])}
        for r in klosax
    ]
    root = tmp_path / "root"
    root.mkdir()
    (root / MANIFEST_FILE).write_text(json.dumps({"files": []}))
    write_jsonl_gz(root / SOURCES["hellaswag"].file, hellaswag_rows(hub_rows))
    add_to_manifest(root, SOURCES["hellaswag"].file, SOURCES["hellaswag"])
    task = build_task("hellaswag", root, hellaswag="full")
    docs = list(task.validation_docs())
    assert len(docs) == 5 and docs[0]["gold"] == klosax[0]["label"] and len(docs[0]["choices"]) == 4


@pytest.mark.slow
def test_a_fresh_clone_runs_from_its_own_data(tmp_path):
    """Clone into an empty folder with no ../shared anywhere, install the clone (not editable, so
    its code, its methods and its data are the wheel's alone) and run a small sweep from a folder
    outside it."""
    clone = tmp_path / "empty" / "leap-harness"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True)
    assert not (clone.parent.parent / "shared").exists() and not (clone.parent / "shared").exists()
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--target", str(site), str(clone)],
                   check=True, capture_output=True)
    shutil.rmtree(clone)
    work = tmp_path / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("HARNESS_DATA_DIR", "PYTHONPATH")}
    env.update(PYTHONPATH=str(site), HARNESS_CACHE_DIR=str(tmp_path / "cache"))
    where = subprocess.run([sys.executable, "-c", "import harness.methods.wanda as w, harness.manifest as m; print(w.__file__); print(m.PROJECT_DATA)"],
                           cwd=work, env=env, capture_output=True, text=True, check=True).stdout.split()
    assert all(Path(path).is_relative_to(site) for path in where), where
    packaged = Path(where[1])
    shipped = {path.relative_to(packaged).as_posix() for path in packaged.rglob("*") if path.is_file() and path.suffix != ".md"}
    assert shipped == {MANIFEST_FILE} | set(read_manifest(PROJECT_DATA))
    assert all(problem is None for _, problem in verify_folder(packaged))
    model = tiny_model_folder(tmp_path / "tiny")
    command = [sys.executable, "-m", "harness", "run", "--model", str(model), "--methods", "wanda", "--tasks", "piqa", "--limit", "3",
               "--nsamples", "2", "--seqlen", "32", "--ppl-tokens", "256", "--device", "cpu", "--no-report", "--out", "res"]
    done = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    records = [json.loads(path.read_text()) for path in (work / "res").rglob("*.json")]
    assert sorted(r["method"] for r in records) == ["dense", "wanda"]
    assert all(r["evaluation"]["n_items"]["piqa"] == 3 for r in records)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_folder(tmp_path_factory.mktemp("tok")))


@pytest.fixture
def root_with_shard(copy_root):
    """A data root holding a C4 'train shard' made of local documents in the hub's row format."""
    from harness.layout import C4_TRAIN_FILE

    hub_rows = read_jsonl_gz(copy_root / "c4" / "c4_validation_2k.jsonl.gz")[:300]
    write_jsonl_gz(copy_root / C4_TRAIN_FILE, c4_rows(hub_rows))
    add_to_manifest(copy_root, C4_TRAIN_FILE, SOURCES["c4-train"])
    return copy_root


def _reference_get_c4(tokenizer, docs, nsamples, seqlen, seed):
    """Wanda's `get_c4` (locuslab/wanda lib/data.py), line by line on a list of texts."""
    import random

    random.seed(seed)
    trainloader = []
    for _ in range(nsamples):
        while True:
            i = random.randint(0, len(docs) - 1)
            trainenc = tokenizer(docs[i], return_tensors="pt")
            if trainenc.input_ids.shape[1] > seqlen:
                break
        i = random.randint(0, trainenc.input_ids.shape[1] - seqlen - 1)
        j = i + seqlen
        trainloader.append(trainenc.input_ids[:, i:j])
    return trainloader


def test_c4_train_calibration_is_the_papers_sampling(root_with_shard, tokenizer):
    import torch

    from harness.data import c4_train_documents, calibration_windows

    windows = calibration_windows(tokenizer, "c4-train", 6, 64, 3, root_with_shard, False)
    reference = torch.cat(_reference_get_c4(tokenizer, c4_train_documents(root_with_shard), 6, 64, 3))
    assert torch.equal(windows, reference)
    again = calibration_windows(tokenizer, "c4-train", 6, 64, 3, root_with_shard, False)
    assert torch.equal(windows, again)


def test_calibration_source_resolves_from_the_data_root(root_with_shard, copy_root):
    from harness.plan import plan_cells
    from harness.settings import RunSettings

    with_shard = RunSettings(device="cpu", data_dir=root_with_shard, methods="wanda", tasks="none").resolved()
    assert with_shard.calibration == "c4-train"
    assert plan_cells(with_shard)[1].identity["calibration"]["dataset"] == "c4-train"
    local = RunSettings(device="cpu", methods="wanda", tasks="none").resolved()
    assert local.calibration == "c4-local"
    assert plan_cells(local)[1].identity["calibration"]["dataset"] == "c4"  # the name every earlier record has


def test_c4_train_without_the_shard_is_refused_up_front(monkeypatch, capsys, tmp_path):
    code, _, err = run_cli(monkeypatch, capsys, "run", "--calibration", "c4-train", "--methods", "wanda", "--tasks", "none", "--device", "cpu", "--out", str(tmp_path))
    assert code == 2 and "missing data file" in err and "c4-train.00000-of-01024" in err


def test_leap_corpus_is_checked_up_front_and_its_passes_recorded(monkeypatch, capsys, tmp_path, tokenizer):
    code, _, err = run_cli(monkeypatch, capsys, "run", "--methods", "leap", "--set", "leap.corpus=slimpajama", "--tasks", "none", "--device", "cpu", "--out", str(tmp_path))
    assert code == 2 and "slimpajama" in err and "missing data file" in err

    from harness.methods.leap import Budget, LEAPPruner
    from harness.pruner import PruneContext

    leap = LEAPPruner()
    small = leap.corpus_use(PruneContext(tokenizer=tokenizer), Budget(2, 4, 1, 64))
    assert small["name"] == "c4-local" and 0 < small["passes"] < 1 and "warning" not in capsys.readouterr().err
    paper = leap.corpus_use(PruneContext(tokenizer=tokenizer), Budget(2000, 4, 32, 4096))
    assert paper["passes"] > 100
    assert "goes through its corpus c4-local" in capsys.readouterr().err


def test_fetch_writes_the_layout_and_its_manifest(tmp_path, monkeypatch):
    """The fetch pipeline with only the download replaced by local rows in the hub's format: a new
    root starts as the project's data, fetched files enter the fetched manifest, shipped files
    are kept, and the root verifies."""
    import harness.fetch as fetch_module
    from harness.manifest import FETCHED_MANIFEST_FILE

    hub_c4 = read_jsonl_gz(PROJECT_DATA / "c4" / "c4_validation_2k.jsonl.gz")[:40]
    monkeypatch.setattr(fetch_module, "_hub_resolves", lambda endpoint: True)
    monkeypatch.setattr(fetch_module, "_download_rows", lambda name, tokens, count: c4_rows(hub_c4))
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HARNESS_CACHE_DIR", str(tmp_path / "cache"))
    root = tmp_path / "fetched"
    lines: list[str] = []
    entries = fetch_module.fetch(["c4-train", "wikitext2"], root, 1000, len, log=lines.append)
    assert [entry.path for entry in entries] == [SOURCES["c4-train"].file]
    assert any("shipped and verified" in line for line in lines)
    assert read_manifest(root, FETCHED_MANIFEST_FILE)[SOURCES["c4-train"].file].rows == 40
    assert all(why is None for _, why in verify_folder(root))
    assert data_file(root, SOURCES["c4-train"].file).exists()
