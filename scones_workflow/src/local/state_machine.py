"""The local backend: the real `workflow.asl.json` executed by moto's Step Functions engine.

Inside `LocalWorkflow`, S3 and Step Functions are moto's in-memory services, and every Lambda
invocation the state machine makes is dispatched to this package's handlers in-process (moto's
Lambda backend without Docker, whose `invoke` is routed here). The classify handler calls the
inference server over HTTP with boto3's `sagemaker-runtime` client, as it would call a SageMaker
endpoint in AWS. Nothing here interprets ASL: retries, catches and the execution history are moto's.
"""
from __future__ import annotations

import json
import os
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from unittest import mock

import boto3
import pandas as pd
from moto import mock_aws
from moto.awslambda_simple.models import LambdaSimpleBackend
from moto.stepfunctions.parser.asl.component.state.exec.state_task import lambda_eval_utils

from ..lambdas import classify, confidence_filter, serialize
from ..lambdas.constants import CLASS_NAMES, THRESHOLD

ASL_PATH = Path(__file__).resolve().parents[2] / "workflow.asl.json"
ACCOUNT = "123456789012"
# The ASL's substitution variables and the functions they name (the names the template gives them).
FUNCTIONS = {
    "SerializeImageDataFunctionArn": ("serializeImageData", serialize.lambda_handler),
    "ClassifyImageFunctionArn": ("classifyImage", classify.lambda_handler),
    "ConfidenceFilterFunctionArn": ("confidenceFilter", confidence_filter.lambda_handler),
}
MOTO_CONFIG = {"stepfunctions": {"execute_state_machine": True}, "lambda": {"use_docker": False}}


def render_definition(arns: dict[str, str], asl_path: Path = ASL_PATH) -> str:
    """The ASL with its `${...}` substitution variables replaced (what CloudFormation's
    DefinitionSubstitutions does); an unreplaced variable is an error naming it."""
    text = asl_path.read_text()
    for variable, arn in arns.items():
        text = text.replace("${" + variable + "}", arn)
    if "${" in text:
        start = text.index("${")
        raise ValueError(f"{asl_path}: no value for substitution variable {text[start:text.index('}', start) + 1]}")
    json.loads(text)
    return text


@dataclass
class ExecutionResult:
    s3_key: str
    status: str
    predicted_label: str | None
    confidence: float | None
    error: str | None
    cause: str | None
    latency_ms: float
    execution_arn: str

    def row(self) -> dict:
        return asdict(self)


def _cached_client_for() -> Callable:
    """moto's engine builds a new boto3 client for every Lambda task (about 30 ms of CPU each, most
    of an execution's cost here); boto3 clients are thread-safe, so one per region and service does."""
    clients: dict[tuple, object] = {}
    lock = threading.Lock()
    build = lambda_eval_utils.boto_client_for

    def client_for(region: str, service: str, state_credentials: object = None) -> object:
        with lock:
            if (region, service) not in clients:
                clients[(region, service)] = build(region=region, service=service, state_credentials=state_credentials)
            return clients[(region, service)]

    return client_for


class _Context:
    """The parts of a Lambda context object the handlers could use."""

    def __init__(self, name: str) -> None:
        self.function_name = name
        self.aws_request_id = str(uuid.uuid4())


class LocalWorkflow:
    """S3 + Step Functions (moto) + the three handlers, wired to an endpoint URL.

    `with LocalWorkflow(server.url) as wf: wf.put_image("test/x.png", data); wf.run("test/x.png")`
    """

    def __init__(self, endpoint_url: str, *, endpoint_name: str = "scones-endpoint", threshold: float = THRESHOLD,
                 bucket: str = "scones-data", region: str = "us-east-1",
                 class_names: tuple[str, ...] = CLASS_NAMES, endpoint_timeout: float = 10.0) -> None:
        self.bucket, self.region, self.class_names = bucket, region, class_names
        # The filter's CloudWatch metric lines (EMF), which in AWS go to stdout -> CloudWatch Logs.
        self._metrics_dir = tempfile.TemporaryDirectory(prefix="scones-metrics-")
        self.metrics_path = Path(self._metrics_dir.name) / "metrics.jsonl"
        self.environment = {"ENDPOINT_NAME": endpoint_name, "ENDPOINT_URL": endpoint_url,
                            "THRESHOLD_CONFIDENCE": str(threshold), "ENDPOINT_TIMEOUT": str(endpoint_timeout),
                            "AWS_DEFAULT_REGION": region, "METRICS_FILE": str(self.metrics_path)}
        self.arns = {var: f"arn:aws:lambda:{region}:{ACCOUNT}:function:{name}" for var, (name, _) in FUNCTIONS.items()}
        self._handlers: dict[str, Callable] = {name: handler for name, handler in FUNCTIONS.values()}
        self.invocations: dict[str, int] = {name: 0 for name in self._handlers}
        self.handler_seconds: dict[str, float] = {name: 0.0 for name in self._handlers}  # summed per Lambda
        self._count_lock = threading.Lock()
        self._patches: list = []

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> "LocalWorkflow":
        mocks = [mock_aws(config=MOTO_CONFIG), mock.patch.dict(os.environ, self.environment),
                 mock.patch.object(LambdaSimpleBackend, "invoke", self._make_invoke()),
                 mock.patch.object(lambda_eval_utils, "boto_client_for", _cached_client_for())]
        for m in mocks:
            m.start()
            self._patches.append(m)
        self.s3 = boto3.client("s3", region_name=self.region)
        self.sfn = boto3.client("stepfunctions", region_name=self.region)
        self.s3.create_bucket(Bucket=self.bucket)
        self.state_machine_arn = self.sfn.create_state_machine(
            name="scones-workflow", definition=render_definition(self.arns),
            roleArn=f"arn:aws:iam::{ACCOUNT}:role/scones-workflow-states")["stateMachineArn"]
        return self

    def __exit__(self, *exc: object) -> None:
        while self._patches:
            self._patches.pop().stop()

    def _make_invoke(self) -> Callable:
        """moto's Lambda `invoke`, replaced: run the handler, report exceptions as Lambda does."""
        workflow = self

        def invoke(backend, function_name, qualifier, body, headers, response_headers):  # noqa: ARG001
            name = function_name.split(":")[6] if function_name.startswith("arn:") else function_name
            handler = workflow._handlers.get(name)
            with workflow._count_lock:
                workflow.invocations[name] = workflow.invocations.get(name, 0) + 1
            if handler is None:
                response_headers["x-amz-function-error"] = "Unhandled"
                return json.dumps({"errorType": "ResourceNotFoundException",
                                   "errorMessage": f"Function not found: {function_name}"}).encode()
            started = time.perf_counter()
            try:
                return json.dumps(handler(json.loads(body or "{}"), _Context(name))).encode()
            except Exception as err:  # what the Lambda runtime returns for an unhandled exception
                response_headers["x-amz-function-error"] = "Unhandled"
                return json.dumps({"errorType": type(err).__name__, "errorMessage": str(err)}).encode()
            finally:
                with workflow._count_lock:
                    workflow.handler_seconds[name] = workflow.handler_seconds.get(name, 0.0) + \
                        time.perf_counter() - started

        return invoke

    # ------------------------------------------------------------------ data
    def put_image(self, key: str, data: bytes) -> str:
        self.s3.put_object(Bucket=self.bucket, Key=key, Body=data)
        return key

    # ------------------------------------------------------------------ executions
    def start(self, key: str, bucket: str | None = None) -> str:
        event = {"image_data": "", "s3_bucket": bucket or self.bucket, "s3_key": key}
        return self.sfn.start_execution(stateMachineArn=self.state_machine_arn, name=uuid.uuid4().hex,
                                        input=json.dumps(event))["executionArn"]

    def wait(self, execution_arn: str, timeout: float = 60.0) -> dict:
        """The execution's description once it is no longer RUNNING; TimeoutError after `timeout` s.

        Polls at 20 ms, backing off to 100 ms: each describe costs CPU the executions themselves need
        (measured here: about 15 % more executions per second from 8 clients than polling every
        10-50 ms, for about 15 ms more latency with one client)."""
        deadline = time.monotonic() + timeout
        poll = 0.02
        while True:
            description = self.sfn.describe_execution(executionArn=execution_arn)
            if description["status"] != "RUNNING":
                return description
            if time.monotonic() > deadline:
                raise TimeoutError(f"execution {execution_arn} still RUNNING after {timeout} s")
            time.sleep(poll)
            poll = min(poll * 1.5, 0.1)

    def run(self, key: str, bucket: str | None = None, timeout: float = 60.0) -> ExecutionResult:
        started = time.perf_counter()
        arn = self.start(key, bucket)
        description = self.wait(arn, timeout)
        latency = (time.perf_counter() - started) * 1000
        label = confidence = None
        if description["status"] == "SUCCEEDED":
            inferences = json.loads(description["output"])["body"]["inferences"]
            best = max(range(len(inferences)), key=inferences.__getitem__)
            label, confidence = self.class_names[best], float(inferences[best])
        return ExecutionResult(key, description["status"], label, confidence, description.get("error"),
                               description.get("cause"), round(latency, 1), arn)

    def run_many(self, keys: Iterable[str], concurrency: int = 1, timeout: float = 60.0) -> pd.DataFrame:
        """Run one execution per key, `concurrency` at a time; one row per execution, in key order."""
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            results = list(pool.map(lambda k: self.run(k, timeout=timeout), keys))
        return pd.DataFrame([r.row() for r in results])

    def history(self, execution_arn: str) -> list[dict]:
        return self.sfn.get_execution_history(executionArn=execution_arn)["events"]

    def metrics(self) -> list[dict]:
        """The confidence filter's metric records so far (CloudWatch embedded metric format, one per inference)."""
        if not self.metrics_path.exists():
            return []
        return [json.loads(line) for line in self.metrics_path.read_text().splitlines() if line.strip()]
