"""Peak memory of a block of work: process RSS sampled in a thread, plus CUDA's own peak counter."""

from __future__ import annotations

import threading
from types import TracebackType

import psutil
import torch


class PeakMemory:
    """Context manager; after exit, `rss_mb` is the peak resident set size seen inside the block
    and `gpu_mb` the peak CUDA allocation (0 without CUDA)."""

    def __init__(self, interval_s: float = 0.05) -> None:
        self.interval_s = interval_s
        self.rss_mb = 0.0
        self.gpu_mb = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._process = psutil.Process()

    def _sample(self) -> None:
        self.rss_mb = max(self.rss_mb, self._process.memory_info().rss / 2**20)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def __enter__(self) -> "PeakMemory":
        self._sample()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._sample()
        if torch.cuda.is_available():
            self.gpu_mb = torch.cuda.max_memory_allocated() / 2**20
