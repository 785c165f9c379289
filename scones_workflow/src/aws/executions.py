"""Test executions of the deployed state machine, reported with the local backend's columns, and the
notebook's AWS backend end to end (`deploy_and_run`)."""
from __future__ import annotations

import json
import random
import time
from typing import Any

from ..lambdas.constants import CLASS_NAMES
from .config import DeployConfig
from .deployment import deploy


def generate_test_case(s3: Any, bucket: str, prefix: str = "test/", rng: random.Random | None = None) -> dict:
    """The seed's test-case generator: a random image from the bucket, as the workflow's input event."""
    paginator = s3.get_paginator("list_objects_v2")
    keys = [o["Key"] for page in paginator.paginate(Bucket=bucket, Prefix=prefix) for o in page.get("Contents", [])
            if o["Key"].lower().endswith((".png", ".jpg", ".jpeg"))]
    if not keys:
        raise FileNotFoundError(f"no images under s3://{bucket}/{prefix}")
    return {"image_data": "", "s3_bucket": bucket, "s3_key": (rng or random).choice(keys)}


EXECUTION_COLUMNS = ["s3_key", "status", "predicted_label", "confidence", "error", "cause", "latency_ms",
                     "execution_arn", "variant"]


def execution_row(event: dict, arn: str, description: dict, latency_ms: float) -> dict:
    """One execution as the local backend reports it (workflow.ExecutionResult's columns), plus the variant."""
    label = confidence = variant = None
    if description["status"] == "SUCCEEDED":
        body = json.loads(description["output"])["body"]
        inferences = body["inferences"]
        best = max(range(len(inferences)), key=inferences.__getitem__)
        label = CLASS_NAMES[best] if best < len(CLASS_NAMES) else str(best)
        confidence, variant = float(inferences[best]), body.get("variant")
    return {"s3_key": event["s3_key"], "status": description["status"], "predicted_label": label,
            "confidence": confidence, "error": description.get("error"), "cause": description.get("cause"),
            "latency_ms": round(latency_ms, 1), "execution_arn": arn, "variant": variant}


def run_executions(sfn: Any, state_machine_arn: str, events: list[dict], *, timeout: float = 300,
                   poll_seconds: float = 1.0) -> list[dict]:
    """Start one execution per event, wait for all; one row per execution (`execution_row`). The latency
    comes from the executions' own start and stop dates, not from this polling loop."""
    arns = [sfn.start_execution(stateMachineArn=state_machine_arn, input=json.dumps(e))["executionArn"] for e in events]
    deadline = time.monotonic() + timeout
    results: dict[str, dict] = {}
    while len(results) < len(arns):
        for arn in arns:
            if arn not in results:
                description = sfn.describe_execution(executionArn=arn)
                if description["status"] != "RUNNING":
                    results[arn] = description
        if len(results) < len(arns):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(arns) - len(results)} execution(s) still RUNNING after {timeout} s")
            time.sleep(poll_seconds)

    def latency(d: dict) -> float:
        start, stop = d.get("startDate"), d.get("stopDate")
        return (stop - start).total_seconds() * 1000 if start and stop else float("nan")

    return [execution_row(e, a, results[a], latency(results[a])) for e, a in zip(events, arns)]


def deploy_and_run(staged: Any, config: DeployConfig, *, executions: int = 20, region: str | None = None,
                   session: Any = None) -> tuple[Any, str]:
    """The notebook's AWS backend end to end: `deploy` with `config`, then `executions` test executions on
    the stack's data bucket (a boto3 Session in `region` unless `session` is given).

    Returns (one row per execution, the capture S3 prefix). Tear down with `teardown` afterwards."""
    import boto3
    import pandas as pd

    from .. import data

    session = session or boto3.Session(region_name=region)
    deployment = deploy(session, config, staged)
    outputs = deployment.outputs
    data.upload(staged, f"s3://{outputs['DataBucketName']}")  # where the serialize function may read
    s3 = session.client("s3")
    events = [generate_test_case(s3, outputs["DataBucketName"]) for _ in range(executions)]
    rows = run_executions(session.client("stepfunctions"), outputs["StateMachineArn"], events)
    return pd.DataFrame(rows, columns=EXECUTION_COLUMNS), deployment.capture_s3
