"""Peak resident memory of a process tree, sampled in a background thread."""
from __future__ import annotations

import threading

import psutil


class PeakMemory:
    """Samples the summed RSS of this process's children (and of itself with
    `include_self`): the runner watches the notebook kernel and what it spawns
    (AutoGluon workers), a notebook watches its own training (and loader workers)."""

    def __init__(self, interval: float = 0.2, *, include_self: bool = False) -> None:
        self._me = psutil.Process()
        self._include_self = include_self
        self._interval = interval
        self._stop = threading.Event()
        self.peak_bytes = 0
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _total(self) -> int:
        processes = self._me.children(recursive=True)
        if self._include_self:
            processes.append(self._me)
        total = 0
        for process in processes:
            try:
                total += process.memory_info().rss
            except psutil.Error:  # the child exited between listing and reading
                pass
        return total

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak_bytes = max(self.peak_bytes, self._total())
            self._stop.wait(self._interval)

    def __enter__(self) -> "PeakMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_bytes = max(self.peak_bytes, self._total())
