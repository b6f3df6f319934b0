"""Package versions, git commit and hardware, stored in every record so a cell can be reproduced
and a report can tell when it compares numbers from different machines.

Hardware matters for bfloat16: the same cell gives the same numbers on one machine, but another
CPU (other matrix units: AVX-512 BF16, AMX) or GPU may round differently and flip near-tie
zero-shot items. float32 runs reproduce across machines."""

from __future__ import annotations

import functools
import os
import platform
import shutil
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

PACKAGES = ("torch", "transformers", "lm_eval", "leap-harness", "numpy", "gguf")


def package_versions() -> dict[str, str]:
    found: dict[str, str] = {}
    for name in PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found


@functools.cache
def git_commit() -> str | None:
    """HEAD of the harness checkout, with '+dirty' when the tree has uncommitted changes. Read
    once per process (the runner asks before the first cell): the code that runs is the code
    loaded then, whatever is committed or edited while a long sweep goes on."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+dirty" if dirty else "")


MATRIX_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "avx_vnni", "amx_tile", "amx_bf16", "amx_int8")
"""The CPU features that decide how matrix products (and bfloat16 ones above all) are computed."""


@functools.cache
def _cpuinfo() -> tuple[str, tuple[str, ...]]:
    """(CPU model, its matrix-instruction flags) from /proc/cpuinfo; the platform's name elsewhere."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine(), ()
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    fields = {key.strip(): value.strip() for key, value in fields.items()}
    flags = set(fields.get("flags", "").split())
    return fields.get("model name", platform.machine()), tuple(flag for flag in MATRIX_FLAGS if flag in flags)


def _nvidia_driver() -> str | None:
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None


def hardware(device: str) -> dict[str, object]:
    """The machine a cell ran on: CPU model and matrix flags, threads; GPU, CUDA and driver on CUDA."""
    import torch

    cpu, flags = _cpuinfo()
    info: dict[str, object] = {"cpu": cpu, "cpu_flags": list(flags), "threads": torch.get_num_threads(), "cpu_count": os.cpu_count()}
    if device.startswith("cuda"):
        index = torch.device(device).index or 0
        info.update(gpu=torch.cuda.get_device_name(index), cuda=torch.version.cuda, driver=_nvidia_driver())
    return info


def hardware_label(info: dict | None) -> str | None:
    """A short name of the machine that decides the numbers: the GPU, else the CPU and its flags."""
    if not info:
        return None
    if info.get("gpu"):
        return f"{info['gpu']} (CUDA {info.get('cuda')})"
    flags = "+".join(flag for flag in info.get("cpu_flags", []) if "bf16" in flag or "amx" in flag)
    return f"{info.get('cpu')}" + (f" [{flags}]" if flags else "")
