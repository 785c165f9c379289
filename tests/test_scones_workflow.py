"""The real workflow.asl.json run by moto's Step Functions engine with the in-process handlers."""
from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from scones_workflow.src.lambdas.constants import THRESHOLD
from scones_workflow.src.local.state_machine import ASL_PATH, LocalWorkflow, render_definition
from scones_workflow.src.serving import loadtest
from scones_workflow.src.serving.server import InferenceServer
from tests.scones_fixtures import fake_predict, png_bytes


@pytest.fixture(scope="module")
def stack():
    with InferenceServer(fake_predict, port=0) as server, LocalWorkflow(server.url) as workflow:
        workflow.put_image("test/dark.png", png_bytes(value=0))
        workflow.put_image("test/bright.png", png_bytes(value=200))
        yield workflow


def test_execution_succeeds_with_the_label_and_full_history(stack):
    result = stack.run("test/dark.png")
    assert result.status == "SUCCEEDED" and result.predicted_label == "bicycle" and result.confidence >= 0.94
    events = [e["type"] for e in stack.history(result.execution_arn)]
    assert events[0] == "ExecutionStarted" and events[-1] == "ExecutionSucceeded"
    assert events.count("TaskSucceeded") == 3


def test_low_confidence_fails_with_the_seeds_error_name(stack):
    result = stack.run("test/bright.png")
    assert result.status == "FAILED" and result.error == "THRESHOLD_CONFIDENCE_NOT_MET"
    assert "below 0.94" in json.loads(result.cause)["errorMessage"]


def test_the_filter_emits_one_low_confidence_metric_per_inference(stack):
    """The embedded-metric-format records the alarm in template.yaml counts (in AWS: the filter's log)."""
    before = len(stack.metrics())
    stack.run("test/dark.png")
    stack.run("test/bright.png")
    stack.run("test/missing.png")  # fails before classification: no inference, no metric
    records = stack.metrics()[before:]
    assert [(r["LowConfidence"], r["Inferences"], r["s3_key"]) for r in records] == [
        (0, 1, "test/dark.png"), (1, 1, "test/bright.png")]
    assert all(r["EndpointName"] == "scones-endpoint" and r["threshold"] == THRESHOLD for r in records)


@pytest.mark.parametrize("key,body,error,fragment", [
    ("test/missing.png", None, "ImageNotFound", "does not exist"),
    ("test/empty.png", b"", "EmptyImage", "0 bytes"),
    ("test/text.png", b"hello, world", "NotAnImage", "not a PNG or JPEG"),
    ("test/truncated.png", png_bytes(size=(64, 64))[:90], "InvalidImage", "cannot decode"),
    ("test/huge.png", b"\x89PNG\r\n\x1a\n" + bytes(200_000), "ImageTooLarge", "the limit is"),
])
def test_bad_inputs_fail_with_a_named_error_and_a_useful_cause(stack, key, body, error, fragment):
    if body is not None:
        stack.put_image(key, body)
    result = stack.run(key)
    assert result.status == "FAILED" and result.error == error
    assert fragment in result.cause and key in result.cause


def test_an_event_without_s3_key_fails_naming_the_field(stack):
    arn = stack.sfn.start_execution(stateMachineArn=stack.state_machine_arn, name="no-key",
                                    input=json.dumps({"image_data": "", "s3_bucket": stack.bucket}))["executionArn"]
    description = stack.wait(arn)
    assert description["status"] == "FAILED" and description["error"] == "InvalidEvent"
    assert "'s3_key'" in description["cause"]


def test_jpeg_and_rgba_images_are_classified(stack):
    stack.put_image("test/photo.jpg", png_bytes(fmt="JPEG", value=0))
    stack.put_image("test/rgba.png", png_bytes("RGBA", value=0))
    assert {stack.run(k).status for k in ("test/photo.jpg", "test/rgba.png")} == {"SUCCEEDED"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_endpoint_down_is_retried_then_fails_cleanly():
    with LocalWorkflow(f"http://127.0.0.1:{_free_port()}") as workflow:
        workflow.put_image("a.png", png_bytes())
        started = time.monotonic()
        result = workflow.run("a.png", timeout=30)
        events = workflow.history(result.execution_arn)
    assert result.status == "FAILED" and result.error == "EndpointUnavailable"
    assert sum(e["type"] == "TaskFailed" for e in events) == 3  # first try + 2 retries
    assert workflow.invocations["classifyImage"] == 3 and time.monotonic() - started < 20


class _Stuck(BaseHTTPRequestHandler):
    def do_POST(self):
        time.sleep(3)

    def log_message(self, *args):
        pass


def test_a_stuck_endpoint_times_out_instead_of_hanging():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Stuck)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with LocalWorkflow(f"http://127.0.0.1:{server.server_address[1]}", endpoint_timeout=0.5) as workflow:
            workflow.put_image("a.png", png_bytes())
            result = workflow.run("a.png", timeout=30)
    finally:
        server.shutdown()
    assert result.status == "FAILED" and result.error == "EndpointUnavailable" and "timeout" in result.cause.lower()


def test_definition_substitution_names_a_missing_variable():
    assert "arn:aws:lambda" in render_definition({"SerializeImageDataFunctionArn": "arn:aws:lambda:x",
                                                  "ClassifyImageFunctionArn": "arn:aws:lambda:y",
                                                  "ConfidenceFilterFunctionArn": "arn:aws:lambda:z"})
    with pytest.raises(ValueError, match=r"\$\{ClassifyImageFunctionArn\}"):
        render_definition({"SerializeImageDataFunctionArn": "a"})


def test_asl_retries_lambda_service_errors_and_catches_into_a_fail_state():
    asl = json.loads(ASL_PATH.read_text())
    tasks = [s for s in asl["States"].values() if s["Type"] == "Task"]
    assert len(tasks) == 3
    for state in tasks:
        assert state["Resource"] == "arn:aws:states:::lambda:invoke" and state["OutputPath"] == "$.Payload"
        assert "Lambda.ServiceException" in state["Retry"][0]["ErrorEquals"] and state["Retry"][0]["BackoffRate"] > 1
        assert asl["States"][state["Catch"][0]["Next"]]["Type"] == "Fail"


def test_load_run_ends_every_execution_and_captures_every_invocation(tmp_path):
    images = {f"test/img_{i}.png": png_bytes(value=i * 20) for i in range(6)}
    summary = loadtest.run_load(fake_predict, images, executions=24, concurrency=4, endpoint_requests=16,
                            capture_dir=tmp_path)
    assert summary["all_terminal"] and summary["captures_match"] and summary["checks_passed"]
    # every execution that reached the endpoint, plus the direct endpoint calls, left exactly one record
    assert summary["succeeded"] + summary["failed"] == 24
    assert summary["capture_records"] == summary["endpoint_invocations"] == 24 + 16
    assert summary["p99_ms"] >= summary["p50_ms"] > 0
    breakdown = summary["breakdown_ms"]
    assert set(breakdown) == {"lambda serializeImageData", "lambda classifyImage", "lambda confidenceFilter",
                              "endpoint model", "engine (moto Step Functions) and the rest"}
    assert all(v >= 0 for v in breakdown.values()) and breakdown["endpoint model"] > 0


def test_the_metric_names_the_variant_that_answered():
    """Two weighted variants: classify passes the endpoint's InvokedProductionVariant on, so the alarm's metric
    can be split by variant (the EndpointName x Variant dimension)."""
    from scones_workflow.src.lambdas.constants import VARIANTS
    from scones_workflow.src.serving.server import Variant

    variants = {name: Variant(fake_predict, 0.5) for name in VARIANTS}  # even split: both answer within 30 calls
    with InferenceServer(variants=variants, port=0) as server, LocalWorkflow(server.url) as workflow:
        workflow.put_image("test/dark.png", png_bytes(value=0))
        for _ in range(30):
            workflow.run("test/dark.png")
        seen = {record["Variant"] for record in workflow.metrics()}
    assert seen == set(VARIANTS)  # one variant missing from 30 even draws: probability 2 * 0.5**30
