"""The Ray executor on a real local Ray cluster (2 CPUs) with the tiny model: cells run as Ray
tasks, records appear, a re-run skips them, and a failing task is reported with its cell."""

from __future__ import annotations

import pytest

from harness.runner import run_sweep
from harness.settings import RunSettings
from tests.helpers import tiny_model_folder

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def test_ray_cells_write_records_and_resume(local_ray, tmp_path, data_dir):
    model_dir = str(tiny_model_folder(tmp_path / "tiny"))
    broken = tmp_path / "broken-model"  # passes the up-front check (a folder with a config.json), fails to load
    broken.mkdir()
    (broken / "config.json").write_text("{}")
    settings = RunSettings(
        models=[model_dir, str(broken)], methods=["magnitude"], sparsities=["0.5"], out=tmp_path / "res",
        nsamples=2, seqlen=32, ppl_tokens=256, tasks="none", device="cpu", dtype="float32", progress=False, executor="ray",
    )
    outcome = run_sweep(settings, log=lambda _: None)
    assert sorted((r["model"], r["method"]) for r in outcome.records) == [(model_dir, "dense"), (model_dir, "magnitude")]
    assert {(f.cell.model, f.cell.method) for f in outcome.failures} == {(str(broken), "dense"), (str(broken), "magnitude")}
    assert all("cannot load model" in f.error for f in outcome.failures)
    assert len(list((tmp_path / "res").rglob("*.json"))) == 2

    lines: list[str] = []
    again = run_sweep(settings, log=lines.append)
    assert sum("skipping" in line for line in lines) == 2
    assert [r["config_hash"] for r in again.records] == [r["config_hash"] for r in outcome.records]
    assert len(again.failures) == 2
