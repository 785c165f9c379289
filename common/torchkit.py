"""Small PyTorch conveniences every training notebook needs: device, seeds, cost.

`measure()` is how projects get the "train seconds" and "peak memory" numbers in
their metrics.json: wall time of the block and the peak resident memory of this
process (plus data-loader workers) while it ran.
"""
from __future__ import annotations

import os
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from common.resources import PeakMemory


def select_device(threads: int | None = None) -> torch.device:
    """CUDA if present, else Apple's MPS, else the CPU using `threads` threads (default: all cores)."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    torch.set_num_threads(threads or os.cpu_count() or 1)
    return torch.device("cpu")


def seed_everything(seed: int = 0) -> torch.Generator:
    """Seed Python, NumPy and PyTorch; returns a torch Generator seeded the same way,
    for DataLoader shuffling and random splits that must not depend on earlier draws."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


@dataclass
class Cost:
    seconds: float = 0.0
    peak_memory_mb: float = 0.0


@contextmanager
def measure() -> Iterator[Cost]:
    """`with measure() as cost: train(...)`, then `cost.seconds`, `cost.peak_memory_mb`."""
    cost = Cost()
    started = time.perf_counter()
    with PeakMemory(include_self=True) as memory:
        try:
            yield cost
        finally:
            cost.seconds = round(time.perf_counter() - started, 2)
    cost.peak_memory_mb = round(memory.peak_bytes / 2**20, 1)
