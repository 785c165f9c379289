"""Each Lambda handler on its own: moto S3 for serialize, the local server for classify."""
from __future__ import annotations

import base64
import io
import json

import boto3
import pytest
from moto import mock_aws

from scones_workflow.src.lambdas import classify, confidence_filter, constants, events, serialize
from scones_workflow.src.serving.server import InferenceServer
from tests.scones_fixtures import fake_predict, png_bytes


@pytest.fixture()
def bucket():
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="data")
        yield s3


def test_serialize_returns_base64_in_the_seeds_event_shape(bucket):
    image = png_bytes()
    bucket.put_object(Bucket="data", Key="test/bike.png", Body=image)
    out = serialize.lambda_handler({"image_data": "", "s3_bucket": "data", "s3_key": "test/bike.png"}, None)
    assert out["statusCode"] == 200
    assert base64.b64decode(out["body"]["image_data"]) == image
    assert out["body"]["s3_key"] == "test/bike.png" and out["body"]["content_type"] == "image/png"


@pytest.mark.parametrize("event,error", [
    ({"s3_bucket": "data"}, "no field 's3_key'"),
    ({"s3_bucket": "data", "s3_key": ""}, "field 's3_key' must be a non-empty str"),
    ("just a string", "must be a JSON object"),
    ({"body": "{not json"}, "field 'body' is a string but not JSON"),
])
def test_serialize_rejects_malformed_events_naming_the_field(bucket, event, error):
    with pytest.raises(events.InvalidEvent, match=error):
        serialize.lambda_handler(event, None)


def test_serialize_names_a_missing_bucket(bucket):
    with pytest.raises(events.ImageNotFound, match="s3://nowhere/x.png does not exist"):
        serialize.lambda_handler({"s3_bucket": "nowhere", "s3_key": "x.png"}, None)


def test_classify_calls_the_endpoint_through_sagemaker_runtime(monkeypatch):
    with InferenceServer(fake_predict, port=0) as server:
        monkeypatch.setenv("ENDPOINT_NAME", "scones-endpoint")
        monkeypatch.setenv("ENDPOINT_URL", server.url)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "x")
        monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        body = {"image_data": base64.b64encode(png_bytes(value=0)).decode(), "s3_key": "test/a.png"}
        out = classify.lambda_handler({"statusCode": 200, "body": body}, None)
        assert out["body"]["inferences"][0] > 0.9 and out["body"]["s3_key"] == "test/a.png"
        with pytest.raises(events.InvalidImage, match="rejected test/b.png: .*not an image"):
            classify.lambda_handler({"body": {"image_data": base64.b64encode(b"text").decode(),
                                              "s3_key": "test/b.png"}}, None)
        with pytest.raises(events.InvalidEvent, match="not valid base64"):
            classify.lambda_handler({"body": {"image_data": "***"}}, None)


def test_classify_needs_the_endpoint_name(monkeypatch):
    monkeypatch.delenv("ENDPOINT_NAME", raising=False)
    with pytest.raises(events.InvalidEvent, match="ENDPOINT_NAME"):
        classify.lambda_handler({"body": {"image_data": base64.b64encode(b"x").decode()}}, None)


def test_filter_passes_confident_inferences_and_accepts_the_seeds_string_body(monkeypatch):
    monkeypatch.delenv("THRESHOLD_CONFIDENCE", raising=False)
    event = {"body": {"inferences": [0.96, 0.04], "s3_key": "a.png"}}
    assert confidence_filter.lambda_handler(event, None) == {"statusCode": 200, "body": event["body"]}
    assert confidence_filter.lambda_handler({"body": '{"inferences": [0.01, 0.99]}'}, None)["statusCode"] == 200


def test_filter_raises_the_seeds_error_below_the_threshold(monkeypatch):
    monkeypatch.setenv("THRESHOLD_CONFIDENCE", "0.97")
    with pytest.raises(events.THRESHOLD_CONFIDENCE_NOT_MET, match="0.9600 is below 0.97"):
        confidence_filter.lambda_handler({"body": {"inferences": [0.96, 0.04], "s3_key": "a.png"}}, None)
    monkeypatch.setenv("THRESHOLD_CONFIDENCE", "high")
    with pytest.raises(events.InvalidEvent, match="THRESHOLD_CONFIDENCE='high' is not a number"):
        confidence_filter.lambda_handler({"body": {"inferences": [0.96, 0.04]}}, None)


def test_filter_rejects_missing_or_empty_inferences():
    with pytest.raises(events.InvalidEvent, match="no field 'inferences'"):
        confidence_filter.lambda_handler({"body": {}}, None)
    with pytest.raises(events.InvalidEvent, match="non-empty list of probabilities"):
        confidence_filter.lambda_handler({"body": {"inferences": []}}, None)


# ---------------------------------------------------------------------------- the low-confidence metric
def _emf_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_filter_emits_one_embedded_metric_record_per_inference(monkeypatch, capsys):
    """CloudWatch embedded metric format on stdout: what template.yaml's alarm reads (no API call needed)."""
    monkeypatch.delenv("METRICS_FILE", raising=False)
    monkeypatch.delenv("THRESHOLD_CONFIDENCE", raising=False)
    monkeypatch.setenv("ENDPOINT_NAME", "scones-endpoint")
    confidence_filter.lambda_handler({"body": {"inferences": [0.97, 0.03], "s3_key": "a.png", "variant": "Primary"}},
                                     None)
    with pytest.raises(events.THRESHOLD_CONFIDENCE_NOT_MET):
        confidence_filter.lambda_handler({"body": {"inferences": [0.30, 0.70], "s3_key": "b.png"}}, None)
    confident, low = _emf_lines(capsys.readouterr().out)
    directive = confident["_aws"]["CloudWatchMetrics"][0]
    assert directive["Namespace"] == constants.METRIC_NAMESPACE and isinstance(confident["_aws"]["Timestamp"], int)
    assert ["EndpointName"] in directive["Dimensions"] and ["EndpointName", "Variant"] in directive["Dimensions"]
    names = [m["Name"] for m in directive["Metrics"]]
    assert names == [constants.METRIC_INFERENCES, constants.METRIC_LOW_CONFIDENCE, constants.METRIC_CONFIDENCE]
    for record in (confident, low):  # every dimension and metric the directive names is a top-level member
        assert all(key in record for dims in directive["Dimensions"] for key in dims)
        assert all(isinstance(record[name], (int, float)) for name in names)
    assert (confident["LowConfidence"], confident["Confidence"], confident["Variant"]) == (0, 0.97, "Primary")
    assert (low["LowConfidence"], low["Confidence"], low["predicted_label"]) == (1, 0.70, constants.CLASS_NAMES[1])
    assert low["EndpointName"] == "scones-endpoint" and low["threshold"] == constants.THRESHOLD


def test_filter_writes_metrics_to_a_file_when_asked(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("METRICS_FILE", str(tmp_path / "metrics.jsonl"))
    confidence_filter.lambda_handler({"body": {"inferences": [0.99, 0.01]}}, None)
    assert capsys.readouterr().out == ""
    assert _emf_lines((tmp_path / "metrics.jsonl").read_text())[0]["Inferences"] == 1


def test_classify_passes_the_variant_that_answered(monkeypatch):
    from botocore.response import StreamingBody
    from botocore.stub import Stubber

    runtime = boto3.client("sagemaker-runtime", region_name="us-east-1")
    monkeypatch.setattr(classify, "_runtime", lambda *_: runtime)
    monkeypatch.setenv("ENDPOINT_NAME", "scones-endpoint")
    body = b"[0.2, 0.8]"
    with Stubber(runtime) as stub:
        stub.add_response("invoke_endpoint", {"Body": StreamingBody(io.BytesIO(body), len(body)),
                                              "InvokedProductionVariant": "Challenger"})
        out = classify.lambda_handler({"body": {"image_data": base64.b64encode(b"png").decode(), "s3_key": "x.png"}},
                                      None)
    assert out["body"]["inferences"] == [0.2, 0.8] and out["body"]["variant"] == "Challenger"


def test_names_and_threshold_are_defined_once():
    assert events.THRESHOLD_CONFIDENCE_NOT_MET.__name__ == constants.LOW_CONFIDENCE_ERROR
    assert confidence_filter.DEFAULT_THRESHOLD == constants.THRESHOLD
    assert abs(sum(constants.VARIANTS.values()) - 1) < 1e-9 and constants.DEFAULT_VARIANT not in constants.VARIANTS
    # one exception class per failure, each with its own name
    failures = [c for c in vars(events).values() if isinstance(c, type) and issubclass(c, Exception)
                and c.__module__ == events.__name__]
    assert len({c.__name__ for c in failures}) == len(failures) >= 8
