"""Small PyTorch conveniences every training notebook needs: device, seeds, train mode, cost.

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
from pathlib import Path
from typing import Literal, TypeVar

import numpy as np
import torch
from torch import nn

from common.memory import PeakMemory


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


M = TypeVar("M", bound=nn.Module)


def train_mode(module: M, training: bool = True, *, eval_batch_norm: Literal["frozen", "all"] = "frozen") -> M:
    """`module.train(training)`, but BatchNorm layers stay in eval mode so their running statistics
    (learnt on ImageNet) do not move: those whose parameters are all frozen (default), or every one
    (`eval_batch_norm="all"`, for small batches whose statistics would be noisier than ImageNet's).

    Dropout and drop connect still train, and gradients still flow through the eval-mode layers. It
    calls `nn.Module.train` directly, so a module's own `train` override may call it. Returns `module`."""
    if eval_batch_norm not in ("frozen", "all"):
        raise ValueError(f"eval_batch_norm must be 'frozen' or 'all', got {eval_batch_norm!r}")
    nn.Module.train(module, training)
    for layer in module.modules():
        if isinstance(layer, nn.modules.batchnorm._BatchNorm) and (
            eval_batch_norm == "all" or not any(p.requires_grad for p in layer.parameters())
        ):
            layer.eval()
    return module


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


def save(obj: object, path: str | os.PathLike) -> Path:
    """`torch.save`, atomically: written to a temporary file beside `path`, then renamed, so a crash
    or Ctrl+C mid-write leaves the previous file (or none), never half of one. For checkpoints and caches."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(obj, tmp)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
