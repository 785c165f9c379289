"""Fixtures for the AWS-path tests: moto with the calls it lacks (SageMaker UpdateEndpoint, Service Quotas
ListServiceQuotas), the container image pushed to moto's ECR, and a tiny ONNX model."""
from __future__ import annotations

import json
from pathlib import Path

import boto3
import pytest
from moto import mock_aws
from moto.cloudformation.parsing import ResourceMap
from moto.core.responses import ActionResult
from moto.sagemaker.responses import SageMakerResponse
from moto.servicequotas.responses import ServiceQuotasResponse

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


def _list_service_quotas(self: ServiceQuotasResponse) -> str:
    """ListServiceQuotas (moto 5.2 lacks it): an account whose applied quotas list none of SageMaker's
    instance quotas, so the quota preflight has nothing to refuse (tests of the refusal use a Stubber)."""
    return json.dumps({"Quotas": []})


_moto_delete = ResourceMap.delete


def _delete_stack_resources(self: ResourceMap) -> None:
    """A stack delete as AWS does it for RetainExceptOnCreate ("behaves like Retain for stack operations, except for
    the stack operation that initially created the resource", DeletionPolicy attribute): moto 5.2 knows only Retain.
    The rollback of a failed create (where the resource is deleted) is not modelled: test_scones_template pins it."""
    for resource in self._resource_json_map.values():
        if resource.get("DeletionPolicy") == "RetainExceptOnCreate":
            resource["DeletionPolicy"] = "Retain"
    _moto_delete(self)


DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"


def push_image(session, media_type: str = DOCKER_MANIFEST, uri: str | None = None) -> str:
    """IMAGE pushed to moto's ECR with a manifest of `media_type` (what `docker push` leaves there)."""
    uri = uri or IMAGE
    repository, tag = uri.split("/", 1)[1].split(":")
    ecr = session.client("ecr")
    if repository not in [r["repositoryName"] for r in ecr.describe_repositories()["repositories"]]:
        ecr.create_repository(repositoryName=repository)
    manifest = {"schemaVersion": 2, "mediaType": media_type, "config": {
        "mediaType": "application/vnd.docker.container.image.v1+json", "size": 2, "digest": "sha256:" + "0" * 64},
        "layers": []}
    ecr.put_image(repositoryName=repository, imageManifest=json.dumps(manifest), imageTag=tag,
                  imageManifestMediaType=media_type)
    return uri


@pytest.fixture()
def aws_session(monkeypatch):
    """A boto3 Session on moto (S3, SageMaker with update_endpoint, CloudFormation, Lambda without Docker)."""
    monkeypatch.setattr(SageMakerResponse, "update_endpoint", _update_endpoint, raising=False)
    monkeypatch.setattr(ServiceQuotasResponse, "list_service_quotas", _list_service_quotas, raising=False)
    monkeypatch.setattr(ResourceMap, "delete", _delete_stack_resources)
    UPDATES.clear()
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    with mock_aws(config={"lambda": {"use_docker": False}}):
        session = boto3.Session(region_name=REGION)
        session.client("s3").create_bucket(Bucket="my-bucket")
        push_image(session)
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
