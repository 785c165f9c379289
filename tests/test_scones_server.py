"""The SageMaker-contract server and data capture: contract, bad inputs, SageMaker's record format, concurrency."""
from __future__ import annotations

import io
import json
import socket
import threading
from concurrent.futures import ThreadPoolExecutor

import boto3
import pytest
import requests
from moto import mock_aws
from PIL import Image

from scones_workflow.src.monitoring import monitor
from scones_workflow.src.serving import capture
from scones_workflow.src.serving.capture import CaptureWriter
from scones_workflow.src.serving.server import InferenceServer
from tests.scones_fixtures import fake_predict, png_bytes


def huge_png() -> bytes:
    """64 megapixels (over load_image's 50 M limit) in a few kilobytes: a blank bilevel PNG."""
    buffer = io.BytesIO()
    Image.new("1", (8000, 8000)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture()
def served(tmp_path):
    writer = CaptureWriter(str(tmp_path / "captures"), "scones-endpoint", flush_seconds=0.2)
    with InferenceServer(fake_predict, port=0, capture=writer) as server:
        yield server, tmp_path / "captures"


def runtime_client(url):
    return boto3.client("sagemaker-runtime", endpoint_url=url, region_name="us-east-1",
                        aws_access_key_id="x", aws_secret_access_key="x")


def test_ping_and_invocations_follow_the_container_contract(served):
    server, _ = served
    assert requests.get(f"{server.url}/ping", timeout=5).status_code == 200
    response = requests.post(f"{server.url}/invocations", data=png_bytes(), headers={"Content-Type": "image/png"},
                             timeout=5)
    probabilities = response.json()
    assert response.status_code == 200 and len(probabilities) == 2 and abs(sum(probabilities) - 1) < 1e-4


@pytest.mark.parametrize("mode,fmt", [("RGB", "PNG"), ("RGBA", "PNG"), ("L", "PNG"), ("P", "PNG"), ("RGB", "JPEG")])
def test_valid_images_of_every_mode_are_classified_through_boto3(served, mode, fmt):
    server, _ = served
    content_type = "image/jpeg" if fmt == "JPEG" else "image/png"
    response = runtime_client(server.url).invoke_endpoint(
        EndpointName="scones-endpoint", ContentType=content_type, Body=png_bytes(mode, fmt=fmt))
    assert len(json.loads(response["Body"].read())) == 2


@pytest.mark.parametrize("body,content_type,status,message", [
    (b"not an image", "image/png", 400, "not an image"),
    (png_bytes()[:60], "image/png", 400, "cannot decode"),
    (b"", "image/png", 400, "empty request body"),
    (png_bytes(), "text/csv", 415, "unsupported content type"),
    ("huge", "image/png", 400, "too large"),
])
def test_bad_inputs_get_a_named_error_and_the_server_keeps_serving(served, body, content_type, status, message):
    server, _ = served
    if body == "huge":
        body = huge_png()
    response = requests.post(f"{server.url}/invocations", data=body, headers={"Content-Type": content_type}, timeout=10)
    assert response.status_code == status and message in response.json()["error"]
    # the runtime path reports the same failure as SageMaker does: a ModelError with the container's message
    client = runtime_client(server.url)
    with pytest.raises(client.exceptions.ModelError) as err:
        client.invoke_endpoint(EndpointName="scones-endpoint", ContentType=content_type, Body=body or b" ")
    assert err.value.response["OriginalStatusCode"] in (status, 400)
    assert requests.get(f"{server.url}/ping", timeout=5).status_code == 200


def test_a_crashing_model_costs_one_request_not_the_server(tmp_path):
    calls = []

    def flaky(data):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("model exploded")
        return fake_predict(data)

    with InferenceServer(flaky, port=0) as server:
        first = requests.post(f"{server.url}/invocations", data=png_bytes(), headers={"Content-Type": "image/png"})
        second = requests.post(f"{server.url}/invocations", data=png_bytes(), headers={"Content-Type": "image/png"})
    assert first.status_code == 500 and "model exploded" in first.json()["error"]
    assert second.status_code == 200


class _RecordingServer(InferenceServer):
    """Keeps the server side of each accepted connection, to read its socket options."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.accepted = []

    def get_request(self):
        connection, address = super().get_request()
        self.accepted.append(connection)
        return connection, address


def test_answers_are_not_held_back_by_nagles_algorithm():
    # With Nagle on, the body (second write) waited for the client's delayed ACK: >= 40 ms per keep-alive request.
    with _RecordingServer(fake_predict, port=0) as server:
        with requests.Session() as session:
            for _ in range(2):  # the second request reuses the connection
                response = session.post(f"{server.url}/invocations", data=png_bytes(),
                                        headers={"Content-Type": "image/png"}, timeout=5)
                assert response.status_code == 200
            assert len(server.accepted) == 1  # still open: read its options before the client closes it
            assert server.accepted[0].getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0


def test_capture_records_are_sagemakers_format_and_layout(served):
    server, folder = served
    runtime_client(server.url).invoke_endpoint(EndpointName="scones-endpoint", ContentType="image/png",
                                               Body=png_bytes(), InferenceId="bike_s_000001.png")
    server.capture.flush()
    files = list(folder.rglob("*.jsonl"))
    assert len(files) == 1
    parts = files[0].relative_to(folder).parts
    assert parts[:2] == ("scones-endpoint", "AllTraffic") and [len(p) for p in parts[2:6]] == [4, 2, 2, 2]
    record = json.loads(files[0].read_text())
    assert set(record) == {"captureData", "eventMetadata", "eventVersion"} and record["eventVersion"] == "0"
    assert record["captureData"]["endpointInput"]["mode"] == "INPUT"
    assert record["captureData"]["endpointInput"]["encoding"] == "BASE64"
    assert record["captureData"]["endpointInput"]["observedContentType"] == "image/png"
    assert record["captureData"]["endpointOutput"] == {
        "observedContentType": "application/json", "mode": "OUTPUT", "encoding": "JSON",
        "data": record["captureData"]["endpointOutput"]["data"]}
    assert record["eventMetadata"]["inferenceId"] == "bike_s_000001.png"
    assert record["eventMetadata"]["inferenceTime"].endswith("Z")


def test_eight_concurrent_clients_lose_and_duplicate_no_capture(tmp_path):
    writer = CaptureWriter(str(tmp_path), "ep", max_records=7, flush_seconds=0.05)
    with InferenceServer(fake_predict, port=0, capture=writer) as server:
        client = runtime_client(server.url)
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda i: client.invoke_endpoint(EndpointName="ep", ContentType="image/png",
                                                           Body=png_bytes(value=i % 200)), range(120)))
    captures = monitor.read_captures(tmp_path)  # after stop(), which flushes the rest
    assert server.invocations == 120 and len(captures) == 120 and captures["event_id"].nunique() == 120
    assert len(writer.files_written) > 1


def test_capture_writer_keeps_records_when_a_write_fails(tmp_path, monkeypatch):
    writer = CaptureWriter(str(tmp_path), "ep", flush_seconds=60)
    writer.record(png_bytes(), "image/png", "[0.9, 0.1]")
    real_write = capture.s3io.write_jsonl
    monkeypatch.setattr(capture.s3io, "write_jsonl", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
    assert writer.flush() == 0 and writer.records_written == 0  # nothing written, the record kept
    monkeypatch.setattr(capture.s3io, "write_jsonl", real_write)
    writer.close()
    assert len(monitor.read_captures(tmp_path)) == 1


def test_capture_round_trip_through_s3(tmp_path):
    with mock_aws():
        boto3.client("s3", region_name="us-east-1").create_bucket(Bucket="captures")
        writer = CaptureWriter("s3://captures/data_capture", "ep", flush_seconds=60)
        for value in (10, 200):
            writer.record(png_bytes(value=value), "image/png", json.dumps(fake_predict(png_bytes(value=value))))
        writer.close()
        frame = monitor.read_captures("s3://captures/data_capture")
    assert len(frame) == 2 and frame["capture_file"].str.startswith("s3://captures/data_capture/ep/AllTraffic/").all()
    assert set(frame["predicted_label"]) == {"bicycle"} and frame["confidence"].between(0.5, 1).all()


def test_reader_takes_records_a_real_endpoint_writes(tmp_path):
    """Real endpoints encode outputs as JSON, CSV or BASE64 depending on the capture config."""
    real = [
        {"captureData": {"endpointInput": {"observedContentType": "image/png", "mode": "INPUT", "data": "iVBORw0K",
                                           "encoding": "BASE64"},
                         "endpointOutput": {"observedContentType": "application/json", "mode": "OUTPUT",
                                            "data": "[0.9917, 0.0083]", "encoding": "JSON"}},
         "eventMetadata": {"eventId": "8f45e35c-fa44-40d2-8ed3-1bcab3a596f3", "inferenceTime": "2022-01-10T19:54:30Z"},
         "eventVersion": "0"},
        {"captureData": {"endpointOutput": {"observedContentType": "text/csv; charset=utf-8", "mode": "OUTPUT",
                                            "data": "0.2,0.8", "encoding": "CSV"}},
         "eventMetadata": {"eventId": "b", "inferenceTime": "2022-01-10T19:55:30Z", "inferenceId": "x.png"},
         "eventVersion": "0"},
        {"captureData": {"endpointOutput": {"observedContentType": "application/json", "mode": "OUTPUT",
                                            "data": "WzAuMywgMC43XQ==", "encoding": "BASE64"}},
         "eventMetadata": {"eventId": "c", "inferenceTime": "2022-01-10T19:56:30Z"}, "eventVersion": "0"},
    ]
    path = tmp_path / "ep" / "AllTraffic" / "2022" / "01" / "10" / "19" / "54-30-000-abc.jsonl"
    path.parent.mkdir(parents=True)
    path.write_text("\n".join(json.dumps(r) for r in real) + "\n")
    frame = monitor.read_captures(tmp_path)
    assert frame["predicted_label"].tolist() == ["bicycle", "motorcycle", "motorcycle"]
    assert frame["confidence"].round(4).tolist() == [0.9917, 0.8, 0.7]
    assert str(frame["inference_time"].dt.tz) == "UTC" and frame["inference_id"].tolist()[1] == "x.png"


def test_reader_names_the_file_of_a_bad_record(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"eventVersion": "0"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl, record 1: not a SageMaker capture record"):
        monitor.read_captures(tmp_path)


def test_server_stop_flushes_pending_captures(tmp_path):
    writer = CaptureWriter(str(tmp_path), "ep", flush_seconds=3600, max_records=10_000)
    server = InferenceServer(fake_predict, port=0, capture=writer).start()
    threads = [threading.Thread(target=requests.post, args=(f"{server.url}/invocations",),
                                kwargs={"data": png_bytes(), "headers": {"Content-Type": "image/png"}})
               for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert writer.records_written == 0  # all five still buffered
    server.stop()
    assert len(monitor.read_captures(tmp_path)) == 5


def test_unknown_paths_and_oversized_payloads_are_refused(served, monkeypatch):
    server, _ = served
    session = requests.Session()  # keep-alive: a refused request must not corrupt the next one
    assert session.post(f"{server.url}/predict", data=png_bytes(), timeout=5).status_code == 404
    monkeypatch.setattr("scones_workflow.src.serving.server.MAX_BODY_BYTES", 100)
    response = session.post(f"{server.url}/invocations", data=png_bytes(), headers={"Content-Type": "image/png"},
                            timeout=5)
    assert response.status_code == 413 and "exceeds the 100-byte limit" in response.json()["error"]
    assert session.get(f"{server.url}/ping", timeout=5).status_code == 200
    assert session.get(f"{server.url}/metrics", timeout=5).status_code == 404


# ----------------------------------------------------------------------------- production variants

def _constant(p_bicycle):
    def predict(data):
        fake_predict(data)  # decodes (and refuses bad images) like the real predictor
        return [p_bicycle, 1 - p_bicycle]
    return predict


@pytest.fixture()
def two_variants(tmp_path):
    from scones_workflow.src.serving.server import Variant

    writer = CaptureWriter(str(tmp_path / "captures"), "scones-endpoint", flush_seconds=60)
    variants = {"Primary": Variant(_constant(0.99), 0.9), "Challenger": Variant(_constant(0.6), 0.1)}
    with InferenceServer(variants=variants, port=0, capture=writer, seed=1) as server:
        yield server, tmp_path / "captures"


def test_requests_are_routed_by_weight_and_name_their_variant(two_variants):
    server, _ = two_variants
    client = runtime_client(server.url)
    invoked = [client.invoke_endpoint(EndpointName="scones-endpoint", ContentType="image/png",
                                      Body=png_bytes())["InvokedProductionVariant"] for _ in range(300)]
    share = invoked.count("Challenger") / len(invoked)
    assert set(invoked) == {"Primary", "Challenger"} and 0.05 < share < 0.17  # 10 % +- 3.5 standard errors
    assert server.invocations_by_variant == {"Primary": invoked.count("Primary"), "Challenger": invoked.count("Challenger")}


def test_target_variant_is_honoured_and_an_unknown_one_is_refused(two_variants):
    server, _ = two_variants
    client = runtime_client(server.url)
    for _ in range(5):
        response = client.invoke_endpoint(EndpointName="scones-endpoint", ContentType="image/png", Body=png_bytes(),
                                          TargetVariant="Challenger")
        assert response["InvokedProductionVariant"] == "Challenger"
        assert json.loads(response["Body"].read())[0] == pytest.approx(0.6)
    with pytest.raises(client.exceptions.ClientError, match="ValidationError.*'Nope' does not exist"):
        client.invoke_endpoint(EndpointName="scones-endpoint", ContentType="image/png", Body=png_bytes(),
                               TargetVariant="Nope")
    direct = requests.post(f"{server.url}/invocations", data=png_bytes(), timeout=5,
                           headers={"Content-Type": "image/png", "X-Amzn-SageMaker-Target-Variant": "Primary"})
    assert direct.status_code == 200 and direct.headers["X-Amzn-Invoked-Production-Variant"] == "Primary"


def test_each_variant_captures_under_its_own_path(two_variants):
    server, folder = two_variants
    client = runtime_client(server.url)
    for variant in ("Primary", "Challenger", "Challenger"):
        client.invoke_endpoint(EndpointName="scones-endpoint", ContentType="image/png", Body=png_bytes(),
                               TargetVariant=variant)
    server.capture.flush()
    prefixes = sorted({f.relative_to(folder).parts[:2] for f in folder.rglob("*.jsonl")})
    assert prefixes == [("scones-endpoint", "Challenger"), ("scones-endpoint", "Primary")]
    frame = monitor.read_captures(folder)
    assert frame["variant"].value_counts().to_dict() == {"Challenger": 2, "Primary": 1}
    assert set(frame["endpoint"]) == {"scones-endpoint"}


def test_variant_weights_are_checked():
    from scones_workflow.src.serving.server import Variant

    with pytest.raises(ValueError, match="weights must be >= 0"):
        InferenceServer(variants={"A": Variant(fake_predict, 0.0)}, port=0)
    with pytest.raises(ValueError, match="either `predict`"):
        InferenceServer(fake_predict, variants={"A": Variant(fake_predict)}, port=0)
