"""The AWS code paths against moto (never against AWS): training request, endpoint with capture,
Lambda zip, test cases, teardown."""
from __future__ import annotations

import importlib
import json
import random
import sys
import zipfile

import boto3
import pytest
from moto import mock_aws

from scones_workflow.src import aws

ROLE = "arn:aws:iam::123456789012:role/sagemaker"


@pytest.fixture()
def moto_clients():
    with mock_aws():
        yield {name: boto3.client(name, region_name="us-east-1") for name in ("sagemaker", "s3", "cloudformation")}


def test_training_request_uses_the_builtin_algorithm_on_lst_channels():
    spec = aws.TrainingSpec("job-1", ROLE, "s3://b/scones/data", "s3://b/models", num_training_samples=1000)
    uri = aws.image_classification_uri("us-east-1")
    request = aws.training_job_request(spec, uri)
    assert uri == "811284229777.dkr.ecr.us-east-1.amazonaws.com/image-classification:1"
    channels = {c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"] for c in request["InputDataConfig"]}
    assert channels == {"train": "s3://b/scones/data/train/", "validation": "s3://b/scones/data/test/",
                        "train_lst": "s3://b/scones/data/train.lst", "validation_lst": "s3://b/scones/data/test.lst"}
    assert request["HyperParameters"]["num_classes"] == "2" and request["HyperParameters"]["image_shape"] == "3,32,32"


def test_training_job_and_endpoint_with_full_data_capture(moto_clients):
    sm = moto_clients["sagemaker"]
    spec = aws.TrainingSpec("job-1", ROLE, "s3://b/scones/data", "s3://b/models", num_training_samples=1000)
    image = aws.image_classification_uri("us-east-1")
    sm.create_training_job(**aws.training_job_request(spec, image))
    assert sm.describe_training_job(TrainingJobName="job-1")["AlgorithmSpecification"]["TrainingImage"] == image
    aws.deploy_endpoint(sm, name="scones-endpoint", model_data="s3://b/models/model.tar.gz", image_uri=image,
                        role_arn=ROLE, capture_s3="s3://captures/data_capture")
    config = sm.describe_endpoint_config(EndpointConfigName="scones-endpoint")["DataCaptureConfig"]
    assert config["EnableCapture"] and config["InitialSamplingPercentage"] == 100
    assert {o["CaptureMode"] for o in config["CaptureOptions"]} == {"Input", "Output"}
    assert sm.describe_endpoint(EndpointName="scones-endpoint")["EndpointConfigName"] == "scones-endpoint"


def test_teardown_is_idempotent(moto_clients):
    sm, cfn = moto_clients["sagemaker"], moto_clients["cloudformation"]
    aws.deploy_endpoint(sm, name="scones-endpoint", model_data="s3://b/m.tar.gz", image_uri="img", role_arn=ROLE,
                        capture_s3="s3://c/d")
    first = aws.teardown(sm, cfn, endpoint_name="scones-endpoint", stack_name="scones-workflow")
    second = aws.teardown(sm, cfn, endpoint_name="scones-endpoint", stack_name="scones-workflow")
    assert first == {"endpoint": True, "endpoint_config": True, "model": True, "stack": False}
    assert not any(second.values())


def test_generate_test_case_picks_an_image_from_the_bucket(moto_clients):
    s3 = moto_clients["s3"]
    s3.create_bucket(Bucket="data")
    for key in ("test/a.png", "test/b.png", "test.lst"):
        s3.put_object(Bucket="data", Key=key, Body=b"x")
    event = aws.generate_test_case(s3, "data", rng=random.Random(0))
    assert event["image_data"] == "" and event["s3_bucket"] == "data"
    assert event["s3_key"] in ("test/a.png", "test/b.png")
    with pytest.raises(FileNotFoundError, match="s3://data/nothing/"):
        aws.generate_test_case(s3, "data", prefix="nothing/")


def test_lambda_zip_holds_an_importable_package_with_the_templates_handlers(tmp_path, monkeypatch):
    archive = aws.build_lambda_zip(tmp_path / "lambdas.zip")
    names = set(zipfile.ZipFile(archive).namelist())
    assert {"lambdas/serialize.py", "lambdas/classify.py", "lambdas/confidence_filter.py", "lambdas/events.py"} <= names
    extracted = tmp_path / "unzipped"
    zipfile.ZipFile(archive).extractall(extracted)
    monkeypatch.syspath_prepend(str(extracted))
    for module in [m for m in sys.modules if m == "lambdas" or m.startswith("lambdas.")]:
        monkeypatch.delitem(sys.modules, module)
    template = aws.TEMPLATE_PATH.read_text()
    for handler in ("lambdas.serialize.lambda_handler", "lambdas.classify.lambda_handler",
                    "lambdas.confidence_filter.lambda_handler"):
        assert f"Handler: {handler}" in template
        module, function = handler.rsplit(".", 1)
        assert callable(getattr(importlib.import_module(module), function))


def test_run_executions_reports_each_status():
    class FakeSfn:
        def __init__(self):
            self.calls = 0

        def start_execution(self, stateMachineArn, input):
            return {"executionArn": f"arn:{json.loads(input)['s3_key']}"}

        def describe_execution(self, executionArn):
            self.calls += 1
            if self.calls <= 2:
                return {"status": "RUNNING"}
            ok = executionArn.endswith("good.png")
            return {"status": "SUCCEEDED" if ok else "FAILED", "error": None if ok else "NotAnImage"}

    events = [{"s3_bucket": "b", "s3_key": k, "image_data": ""} for k in ("good.png", "bad.png")]
    rows = aws.run_executions(FakeSfn(), "arn:sm", events, poll_seconds=0)
    assert [(r["s3_key"], r["status"], r["error"]) for r in rows] == [
        ("good.png", "SUCCEEDED", None), ("bad.png", "FAILED", "NotAnImage")]


def test_deploy_stack_uploads_code_and_creates_the_functions(tmp_path):
    with mock_aws(config={"lambda": {"use_docker": False}}):
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="code-bucket")
        outputs = aws.deploy_stack(boto3.client("cloudformation", region_name="us-east-1"), s3,
                                   stack_name="scones-workflow", code_bucket="code-bucket",
                                   endpoint_name="scones-endpoint", work_dir=tmp_path)
        functions = boto3.client("lambda", region_name="us-east-1").list_functions()["Functions"]
        keys = {o["Key"] for o in s3.list_objects_v2(Bucket="code-bucket")["Contents"]}
    assert set(outputs) == {"StateMachineArn", "DataBucketName", "CaptureBucketName"}
    assert keys == {"scones-workflow/lambdas.zip", "scones-workflow/workflow.asl.json"}
    handlers = {f["FunctionName"].split("-")[-1]: f["Handler"] for f in functions}
    assert handlers == {"serializeImageData": "lambdas.serialize.lambda_handler",
                        "classifyImage": "lambdas.classify.lambda_handler",
                        "confidenceFilter": "lambdas.confidence_filter.lambda_handler"}
