"""The notebook's execution step for the local backend: server + capture + state machine, in one call."""
from __future__ import annotations

import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .capture import CaptureWriter
from .server import InferenceServer
from .workflow import LocalWorkflow


# How many test images go through the workflow per profile (None: all of them).
IMAGES = {"tiny": 20, "quick": 60, "full": None}


@dataclass
class LocalRun:
    results: pd.DataFrame        # one row per execution over the test images
    bad_inputs: pd.DataFrame     # one row per deliberately bad input
    capture_location: str
    endpoint_invocations: int


def bad_inputs(sample_png: bytes) -> dict[str, bytes | None]:
    """Inputs the workflow must fail on cleanly (None: the key is never uploaded)."""
    return {"bad/missing.png": None, "bad/empty.png": b"", "bad/not_an_image.png": b"%PDF-1.7 not a picture",
            "bad/truncated.png": sample_png[: len(sample_png) // 3]}


def run_local(predict: Callable[[bytes], list[float]], images: Mapping[str, bytes], *, capture_dir: Path,
              threshold: float = 0.94, concurrency: int = 4, extra_cases: Mapping[str, bytes | None] = ()) -> LocalRun:
    """Serve `predict` with data capture into `capture_dir` (emptied first), run one execution per image
    and per extra case, stop the server (flushing the captures)."""
    shutil.rmtree(capture_dir, ignore_errors=True)
    capture = CaptureWriter(str(capture_dir), "scones-endpoint")
    with InferenceServer(predict, port=0, capture=capture) as server, \
            LocalWorkflow(server.url, threshold=threshold) as workflow:
        keys = [workflow.put_image(key, content) for key, content in images.items()]
        results = workflow.run_many(keys, concurrency=concurrency)
        for key, content in dict(extra_cases).items():
            if content is not None:
                workflow.put_image(key, content)
        bad = workflow.run_many(list(dict(extra_cases)), concurrency=1)
    return LocalRun(results, bad, str(capture_dir), server.invocations)
