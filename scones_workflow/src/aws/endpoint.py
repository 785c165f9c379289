"""The endpoint: SageMaker models, an endpoint config (weighted production variants, 100 % data capture),
and the switch of an existing endpoint to a new config (update_endpoint: blue/green, never recreated), which
counts as done only when the endpoint serves the new config: SageMaker rolls a failed update back and the
endpoint is InService again on the old config, with FailureReason set.
https://docs.aws.amazon.com/sagemaker/latest/APIReference/API_DescribeEndpoint.html (FailureReason: "If the
status of the endpoint is Failed, or the status is InService but update operation fails")."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError, WaiterError

from ..lambdas.constants import VARIANTS
from .config import SERVERLESS_MAX_CONCURRENCY
from .names import missing


@dataclass
class Variant:
    name: str
    model_name: str
    weight: float


def create_model(sm: Any, *, name: str, image_uri: str, model_data: str, role_arn: str) -> str:
    sm.create_model(ModelName=name, ExecutionRoleArn=role_arn,
                    PrimaryContainer={"Image": image_uri, "ModelDataUrl": model_data})
    return name


@dataclass(frozen=True)
class Fleet:
    """What serves each variant: `count` instances of `instance_type`, or serverless with `memory_mb`."""
    instance_type: str = "ml.m5.xlarge"
    count: int = 1
    memory_mb: int = 0  # > 0: serverless

    def variant_fields(self) -> dict:
        if self.memory_mb:
            return {"ServerlessConfig": {"MemorySizeInMB": self.memory_mb, "MaxConcurrency": SERVERLESS_MAX_CONCURRENCY}}
        return {"InstanceType": self.instance_type, "InitialInstanceCount": self.count}


def endpoint_config_request(name: str, variants: list[Variant], capture_s3: str, fleet: Fleet = Fleet()) -> dict:
    """Production variants (weights are relative) and data capture of every request, input and output.
    Serverless endpoints support neither data capture nor a second variant (the "feature exclusions" of
    https://docs.aws.amazon.com/sagemaker/latest/dg/serverless-endpoints.html), so they get no capture."""
    request = {
        "EndpointConfigName": name,
        "ProductionVariants": [{"VariantName": v.name, "ModelName": v.model_name, "InitialVariantWeight": float(v.weight),
                                **fleet.variant_fields()} for v in variants],
    }
    if not fleet.memory_mb:
        request["DataCaptureConfig"] = {
            "EnableCapture": True, "InitialSamplingPercentage": 100, "DestinationS3Uri": capture_s3,
            "CaptureOptions": [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}],
            "CaptureContentTypeHeader": {"JsonContentTypes": ["application/json"]}}
    return request


def variant_fleets(sm: Any, endpoint: dict | None) -> dict[str, str]:
    """{variant: instance type, or "serverless"} of the config an endpoint serves now; {} if there is none, or if
    it is Failed (it will be deleted and created again, and deleting it deregisters its scaling)."""
    if endpoint is None or endpoint["EndpointStatus"] == "Failed":
        return {}
    config = sm.describe_endpoint_config(EndpointConfigName=endpoint["EndpointConfigName"])
    return {v["VariantName"]: v.get("InstanceType") or "serverless" for v in config["ProductionVariants"]}


def describe_endpoint(sm: Any, name: str) -> dict | None:
    """The endpoint's description, or None if there is none."""
    try:
        return sm.describe_endpoint(EndpointName=name)
    except ClientError as err:
        if missing(err):
            return None
        raise


def serving_model(sm: Any, endpoint: dict) -> str:
    """The model the endpoint's first (or Primary) variant serves now."""
    config = sm.describe_endpoint_config(EndpointConfigName=endpoint["EndpointConfigName"])
    variants = {v["VariantName"]: v["ModelName"] for v in config["ProductionVariants"]}
    first = next(iter(VARIANTS))
    return variants.get(first) or next(iter(variants.values()))


def switch_endpoint(sm: Any, *, name: str, config_name: str, wait: bool = True, retain_counts: bool = False) -> str:
    """Create the endpoint, or move an existing one to `config_name` with update_endpoint (blue/green).
    Returns "created", "updated" or "recreated" (a Failed endpoint cannot be updated, only replaced).
    `retain_counts`: keep each same-named variant's current instance count (what auto scaling set) instead of
    the config's InitialInstanceCount (UpdateEndpoint's RetainAllVariantProperties; the weights still come from
    the new config). RuntimeError with SageMaker's FailureReason if the endpoint fails or the update rolls back."""
    current = describe_endpoint(sm, name)
    action = "created"
    if current is not None and current["EndpointStatus"] == "Failed":
        sm.delete_endpoint(EndpointName=name)
        sm.get_waiter("endpoint_deleted").wait(EndpointName=name)
        current, action = None, "recreated"
    if current is None:
        sm.create_endpoint(EndpointName=name, EndpointConfigName=config_name)
    else:
        if current["EndpointStatus"] in ("Creating", "Updating", "SystemUpdating", "RollingBack"):
            wait_in_service(sm, name)
        retain = {"RetainAllVariantProperties": True,
                  "ExcludeRetainedVariantProperties": [{"VariantPropertyType": "DesiredWeight"}]} if retain_counts else {}
        sm.update_endpoint(EndpointName=name, EndpointConfigName=config_name, **retain)
        action = "updated"
    if wait:
        wait_in_service(sm, name, config_name)
    return action


def wait_in_service(sm: Any, name: str, config_name: str | None = None) -> dict:
    """Wait until the endpoint is InService (on `config_name`, if given); RuntimeError naming SageMaker's
    FailureReason when it is Failed, or InService on another config after a rolled-back update."""
    try:
        sm.get_waiter("endpoint_in_service").wait(EndpointName=name, WaiterConfig={"Delay": 30, "MaxAttempts": 120})
    except WaiterError as err:
        endpoint = describe_endpoint(sm, name) or {}
        raise RuntimeError(f"endpoint {name} is {endpoint.get('EndpointStatus', 'gone')}: "
                           f"{endpoint.get('FailureReason') or err}") from None
    endpoint = sm.describe_endpoint(EndpointName=name)
    serving = endpoint.get("EndpointConfigName")
    if config_name is not None and serving != config_name:
        raise RuntimeError(f"endpoint {name}: the update to {config_name} failed and SageMaker rolled back; it still "
                           f"serves {serving}: {endpoint.get('FailureReason') or 'no reason given'}")
    return endpoint
