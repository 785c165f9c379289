"""Fixtures for the AWS-path tests: moto with the one SageMaker call it lacks, and a tiny ONNX model."""
from __future__ import annotations

import json
from pathlib import Path

import boto3
import pytest
from moto import mock_aws
from moto.core.responses import ActionResult
from moto.sagemaker.responses import SageMakerResponse

ROLE = "arn:aws:iam::123456789012:role/sagemaker"
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/scones-server:1"
REGION = "us-east-1"


def _update_endpoint(self: SageMakerResponse) -> ActionResult:
    """UpdateEndpoint as SageMaker does it (moto 5.2 lacks it): the endpoint keeps its name and ARN and
    serves the new config's variants. Each call is recorded, so tests can tell an update from a re-create."""
    backend = self.sagemaker_backend
    name, config_name = self._get_param("EndpointName"), self._get_param("EndpointConfigName")
    config = backend.describe_endpoint_config(config_name)
    backend.describe_endpoint(name)  # moto's "Could not find endpoint" error if there is none
    endpoint = backend.endpoints[name]
    endpoint.endpoint_config_name = config_name
    endpoint.production_variants = config["ProductionVariants"]
    UPDATES.append((name, config_name))
    return ActionResult({"EndpointArn": endpoint.arn})


UPDATES: list[tuple[str, str]] = []


@pytest.fixture()
def aws_session(monkeypatch):
    """A boto3 Session on moto (S3, SageMaker with update_endpoint, CloudFormation, Lambda without Docker)."""
    monkeypatch.setattr(SageMakerResponse, "update_endpoint", _update_endpoint, raising=False)
    UPDATES.clear()
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    with mock_aws(config={"lambda": {"use_docker": False}}):
        session = boto3.Session(region_name=REGION)
        session.client("s3").create_bucket(Bucket="my-bucket")
        yield session


def tiny_onnx(path: Path, class_names=("bicycle", "motorcycle")) -> Path:
    """An ONNX file with the metadata the server reads (an Identity graph: what it computes does not matter here)."""
    import onnx
    from onnx import TensorProto, helper

    images = helper.make_tensor_value_info("images", TensorProto.UINT8, ["N", 3, "H", "W"])
    out = helper.make_tensor_value_info("probabilities", TensorProto.UINT8, ["N", 3, "H", "W"])
    graph = helper.make_graph([helper.make_node("Identity", ["images"], ["probabilities"])], "tiny", [images], [out])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)  # ORT-loadable
    for key, value in {"class_names": list(class_names), "model_name": "tiny", "input": "uint8 N x 3 x H x W RGB"}.items():
        model.metadata_props.add(key=key, value=json.dumps(value))
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path
