"""classify: send the image to the SageMaker endpoint (`ENDPOINT_NAME`) and return its `inferences`.

`ENDPOINT_URL` points the runtime client at the local inference server instead of AWS. The client
does not retry (the state machine does, on EndpointUnavailable) and times out quickly, so a down
or stuck endpoint ends in a clean failure instead of a hung execution.
"""
from __future__ import annotations

import base64
import binascii
import functools
import json
import os

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError, ConnectionError, ReadTimeoutError

from .events import EndpointError, EndpointUnavailable, InvalidEvent, InvalidImage, body_of, ok, require


@functools.lru_cache(maxsize=4)
def _runtime(endpoint_url: str | None, read_timeout: float):
    config = Config(connect_timeout=2, read_timeout=read_timeout, retries={"total_max_attempts": 1})
    return boto3.client("sagemaker-runtime", endpoint_url=endpoint_url, config=config)


def _inference_id(body: dict) -> dict:
    """The image's file name as InferenceId: data capture records it, so monitoring can join true labels."""
    name = str(body.get("s3_key", "")).rsplit("/", 1)[-1][:64]
    return {"InferenceId": name} if name.strip() else {}


def lambda_handler(event: dict, context: object) -> dict:
    body = body_of(event)
    try:
        image = base64.b64decode(require(body, "image_data", str), validate=True)
    except binascii.Error as err:
        raise InvalidEvent(f"field 'image_data' is not valid base64: {err}") from None
    endpoint = os.environ.get("ENDPOINT_NAME")
    if not endpoint:
        raise InvalidEvent("environment variable ENDPOINT_NAME is not set")
    runtime = _runtime(os.environ.get("ENDPOINT_URL") or None, float(os.environ.get("ENDPOINT_TIMEOUT", "10")))
    try:
        response = runtime.invoke_endpoint(EndpointName=endpoint, ContentType=body.get("content_type", "image/png"),
                                           Accept="application/json", Body=image, **_inference_id(body))
    except (ConnectionError, ReadTimeoutError) as err:  # refused, DNS, connect or read timeout
        raise EndpointUnavailable(f"endpoint {endpoint}: {err}") from None
    except ClientError as err:
        error = err.response.get("Error", {})
        if error.get("Code") == "ModelError" and str(err.response.get("OriginalStatusCode", "")).startswith("4"):
            raise InvalidImage(f"endpoint {endpoint} rejected {body.get('s3_key', 'the image')}: "
                               f"{err.response.get('OriginalMessage') or error.get('Message')}") from None
        raise EndpointError(f"endpoint {endpoint}: {error.get('Code')}: {error.get('Message')}") from None
    inferences = json.loads(response["Body"].read())
    # Which production variant answered (two-variant endpoints): the filter's metrics are split by it.
    variant = response.get("InvokedProductionVariant")  # the X-Amzn-Invoked-Production-Variant header
    return ok({**body, "inferences": inferences, **({"variant": variant} if variant else {})})
