"""The endpoint: SageMaker models, an endpoint config (weighted production variants, 100 % data capture),
and the switch of an existing endpoint to a new config (update_endpoint: blue/green, never recreated)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from ..lambdas.constants import VARIANTS
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


def endpoint_config_request(name: str, variants: list[Variant], capture_s3: str,
                            instance_type: str = "ml.m5.xlarge") -> dict:
    """Production variants (weights are relative) and data capture of every request, input and output."""
    return {
        "EndpointConfigName": name,
        "ProductionVariants": [{"VariantName": v.name, "ModelName": v.model_name, "InitialInstanceCount": 1,
                                "InstanceType": instance_type, "InitialVariantWeight": float(v.weight)}
                               for v in variants],
        "DataCaptureConfig": {"EnableCapture": True, "InitialSamplingPercentage": 100, "DestinationS3Uri": capture_s3,
                              "CaptureOptions": [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}],
                              "CaptureContentTypeHeader": {"JsonContentTypes": ["application/json"]}},
    }


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


def switch_endpoint(sm: Any, *, name: str, config_name: str, wait: bool = True) -> str:
    """Create the endpoint, or move an existing one to `config_name` with update_endpoint (blue/green).
    Returns "created", "updated" or "recreated" (a Failed endpoint cannot be updated, only replaced)."""
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
            sm.get_waiter("endpoint_in_service").wait(EndpointName=name)
        sm.update_endpoint(EndpointName=name, EndpointConfigName=config_name)
        action = "updated"
    if wait:
        sm.get_waiter("endpoint_in_service").wait(EndpointName=name)
    return action
