"""The notebook's execution step for the local backend: server + capture + state machine, in one call."""
from __future__ import annotations

import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ..lambdas.constants import THRESHOLD
from ..serving.capture import CaptureWriter
from ..serving.server import InferenceServer, Variant
from .state_machine import LocalWorkflow


# How many test images go through the workflow per profile (None: all of them).
@dataclass
class LocalRun:
    results: pd.DataFrame        # one row per execution over the test images
    bad_inputs: pd.DataFrame     # one row per deliberately bad input
    capture_location: str
    endpoint_invocations: int
    invocations_by_variant: dict[str, int]


def bad_inputs(sample_png: bytes) -> dict[str, bytes | None]:
    """Inputs the workflow must fail on cleanly (None: the key is never uploaded)."""
    return {"bad/missing.png": None, "bad/empty.png": b"", "bad/not_an_image.png": b"%PDF-1.7 not a picture",
            "bad/truncated.png": sample_png[: len(sample_png) // 3]}


def run_local(predict: Callable[[bytes], list[float]] | None, images: Mapping[str, bytes], *, capture_dir: Path,
              threshold: float = THRESHOLD, concurrency: int = 4, extra_cases: Mapping[str, bytes | None] = (),
              variants: Mapping[str, Variant] | None = None, seed: int = 0) -> LocalRun:
    """Serve `predict` (or weighted `variants`) with data capture into `capture_dir` (emptied first), run one
    execution per image and per extra case, stop the server (flushing the captures)."""
    shutil.rmtree(capture_dir, ignore_errors=True)
    capture = CaptureWriter(str(capture_dir), "scones-endpoint")
    with InferenceServer(predict, variants=variants, port=0, capture=capture, seed=seed) as server, \
            LocalWorkflow(server.url, threshold=threshold) as workflow:
        keys = [workflow.put_image(key, content) for key, content in images.items()]
        results = workflow.run_many(keys, concurrency=concurrency)
        for key, content in dict(extra_cases).items():
            if content is not None:
                workflow.put_image(key, content)
        bad = workflow.run_many(list(dict(extra_cases)), concurrency=1)
    return LocalRun(results, bad, str(capture_dir), server.invocations, dict(server.invocations_by_variant))


def send_traffic(predict: Callable[[bytes], list[float]], uploads: Mapping[str, bytes], *, capture_dir: Path,
                 content_type: str = "image/jpeg", concurrency: int = 4) -> int:
    """Production traffic straight to the endpoint (no workflow), captured into `capture_dir` (emptied
    first), each request with its name as InferenceId; returns how many were captured."""
    from concurrent.futures import ThreadPoolExecutor

    import boto3

    shutil.rmtree(capture_dir, ignore_errors=True)
    capture = CaptureWriter(str(capture_dir), "scones-endpoint")
    with InferenceServer(predict, port=0, capture=capture) as server:
        runtime = boto3.client("sagemaker-runtime", endpoint_url=server.url, region_name="us-east-1",
                               aws_access_key_id="local", aws_secret_access_key="local")
        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(lambda item: runtime.invoke_endpoint(
                EndpointName="scones-endpoint", ContentType=content_type, Body=item[1],
                InferenceId=item[0][-64:])["Body"].read(), uploads.items()))
    return capture.records_written
