"""LEAP data parallel on 2 CPU ranks (gloo): the same step as one process with the same global
batch, exact resume across ranks, and `torchrun -m harness run` writing one record."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from harness.errors import HarnessError
from harness.methods.leap import LEAPConfig
from harness.methods.leap.checkpoint import Checkpoint
from tests.helpers import tiny_model_folder
from tests.test_leap import SMALL, Interrupted, interrupted, tensor_windows, train_logits

RANKS = 2
CONFIG = {**SMALL, "grad_accum": 2, "checkpoint_every": 3}  # 2 micro-batches of 2 sequences: 4 mask samples a step


def _config(sampling: str) -> LEAPConfig:
    return LEAPConfig(**CONFIG, sampling=sampling).resolve(torch.device("cpu"))


def _rank_main(rank: int, store: str, out: str, sampling: str, stop: int | None, resume: bool) -> None:
    """One rank: join the group, train (interrupted at window `stop`, or resumed from the
    checkpoint), and rank 0 saves the logits."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=RANKS)
    try:
        config = _config(sampling)
        _, source = tensor_windows(config)
        path = Path(out) / "ckpt.pt"
        if stop is not None:
            try:
                train_logits(config, interrupted(source, stop), path=path)
            except Interrupted:
                return
        checkpoint = Checkpoint.load(path, {"run": 1}) if resume else None
        logits, curve = train_logits(config, source, init_seed=5 if resume else 0, path=path, resume=checkpoint)
        if rank == 0:
            torch.save({"logits": logits, "curve": curve}, Path(out) / "logits.pt")
    finally:
        dist.destroy_process_group()


def _two_ranks(tmp_path: Path, name: str, sampling: str, stop: int | None = None, resume: bool = False) -> dict | None:
    store = tmp_path / f"{name}.store"
    mp.spawn(_rank_main, args=(str(store), str(tmp_path), sampling, stop, resume), nprocs=RANKS, join=True)
    result = tmp_path / "logits.pt"
    return torch.load(result) if result.exists() else None


@pytest.mark.parametrize("sampling", ["sequence", "micro-batch"])
def test_two_ranks_train_what_one_process_trains(tmp_path, sampling):
    config = _config(sampling)
    _, source = tensor_windows(config)
    one_logits, one_curve = train_logits(config, source)
    two = _two_ranks(tmp_path, "run", sampling)
    # Only the order of the gradient sums differs: within float32 rounding after 6 AdamW steps.
    for name, theta in one_logits.items():
        torch.testing.assert_close(two["logits"][name], theta, rtol=0, atol=1e-5)
    for a, b in zip(one_curve, two["curve"], strict=True):  # the gradient norm catches a wrong scale, which AdamW would hide
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5) and a["density"] == pytest.approx(b["density"], rel=1e-6)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-5)


def test_two_ranks_resume_bit_for_bit(tmp_path):
    (tmp_path / "whole").mkdir()
    (tmp_path / "parts").mkdir()
    whole = _two_ranks(tmp_path / "whole", "whole", "sequence")
    assert _two_ranks(tmp_path / "parts", "killed", "sequence", stop=4 * 4) is None  # killed asking for step 4's data
    assert Checkpoint.load(tmp_path / "parts" / "ckpt.pt", {"run": 1}).step == 3  # rank 0 wrote it
    resumed = _two_ranks(tmp_path / "parts", "resumed", "sequence", resume=True)
    assert all(torch.equal(whole["logits"][name], resumed["logits"][name]) for name in whole["logits"])


def _rank_disagrees(rank: int, store: str, out: str) -> None:
    """One rank resuming from step 3, the other from scratch (it did not see the checkpoint)."""
    from harness.distributed import world
    from harness.errors import HarnessError

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=RANKS)
    try:
        world().agree(3 if rank == 0 else 0, "the step to resume from", "share the work folder", torch.device("cpu"))
    except HarnessError as error:
        (Path(out) / f"rank{rank}.txt").write_text(str(error))
    finally:
        dist.destroy_process_group()


def test_too_few_mask_samples_for_the_ranks_are_refused_by_the_plan(monkeypatch):
    """The CPU default draws one mask per micro-batch of a one-micro-batch step: two ranks cannot
    share it, and the plan says so before any model loads, naming the setting that adds samples."""
    from harness.plan import method_configs
    from harness.settings import RunSettings

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(HarnessError, match=r"1 mask sample\(s\) to share among 2 ranks; raise leap.grad_accum \(one mask per micro-batch\), or set leap.sampling=sequence"):
        method_configs(RunSettings(methods="leap", device="cpu").resolved())
    for fix in ({"grad_accum": "2"}, {"sampling": "sequence"}):
        assert method_configs(RunSettings(methods="leap", device="cpu", overrides={"leap": fix}).resolved())["leap"]
    with pytest.raises(HarnessError, match="raise leap.grad_accum or leap.batch_size, or start fewer ranks"):
        method_configs(RunSettings(methods="leap", device="cpu", overrides={"leap": {"sampling": "sequence", "batch_size": "1"}}).resolved())


def test_ranks_that_disagree_all_stop(tmp_path):
    mp.spawn(_rank_disagrees, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=RANKS, join=True)
    for rank in range(RANKS):
        assert (tmp_path / f"rank{rank}.txt").read_text() == "the ranks disagree on the step to resume from (0 to 3); share the work folder"


def _run(args: list[str], out: Path, env: dict[str, str]) -> dict:
    run = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    (record,) = [json.loads(path.read_text()) for path in out.rglob("*.json")]
    assert not list(out.rglob("*.work"))  # the checkpoint folder goes with the checkpoint
    return record


def test_torchrun_runs_one_leap_cell_on_both_ranks(tmp_path, data_dir):
    model = tiny_model_folder(tmp_path / "model")
    cell = [
        "run", "--model", str(model), "--methods", "leap", "--sparsity", "0.5", "--no-dense", "--tasks", "none",
        "--nsamples", "2", "--seqlen", "32", "--ppl-tokens", "256", "--device", "cpu", "--dtype", "float32", "--no-report",
        "--set", "leap.steps=3", "--set", "leap.batch_size=2", "--set", "leap.grad_accum=2", "--set", "leap.seqlen=32",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HARNESS_DATA_DIR": str(data_dir)}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(RANKS), "-m", "harness"]
    two = _run([*torchrun, *cell, "--out", str(tmp_path / "two")], tmp_path / "two", env)
    one = _run([sys.executable, "-m", "harness", *cell, "--out", str(tmp_path / "one")], tmp_path / "one", env)
    assert two["method_stats"]["world_size"] == RANKS and one["method_stats"]["world_size"] == 1
    assert two["config_hash"] == one["config_hash"] and two["realized_sparsity"] == one["realized_sparsity"] == 0.5
    assert two["metrics"]["wikitext2_ppl"] == pytest.approx(one["metrics"]["wikitext2_ppl"], rel=1e-4)
