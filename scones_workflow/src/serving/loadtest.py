"""Load test of the local stack: N workflow executions from C concurrent clients.

    python -m scones_workflow load --data-dir ../shared/data   # the committed ONNX model

Starts the inference server (with data capture into a fresh folder) and the local workflow, runs
`--executions` executions over the test images with `--concurrency` client threads, then checks that
every execution ended (SUCCEEDED or FAILED, none RUNNING) and that the capture holds exactly one
record per endpoint invocation (none lost, none duplicated).

Where an execution's time goes (`breakdown_ms`, milliseconds per execution): each Lambda handler,
the endpoint's model (decode + ONNX Runtime, measured in the server), and the rest, which is moto's
Step Functions engine (state transitions, its Lambda and S3 emulation, polling). Locally the engine
dominates; in AWS the engine's share is Step Functions' own, not this code's.

It also measures the endpoint alone: `invoke_endpoint` calls from the same number of concurrent
clients, in images per second (the issue's target: >= 150 images/s on 2 cores with ONNX Runtime).
"""
from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from itertools import cycle, islice
from pathlib import Path

import boto3
import numpy as np

from .. import data
from ..lambdas.constants import THRESHOLD
from ..local.state_machine import LocalWorkflow
from ..monitoring import monitor
from .capture import CaptureWriter
from .server import InferenceServer

# The old end-to-end latency targets are retired (locally the time is moto's engine); the endpoint's is kept.
TARGETS = {"endpoint_images_per_s": 150}
# Per profile: (workflow executions, concurrent clients, direct endpoint requests); the test is `full`.
# 600 requests: a few seconds of steady load, so thread start-up and one slow request weigh little.
def _percentiles(latencies_ms: Sequence[float]) -> dict[str, float]:
    values = np.asarray(latencies_ms, dtype=float)
    return {"p50_ms": round(float(np.percentile(values, 50)), 1), "p99_ms": round(float(np.percentile(values, 99)), 1),
            "mean_ms": round(float(values.mean()), 1)}


def endpoint_throughput(url: str, images: Sequence[bytes], requests: int, concurrency: int) -> dict[str, float]:
    """`invoke_endpoint` straight at the server, `concurrency` clients at a time."""
    runtime = boto3.client("sagemaker-runtime", endpoint_url=url, region_name="us-east-1",
                           aws_access_key_id="local", aws_secret_access_key="local")

    def call(image: bytes) -> float:
        started = time.perf_counter()
        runtime.invoke_endpoint(EndpointName="scones-endpoint", ContentType="image/png", Body=image)["Body"].read()
        return (time.perf_counter() - started) * 1000

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        latencies = list(pool.map(call, islice(cycle(images), requests)))
    wall = time.perf_counter() - started
    return {"endpoint_requests": requests, "endpoint_images_per_s": round(requests / wall, 1),
            **{f"endpoint_{k}": v for k, v in _percentiles(latencies).items()}}


def run_load(predict: Callable[[bytes], list[float]], images: dict[str, bytes], *, executions: int = 200,
             concurrency: int = 8, endpoint_requests: int = 200, capture_dir: Path | None = None,
             threshold: float = THRESHOLD) -> dict:
    """Run the load test; returns the numbers the report shows (and `checks_passed`).
    `capture_dir` is emptied first: the count check needs the captures of this run only."""
    capture_dir = Path(capture_dir or tempfile.mkdtemp(prefix="scones-load-"))
    shutil.rmtree(capture_dir, ignore_errors=True)
    capture = CaptureWriter(str(capture_dir), "scones-endpoint")
    server = InferenceServer(predict, port=0, capture=capture).start()
    try:
        with LocalWorkflow(server.url, threshold=threshold) as workflow:
            keys = [workflow.put_image(name, content) for name, content in images.items()]
            started = time.perf_counter()
            results = workflow.run_many(islice(cycle(keys), executions), concurrency=concurrency)
            wall = time.perf_counter() - started
            workflow_invocations = server.invocations
            model_seconds = server.model_seconds
            handler_seconds = dict(workflow.handler_seconds)
        endpoint = endpoint_throughput(server.url, list(images.values()), endpoint_requests, concurrency)
    finally:
        server.stop()  # flushes the capture buffer
    captures = monitor.read_captures(capture_dir)
    statuses = results["status"].value_counts().to_dict()
    total_invocations = workflow_invocations + endpoint["endpoint_requests"]
    summary = {
        "executions": executions, "concurrency": concurrency,
        "succeeded": int(statuses.get("SUCCEEDED", 0)), "failed": int(statuses.get("FAILED", 0)),
        "all_terminal": bool(results["status"].isin(["SUCCEEDED", "FAILED"]).all()),
        "failure_errors": results["error"].dropna().value_counts().to_dict(),
        **_percentiles(results["latency_ms"]),
        "breakdown_ms": breakdown(float(results["latency_ms"].mean()), handler_seconds, model_seconds, executions),
        "executions_per_s": round(executions / wall, 1),
        "wall_s": round(wall, 1),
        **endpoint,
        "endpoint_invocations": server.invocations,
        "capture_records": len(captures),
        "unique_event_ids": int(captures["event_id"].nunique()),
        "capture_files": len(capture.files_written),
        "capture_dir": str(capture_dir),
    }
    summary["captures_match"] = (summary["capture_records"] == summary["unique_event_ids"] == total_invocations
                                 == server.invocations)
    summary["checks_passed"] = summary["all_terminal"] and summary["captures_match"]
    summary["targets_met"] = {name: (summary[name] <= limit if name.endswith("_ms") else summary[name] >= limit)
                              for name, limit in TARGETS.items()}
    return summary


def breakdown(mean_latency_ms: float, handler_seconds: dict[str, float], model_seconds: float,
              executions: int) -> dict[str, float]:
    """Milliseconds per execution: each Lambda (the classify Lambda without the model's time), the endpoint's
    model, and the engine (the rest of the mean end-to-end latency)."""
    per = {f"lambda {name}": 1000 * seconds / executions for name, seconds in handler_seconds.items()}
    model_ms = 1000 * model_seconds / executions
    if "lambda classifyImage" in per:
        per["lambda classifyImage"] = max(0.0, per["lambda classifyImage"] - model_ms)
    per["endpoint model"] = model_ms
    per["engine (moto Step Functions) and the rest"] = max(0.0, mean_latency_ms - sum(per.values()))
    return {name: round(value, 1) for name, value in per.items()}


def load_test_images(data_dir: Path, limit: int | None = None) -> dict[str, bytes]:
    """The staged test images as S3 keys -> PNG bytes."""
    staged = data.stage(data_dir)
    frame = staged.test.iloc[:limit]
    return {f: (staged.root / f).read_bytes() for f in frame["file"]}

