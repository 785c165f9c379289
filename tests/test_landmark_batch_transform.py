"""The landmark Batch Transform path (issue 24, part 3), offline: the serving container's server answering
Batch Transform's requests on 127.0.0.1 (the contract's paths, one photo per request, bad photos answered
with the tagger's error record under SAGEMAKER_BATCH and refused with a 4xx on an endpoint, while it goes on
serving); the CreateModel and CreateTransformJob requests checked against botocore's
service model and created in moto; the wait on AWS's documented DescribeTransformJob responses (Completed,
Failed with its FailureReason, Stopped a failure though botocore's waiter returns on it); and a whole job
done as SageMaker does it (each object under the prefix POSTed to the server, each answer written to
<output>/<key>.out in moto's S3), bad photos included, joined into lines equal to the local tagger's. A tiny
exported predictor."""
from __future__ import annotations

import datetime as dt
import json
import os
import socket
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import boto3
import pytest
import requests
from botocore.stub import Stubber

from common import aws_pricing
from common import sagemaker_jobs as sj
from landmark_classifier import tag_benchmark
from landmark_classifier.src import batch_transform as bt
from landmark_classifier.src import serve, tag
from tests.landmark_fixtures import tiny_dataset, tiny_export, tiny_predictor  # noqa: F401 (fixtures)
from tests.sagemaker_harness import sagemaker_client, stubbed  # noqa: F401 (a fixture)
from tests.scones_aws_fixtures import IMAGE, REGION, ROLE, aws_session  # noqa: F401 (a fixture)
from tests.service_model_check import Recorder, record_calls, request_problems
from tests.test_landmark_tag import _gps_jpeg, _lines, _photos

REPO = Path(__file__).resolve().parents[1]
SERVED_KEYS = set(tag.TAG_KEYS) | {"known_score"}


@pytest.fixture()
def server(tiny_predictor, monkeypatch):  # noqa: F811
    """The server as on a real-time endpoint (no SAGEMAKER_BATCH)."""
    monkeypatch.delenv("SAGEMAKER_MAX_PAYLOAD_IN_MB", raising=False)
    monkeypatch.delenv("SAGEMAKER_BATCH", raising=False)
    with serve.make_server(tiny_predictor[0], port=0) as running:  # port 0: a free port
        yield running


@pytest.fixture()
def batch_server(tiny_predictor, monkeypatch):  # noqa: F811
    """The server as in a Batch Transform job: SageMaker sets SAGEMAKER_BATCH=true there."""
    monkeypatch.delenv("SAGEMAKER_MAX_PAYLOAD_IN_MB", raising=False)
    monkeypatch.setenv("SAGEMAKER_BATCH", "true")
    with serve.make_server(tiny_predictor[0], port=0) as running:
        yield running


def _post(session: requests.Session, url: str, body: bytes, content_type: str = "application/x-image"):
    return session.post(f"{url}/invocations", data=body, headers={"Content-Type": content_type}, timeout=10)


# ------------------------------------------------------------------------------- the container's server

def test_the_server_answers_batch_transforms_requests(server, tiny_dataset, tiny_predictor, tmp_path):  # noqa: F811
    with requests.Session() as session:  # keep-alive, as Batch Transform's requests come
        ping = session.get(f"{server.url}/ping", timeout=5)
        assert ping.status_code == 200 and ping.content == b""
        parameters = session.get(f"{server.url}/execution-parameters", timeout=5).json()
        assert parameters["BatchStrategy"] == "SINGLE_RECORD" and parameters["MaxPayloadInMB"] == serve.PAYLOAD_MB
        assert 1 <= parameters["MaxConcurrentTransforms"] <= os.cpu_count()
        assert parameters["MaxConcurrentTransforms"] * parameters["MaxPayloadInMB"] <= 100
        photo = _photos(tiny_dataset)[0]
        answer = _post(session, server.url, photo.read_bytes())
        assert answer.status_code == 200 and answer.headers["Content-Type"] == "application/json"
        record = answer.json()
        assert set(record) == SERVED_KEYS and record["gps"] is None and record["source"] == "model"
        # the local tagger's line for the same photo, less its file and version
        tag.run([str(photo)], tag.TagConfig(tmp_path / "local.jsonl", tiny_predictor[0], progress=False))
        local = _lines(tmp_path / "local.jsonl")[0]
        assert {k: record[k] for k in tag.TAG_KEYS} == {k: local[k] for k in tag.TAG_KEYS}
        assert 0 <= record["known_score"] and server.invocations == 1
        located = _gps_jpeg(tmp_path / "paris.jpg", (48.0, 51.0, 29.6), "N", (2.0, 17.0, 40.2), "E")
        for content_type in ("image/jpeg", "application/x-image"):
            record = _post(session, server.url, located.read_bytes(), content_type).json()
            assert record["gps"] == {"latitude": 48.858222, "longitude": 2.2945} and record["source"] == "metadata"


@pytest.mark.parametrize("body,content_type,status,message", [
    (b"these bytes are no photo", "application/x-image", 400, "the request body: not an image"),
    ("truncated", "image/jpeg", 400, "the request body: cannot decode"),
    (b"", "application/x-image", 400, "empty request body"),
    ("photo", "text/csv", 415, "unsupported content type 'text/csv'"),
])
def test_a_bad_request_gets_a_named_4xx_and_the_next_one_is_answered(server, tiny_dataset, body,  # noqa: F811
                                                                     content_type, status, message):
    photo = _photos(tiny_dataset)[0].read_bytes()
    body = {"truncated": photo[:300], "photo": photo}.get(body, body)
    with requests.Session() as session:
        refused = _post(session, server.url, body, content_type)
        assert refused.status_code == status and message in refused.json()["error"]
        assert _post(session, server.url, photo).status_code == 200  # same connection, still serving
    assert requests.get(f"{server.url}/no-such-path", timeout=5).status_code == 404


@pytest.mark.parametrize("body,kind", [
    ("truncated", "truncated or corrupt"),
    (b"Dear diary, these bytes are a text file.\n", "not an image"),
    (b"", "empty"),
])
def test_under_batch_transform_a_bad_photo_is_answered_with_the_taggers_error_record(
        batch_server, tiny_dataset, tiny_predictor, tmp_path, body, kind):  # noqa: F811
    """A 4xx would fail the whole transform job; the tagger's error record (its error line less file and
    version, the same kind and message as the local tagger's for that file) is answered 200 instead."""
    photo = _photos(tiny_dataset)[0].read_bytes()
    body = photo[:300] if body == "truncated" else body
    with requests.Session() as session:
        answer = _post(session, batch_server.url, body)
        assert answer.status_code == 200 and answer.headers["Content-Type"] == "application/json"
        record = answer.json()
        assert set(record) == {"error", "kind"} and record["kind"] == kind
        following = _post(session, batch_server.url, photo)  # same connection, still serving
        assert following.status_code == 200 and set(following.json()) == SERVED_KEYS
        # a wrong content type is the job's misconfiguration, not a bad photo: still an error
        assert _post(session, batch_server.url, photo, "text/csv").status_code == 415
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(body)
    tag.run([str(bad)], tag.TagConfig(tmp_path / "local.jsonl", tiny_predictor[0], progress=False))
    local = _lines(tmp_path / "local.jsonl")[0]
    assert local["kind"] == record["kind"] and list(local) == ["file", *record, "version"]
    if body:  # the decoder's message, about the photo's file instead of the request body
        assert local["error"] == record["error"].replace(serve.REQUEST, str(bad), 1)


def test_the_body_limit_is_the_jobs_max_payload(tiny_predictor, monkeypatch):  # noqa: F811
    monkeypatch.setenv("SAGEMAKER_MAX_PAYLOAD_IN_MB", "1")  # SageMaker sets it from MaxPayloadInMB
    with serve.make_server(tiny_predictor[0], port=0) as running, requests.Session() as session:
        too_big = _post(session, running.url, b"\xff" * (2**20 + 1))
        assert too_big.status_code == 413 and "exceeds the 1,048,576-byte limit" in too_big.json()["error"]
        assert session.get(f"{running.url}/execution-parameters", timeout=5).json()["MaxPayloadInMB"] == 1


def test_which_model_is_served(tmp_path, monkeypatch):
    monkeypatch.delenv(serve.MODEL_ENV, raising=False)
    opt_ml = tmp_path / "opt_ml" / "model" / serve.MODEL_FILE
    assert serve.model_path(opt_ml=opt_ml) == serve.predictor.DEFAULT_MODEL  # nothing unpacked: the committed one
    opt_ml.parent.mkdir(parents=True)
    opt_ml.write_bytes(b"x")
    assert serve.model_path(opt_ml=opt_ml) == opt_ml  # SageMaker's copy of model.tar.gz
    monkeypatch.setenv(serve.MODEL_ENV, "/models/other.onnx")
    assert serve.model_path(opt_ml=opt_ml) == Path("/models/other.onnx")
    assert serve.model_path("given.onnx", opt_ml=opt_ml) == Path("given.onnx")
    assert serve.execution_parameters(96, 20)["MaxConcurrentTransforms"] == 5  # 5 x 20 MB: the 100 MB cap
    assert serve.execution_parameters(4, 20)["MaxConcurrentTransforms"] == 4


def test_the_container_command_serves_on_sagemakers_port(tiny_predictor, tiny_dataset):  # noqa: F811
    """`docker run IMAGE serve` runs `python -m landmark_classifier.src.serve serve` (the Dockerfile's entry)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "SAGEMAKER_BIND_TO_PORT": str(port), serve.MODEL_ENV: str(tiny_predictor[0])}
    process = subprocess.Popen([sys.executable, "-m", "landmark_classifier.src.serve", "serve", "--host", "127.0.0.1"],
                               cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 60
        while True:
            try:
                if requests.get(f"{url}/ping", timeout=1).status_code == 200:
                    break
            except requests.ConnectionError:
                assert process.poll() is None and time.monotonic() < deadline, process.communicate()[1][-2000:]
                time.sleep(0.1)
        answer = requests.post(f"{url}/invocations", data=_photos(tiny_dataset)[0].read_bytes(),
                               headers={"Content-Type": "image/jpeg"}, timeout=10)
        assert answer.status_code == 200 and set(answer.json()) == SERVED_KEYS
    finally:
        process.terminate()  # SIGTERM, as docker stop and SageMaker send
        process.communicate(timeout=30)
    assert process.returncode == 0


# ------------------------------------------------------------------ the requests, in moto

BUCKET = "my-bucket"  # aws_session creates it


def test_create_model_and_transform_job_meet_the_service_model(aws_session, tiny_predictor, tmp_path,  # noqa: F811
                                                                monkeypatch):
    calls = record_calls(monkeypatch)  # boto3's client (CreateModel) and the SDK's (CreateTransformJob)
    how = bt.Launch(image_uri=IMAGE, role_arn=ROLE, model=tiny_predictor[0], work_dir=tmp_path)
    name = bt.launch(f"s3://{BUCKET}/photos/2026", f"s3://{BUCKET}/tags-bt/", how, aws_session, log=lambda _: None)
    model = next(params for operation, params in calls if operation == "CreateModel")
    job = next(params for operation, params in calls if operation == "CreateTransformJob")
    assert request_problems("sagemaker", "CreateModel", model) == []
    assert request_problems("sagemaker", "CreateTransformJob", job) == []
    assert job["ModelName"] == model["ModelName"] == name and job["BatchStrategy"] == "SingleRecord"
    assert job["TransformInput"] == {"DataSource": {"S3DataSource": {"S3DataType": "S3Prefix",
                                                                     "S3Uri": f"s3://{BUCKET}/photos/2026/"}},
                                     "ContentType": "application/x-image", "SplitType": "None",
                                     "CompressionType": "None"}
    assert job["TransformOutput"] == {"S3OutputPath": f"s3://{BUCKET}/tags-bt/", "Accept": "application/json",
                                      "AssembleWith": "None"}
    assert job["TransformResources"] == {"InstanceType": "ml.c5.xlarge", "InstanceCount": 1}
    assert job["MaxPayloadInMB"] == 20 and "MaxConcurrentTransforms" not in job  # the container's answer decides
    assert job["ModelClientConfig"] == {"InvocationsTimeoutInSeconds": 60, "InvocationsMaxRetries": 1}
    assert model["PrimaryContainer"]["Image"] == IMAGE and model["ExecutionRoleArn"] == ROLE
    # the archive SageMaker unpacks into /opt/ml/model holds the predictor where serve.py looks
    archive = tmp_path / "model.tar.gz"
    bucket, key = sj.split_s3(model["PrimaryContainer"]["ModelDataUrl"])
    aws_session.client("s3").download_file(bucket, key, str(archive))
    with tarfile.open(archive) as tar:
        assert tar.getnames() == [serve.MODEL_FILE]
        assert tar.extractfile(serve.MODEL_FILE).read() == tiny_predictor[0].read_bytes()
    described = aws_session.client("sagemaker").describe_transform_job(TransformJobName=name)
    assert described["ModelName"] == name and described["TransformInput"] == job["TransformInput"]


def test_the_checker_refuses_what_moto_accepts_and_the_spec_its_limits(aws_session):  # noqa: F811
    spec = sj.TransformJobSpec("landmark_tag", "m", "s3://b/in/", "s3://b/out/", instance_type="ml.c5.huge")
    recorder = Recorder(sagemaker_client(aws_session))
    sj.start_transform(spec, aws_session)  # moto: created
    found = request_problems("sagemaker", "CreateTransformJob", recorder.params("CreateTransformJob"))
    assert any("TransformJobName: 'landmark_tag' does not match" in p for p in found)
    assert any("InstanceType: 'ml.c5.huge' is not one of" in p for p in found) and len(found) == 2
    with pytest.raises(ValueError, match="at most 100 MB"):
        sj.TransformJobSpec("t", "m", "s3://b/in/", "s3://b/out/", max_payload_mb=20, max_concurrent=8)
    with pytest.raises(ValueError, match="max_payload_mb must be 1-100"):
        sj.TransformJobSpec("t", "m", "s3://b/in/", "s3://b/out/", max_payload_mb=0)
    with pytest.raises(ValueError, match="--model-name"):
        bt.Launch(image_uri=IMAGE)


# --------------------------------------------------- the wait, on AWS's documented responses

NAME = "landmark-tag-20260102-030405-678"


def _described(status: str, **extra) -> dict:
    """A DescribeTransformJob response with the members AWS documents as always present."""
    return {"TransformJobName": NAME, "TransformJobArn": f"arn:aws:sagemaker:{REGION}:123456789012:transform-job/{NAME}",
            "TransformJobStatus": status, "ModelName": NAME, "BatchStrategy": "SingleRecord", "MaxPayloadInMB": 20,
            "TransformInput": {"DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": "s3://b/photos/"}},
                               "ContentType": "application/x-image", "SplitType": "None"},
            "TransformOutput": {"S3OutputPath": "s3://b/tags-bt/", "Accept": "application/json", "AssembleWith": "None"},
            "TransformResources": {"InstanceType": "ml.c5.xlarge", "InstanceCount": 1},
            "CreationTime": dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc), **extra}


def _wait(session, stub, responses) -> tuple[object, list[str]]:
    for response in responses:
        stub.add_response("describe_transform_job", response, {"TransformJobName": NAME})
    lines: list[str] = []
    return sj.wait_transform(NAME, session, poll_seconds=0, log=lines.append), lines


def test_a_completed_transform_job_is_returned(stubbed):
    session, stub = stubbed
    job, lines = _wait(session, stub, [_described("InProgress"), _described("InProgress"),
                                       _described("Completed", TransformStartTime=dt.datetime(2026, 1, 2, 3, 9),
                                                  TransformEndTime=dt.datetime(2026, 1, 2, 4, 1))])
    assert lines == [f"{NAME}: InProgress", f"{NAME}: Completed"] and job.transform_job_status == "Completed"


def test_a_failed_transform_job_raises_with_its_failure_reason(stubbed):
    session, stub = stubbed
    reason = "ClientError: See job logs for more information"
    with pytest.raises(sj.TransformJobFailed, match=f"transform job {NAME} ended Failed: {reason}"):
        _wait(session, stub, [_described("InProgress"), _described("Failed", FailureReason=reason)])


def test_a_stopped_transform_job_is_a_failure_though_the_waiter_counts_it_a_success(stubbed):
    session, stub = stubbed
    stub.add_response("describe_transform_job", _described("Stopped"), {"TransformJobName": NAME})
    sagemaker_client(session).get_waiter("transform_job_completed_or_stopped").wait(
        TransformJobName=NAME, WaiterConfig={"Delay": 0})  # botocore's waiter: no error on Stopped
    with pytest.raises(sj.TransformJobFailed, match="ended Stopped: no FailureReason given"):
        _wait(session, stub, [_described("InProgress"), _described("Stopping"), _described("Stopped")])


# ---------------------------------------------- a whole job, as SageMaker runs it, joined back

def run_transform(s3, input_prefix: str, output_prefix: str, url: str) -> list[str]:
    """SageMaker's part of a SingleRecord, SplitType None job: every object under the prefix POSTed whole to
    the container, each 200 answer uploaded to <output>/<relative key>.out; the keys refused are returned
    (any one of them fails a real job)."""
    bucket, prefix = sj.split_s3(input_prefix)
    refused = []
    with requests.Session() as session:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                body = s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
                answer = _post(session, url, body)
                if answer.status_code != 200:
                    refused.append(obj["Key"])
                    continue
                out_bucket, out_key = sj.split_s3(bt.output_uri(f"s3://{bucket}/{obj['Key']}", input_prefix,
                                                                output_prefix))
                s3.put_object(Bucket=out_bucket, Key=out_key, Body=answer.content)
    return refused


BAD = {"broken.jpg": "not an image", "truncated.jpg": "truncated or corrupt", "empty.jpg": "empty"}


def test_the_jobs_outputs_join_into_the_taggers_lines(aws_session, batch_server, tiny_dataset, tiny_predictor,  # noqa: F811
                                                      tmp_path):
    s3 = aws_session.client("s3")
    photos = _photos(tiny_dataset)
    for i, photo in enumerate(photos):
        s3.put_object(Bucket=BUCKET, Key=f"photos/2026/trip{i % 2}/{i}.jpg", Body=photo.read_bytes())
    located = _gps_jpeg(tmp_path / "paris.jpg", (48.0, 51.0, 29.6), "N", (2.0, 17.0, 40.2), "E")
    s3.put_object(Bucket=BUCKET, Key="photos/2026/paris.jpg", Body=located.read_bytes())
    s3.put_object(Bucket=BUCKET, Key="photos/2026/broken.jpg", Body=b"no photo")
    s3.put_object(Bucket=BUCKET, Key="photos/2026/truncated.jpg", Body=photos[0].read_bytes()[:300])
    s3.put_object(Bucket=BUCKET, Key="photos/2026/empty.jpg", Body=b"")
    s3.put_object(Bucket=BUCKET, Key="photos/2025/old.jpg", Body=photos[0].read_bytes())  # not in the prefix
    source, output = f"s3://{BUCKET}/photos/2026/", f"s3://{BUCKET}/tags-bt/"
    assert run_transform(s3, source, output, batch_server.url) == []  # no error answer: the job completes
    assert s3.head_object(Bucket=BUCKET, Key="tags-bt/trip1/1.jpg.out")["ContentLength"] > 0  # relative keys

    out = tmp_path / "joined.jsonl"
    summary = bt.join(source, output, out)
    joined = {line["file"]: line for line in _lines(out)}
    tag.run([source], tag.TagConfig(tmp_path / "local.jsonl", tiny_predictor[0], progress=False))
    local = {line["file"]: line for line in _lines(tmp_path / "local.jsonl")}
    good = [f"trip{i % 2}/{i}.jpg" for i in range(len(photos))] + ["paris.jpg"]
    assert set(joined) == set(local) == {f"s3://{BUCKET}/photos/2026/{k}" for k in good + list(BAD)}
    for name, kind in BAD.items():  # the local tagger's error line: schema, kind, ETag version
        file = f"s3://{BUCKET}/photos/2026/{name}"
        line = joined.pop(file)
        assert list(line) == list(local[file]) == ["file", "error", "kind", "version"]
        assert line["kind"] == local[file]["kind"] == kind and line["version"] == local[file]["version"]
        assert line["error"].startswith(f"{file}: ")
        if name != "empty.jpg":  # the decoder's own message; an empty body is caught before decoding
            assert line == local[file]
    for file, line in joined.items():  # the same line as the local tagger's: schema, ETag version, tags
        assert line == local[file] and list(line) == list(local[file])
    assert joined[f"s3://{BUCKET}/photos/2026/paris.jpg"]["source"] == "metadata"
    assert summary.photos == len(good) and summary.errors == {kind: 1 for kind in BAD.values()}
    # a rerun resumes: everything already joined is skipped, nothing is appended
    again = bt.join(source, output, out)
    assert again.new == 0 and again.skipped == len(good) + len(BAD) and len(_lines(out)) == len(good) + len(BAD)


def test_a_photo_without_output_names_the_jobs_failure(aws_session, tmp_path):  # noqa: F811
    """A job that failed or stopped first leaves photos without an .out (Batch Transform uploads only what
    succeeded): their lines say so, with the job's FailureReason."""
    s3 = aws_session.client("s3")
    s3.put_object(Bucket=BUCKET, Key="in/a.jpg", Body=b"x")
    summary = bt.join(f"s3://{BUCKET}/in", f"s3://{BUCKET}/out", tmp_path / "t.jsonl",
                      failure="ClientError: See job logs for more information")
    line = _lines(tmp_path / "t.jsonl")[0]
    assert line["kind"] == bt.NO_OUTPUT and "ClientError: See job logs" in line["error"]
    assert list(line) == ["file", "error", "kind", "version"] and summary.errors == {bt.NO_OUTPUT: 1}


def test_an_output_that_is_not_the_served_tags_is_an_error_line(aws_session, tmp_path):  # noqa: F811
    s3 = aws_session.client("s3")
    s3.put_object(Bucket=BUCKET, Key="in/a.jpg", Body=b"x")
    s3.put_object(Bucket=BUCKET, Key="out/a.jpg.out", Body=b'[0.2, 0.8]')  # e.g. the Scones image by mistake
    bt.join(f"s3://{BUCKET}/in", f"s3://{BUCKET}/out", tmp_path / "t.jsonl")
    line = _lines(tmp_path / "t.jsonl")[0]
    assert line["kind"] == bt.BAD_OUTPUT and "out/a.jpg.out is not the served tags" in line["error"]


def test_output_keys_and_the_cost_on_paper():
    assert bt.output_uri("s3://b/photos/2026/trip/a.jpg", "s3://b/photos/2026", "s3://o/tags") == \
        "s3://o/tags/trip/a.jpg.out"
    with pytest.raises(ValueError, match="not under the transform's input prefix"):
        bt.output_uri("s3://b/other/a.jpg", "s3://b/photos/", "s3://o/tags/")
    assert bt.hours_per_million(50.0, 4) == pytest.approx(1e6 / 200 / 3600)


# ------------------------------------------------------------------------------- --plan: the cost

def _price_item(usage_type: str, usd: str, effective: str, vcpu: str = "4", instance: str = "ml.c5.xlarge") -> str:
    """One GetProducts PriceList item as AWS documents it: a JSON string holding the product and its terms
    (terms.OnDemand.<sku>.<offerTermCode>: effectiveDate, priceDimensions.<rateCode>.pricePerUnit.USD)."""
    sku = "SKU" + usage_type.split("-")[1].split(":")[0].upper()
    return json.dumps({
        "product": {"productFamily": "ML Instance", "sku": sku, "attributes": {
            "servicecode": "AmazonSageMaker", "instanceName": instance, "regionCode": REGION, "vCpu": vcpu,
            "usagetype": usage_type, "operation": "RunInstance", "location": "US East (N. Virginia)"}},
        "serviceCode": "AmazonSageMaker",
        "terms": {"OnDemand": {f"{sku}.JRTCKXETXF": {
            "offerTermCode": "JRTCKXETXF", "sku": sku, "effectiveDate": effective, "termAttributes": {},
            "priceDimensions": {f"{sku}.JRTCKXETXF.6YS6EN2CT7": {
                "rateCode": f"{sku}.JRTCKXETXF.6YS6EN2CT7", "description": f"{usage_type} per hour",
                "unit": "Hrs", "beginRange": "0", "endRange": "Inf", "appliesTo": [],
                "pricePerUnit": {"USD": usd}}}}}},
        "version": "20260101000000", "publicationDate": "2026-01-01T00:00:00Z"})


class _OnlyPricing:
    """A boto3 Session whose only client is the stubbed Price List one: any other service fails the test."""

    def __init__(self, pricing, region_name=None, **_):
        self.pricing, self.region_name, self.made = pricing, region_name, []

    def client(self, name, **kwargs):
        self.made.append((name, kwargs.get("region_name")))
        assert name == "pricing", f"--plan made a {name} client"
        return self.pricing


PLAN = ["s3://my-bucket/photos/", "--output", "s3://my-bucket/tags-bt/", "--out", "never.jsonl", "--plan"]


def test_plan_prices_a_million_photos_from_the_dated_batch_transform_price(monkeypatch, capsys, tmp_path):
    """The price is the Batch Transform product's (not hosting's, listed first), dated by its offer term's
    effectiveDate; the vCPUs are the product's; nothing but pricing:GetProducts is called."""
    monkeypatch.chdir(tmp_path)
    pricing = boto3.client("pricing", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    filters = [{"Type": "TERM_MATCH", "Field": "instanceName", "Value": "ml.c5.xlarge"},
               {"Type": "TERM_MATCH", "Field": "regionCode", "Value": REGION}]
    session = _OnlyPricing(pricing, REGION)
    monkeypatch.setattr(boto3, "Session", lambda region_name=None, **_: session)
    with Stubber(pricing) as stub:
        stub.add_response("get_products", {"FormatVersion": "aws_v1", "PriceList": [
            _price_item("USE1-Host:ml.c5.xlarge", "0.2040000000", "2025-11-01T00:00:00Z"),
            _price_item("USE1-Tsform:ml.c5.xlarge", "0.2420000000", "2026-03-01T00:00:00Z")]},
            {"ServiceCode": "AmazonSageMaker", "Filters": filters})
        assert bt.main([*PLAN, "--instance-count", "2", "--region", REGION]) == 0
        stub.assert_no_pending_responses()
    out = capsys.readouterr().out
    assert session.made == [("pricing", "us-east-1")] and not (tmp_path / "never.jsonl").exists()
    assert ("price: $0.2420 per instance-hour on demand (USE1-Tsform:ml.c5.xlarge), effective 2026-03-01 in the "
            "AWS Price List, read 20") in out and aws_pricing.PRICING_PAGE in out
    assert "vCPUs: 4 (the price list's vCpu of ml.c5.xlarge)" in out
    small, phone = tag_benchmark.TAGGER_RATES
    hours = 1e6 / (50.86 / 2 * 4) / 3600  # the README's figures, worked by hand
    assert f"{small.photos}: 25.43 photos/s per core (tag_benchmark's tagger, 50.86 photos/s on 2 cores, 2026-12-07): " \
           f"{hours:.2f} instance-hours per million ({hours / 2:.2f} h on 2 instances), " \
           f"${hours * 0.242:.2f} per million photos" in out
    hours = 1e6 / (35.47 / 2 * 4) / 3600
    assert f"{phone.photos}: 17.73 photos/s per core" in out and f"${hours * 0.242:.2f} per million photos" in out
    assert "$0.66 per million photos" in out and "$0.95 per million photos" in out  # 2.73 h and 3.92 h at $0.242


def test_plan_without_a_price_says_why_and_gives_the_formula(monkeypatch, capsys):
    pricing = boto3.client("pricing", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    with Stubber(pricing) as stub:
        stub.add_client_error("get_products", "AccessDeniedException", "not authorized to perform pricing:GetProducts",
                              400)
        lines = bt.plan("ml.c5.xlarge", 1, REGION, pricing, today="2026-12-07")
    text = "\n".join(lines)
    assert "price: not read (pricing:GetProducts refused: AccessDeniedException: not authorized" in text
    assert "instance-hours per million = 1,000,000 / (25.43 x vCPUs) / 3600; cost per million = instance-hours x " \
           "the price per instance-hour" in text and "vCPUs: unknown" in text and aws_pricing.PRICING_PAGE in text
    with Stubber(pricing) as stub:  # hosting's product only: no Batch Transform price, never hosting's in its place
        stub.add_response("get_products", {"FormatVersion": "aws_v1", "PriceList": [
            _price_item("USE1-Host:ml.c5.xlarge", "0.2040000000", "2025-11-01T00:00:00Z")]})
        text = "\n".join(bt.plan("ml.c5.xlarge", 1, REGION, pricing, vcpus=4))
    assert "no on-demand hourly product *-Tsform:ml.c5.xlarge in us-east-1" in text and "$0.2040" not in text
    assert "vCPUs: 4 (--vcpus)" in text and "2.73 instance-hours per million (2.73 h on 1 instance), cost per " \
                                             "million = 2.73 x the price per instance-hour" in text

    # no credentials anywhere: the command still answers, exit 0, having made only the pricing client
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                 "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                 "AWS_WEB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/credentials")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/config")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    made, client = [], boto3.Session.client
    monkeypatch.setattr(boto3.Session, "client", lambda self, name, **kw: made.append(name) or client(self, name, **kw))
    assert bt.main([*PLAN, "--region", REGION]) == 0
    out = capsys.readouterr().out
    assert "price: not read (no AWS credentials to call pricing:GetProducts" in out and made == ["pricing"]
    assert "(17.73 x vCPUs) / 3600" in out


def test_the_measured_rates_are_the_readmes_run_of_record():
    """One place for the figures: the README's tag_benchmark table says what tag_benchmark.TAGGER_RATES holds,
    and its Batch Transform section shows the --plan command instead of retyping them."""
    readme = (REPO / "landmark_classifier" / "README.md").read_text()
    rows = {"tagger": "| tagger (default) | 414 | ", "tagger_phone": "| tagger (default), phone-sized photos | 40 | "}
    for rate in tag_benchmark.TAGGER_RATES:
        assert f"{rows[rate.row]}{rate.photos_per_s} |" in readme, rate
    assert f"run {tag_benchmark.MEASURED_ON} on this project's {tag_benchmark.TAGGER_RATES[0].cores}-core machine" \
        in " ".join(readme.split())
    section = readme[readme.index("**Cost per million photos"):]
    assert "--plan --instance-type ml.c5.xlarge --instance-count 2 --region us-east-1" in section
    pricing = boto3.client("pricing", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    with Stubber(pricing) as stub:  # the README's example output is what --plan prints today without a price
        stub.add_client_error("get_products", "AccessDeniedException", "no", 400)
        lines = bt.plan("ml.c5.xlarge", 2, REGION, pricing, vcpus=4)
    shown = [line for line in lines if not line.startswith("price:")]  # the reason differs: denied, not no credentials
    assert len(shown) == 5 and all(line in section for line in shown), [line for line in shown if line not in section]


# ------------------------------------------------------------------------------- the image

DOCKERFILE = REPO / "landmark_classifier" / "Dockerfile"


def test_the_image_installs_everything_serve_imports(tiny_predictor, monkeypatch):  # noqa: F811
    """serve.py and an ONNX Runtime session load with every package the Dockerfile does not install (nor its
    dependencies) hidden, as in the container; and the Dockerfile copies the modules and the model they use."""
    from tests import test_scones_aws

    monkeypatch.setattr(test_scones_aws, "PROJECT_DIR", DOCKERFILE.parent)  # its reader of a Dockerfile's pins
    allowed = sorted(test_scones_aws._dockerfile_distributions())
    code = ("import importlib.abc, json, sys\n"
            "from importlib.metadata import packages_distributions\n"
            "owners = packages_distributions()\n"
            f"allowed = set({allowed!r})\n"
            "class Container(importlib.abc.MetaPathFinder):\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        top = name.split('.')[0]\n"
            "        dists = [d.lower().replace('_', '-') for d in owners.get(top, [])]\n"
            "        if dists and not set(dists) & allowed and top not in ('landmark_classifier', 'common'):\n"
            "            raise ModuleNotFoundError(f'not in the container: {name}', name=name)\n"
            "sys.meta_path.insert(0, Container())\n"
            "from landmark_classifier.src import serve\n"
            f"server = serve.make_server({str(tiny_predictor[0])!r}, port=0)\n"
            "server.server_close()\n"
            "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"serve needs a package the Dockerfile does not install:\n{done.stderr[-3000:]}"
    loaded = set(json.loads(done.stdout.strip().splitlines()[-1]))
    assert "onnxruntime" in loaded and not {"torch", "onnx", "sagemaker", "moto"} & loaded
    text = DOCKERFILE.read_text()
    for copied in ("common/", "landmark_classifier/src/", "landmark_classifier/models/landmark_predictor.onnx"):
        assert f"COPY {copied}" in text
    assert 'ENTRYPOINT ["python", "-m", "landmark_classifier.src.serve"]' in text


def test_checkov_finds_no_unexplained_failure_in_the_dockerfile():
    checkov = REPO / ".venv" / "tools" / "bin" / "checkov"
    if not checkov.exists():
        pytest.skip(f"checkov is not installed at {checkov} (make venv installs it from requirements-tools.txt)")
    done = subprocess.run([str(checkov), "-f", str(DOCKERFILE), "--framework", "dockerfile", "-o", "json",
                           "--skip-download"], capture_output=True, text=True, timeout=300)
    report = json.loads(done.stdout)
    failed = [f"{c['check_id']}: {c['check_name']}" for c in report["results"].get("failed_checks", [])]
    assert failed == [] and report["summary"]["parsing_errors"] == 0
    assert [c["check_id"] for c in report["results"]["skipped_checks"]] == ["CKV_DOCKER_3"]  # the commented skip
