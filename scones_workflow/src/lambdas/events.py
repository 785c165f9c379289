"""What the three Lambda functions share: the event shape and the named errors.

The workflow's event is the seed's: `{"image_data": "", "s3_bucket": ..., "s3_key": ...}` goes in,
and each function returns `{"statusCode": 200, "body": {...}}` whose `body` the next one reads.
Step Functions names a failed task by the exception's class name (`errorType`), so each failure
mode is its own class: the execution's error says what went wrong, its cause says where.

This package is the deployment zip (`lambdas/*.py`; stdlib + boto3 only, both in the Lambda
runtime); the handlers are `lambdas.<module>.lambda_handler`.
"""
from __future__ import annotations

import json
from typing import Any


class InvalidEvent(ValueError):
    """The event lacks a field, or a field has the wrong type."""


class ImageNotFound(LookupError):
    """The S3 object (or its bucket) does not exist."""


class EmptyImage(ValueError):
    """The S3 object has 0 bytes."""


class NotAnImage(ValueError):
    """The object's first bytes are not a PNG or JPEG signature."""


class ImageTooLarge(ValueError):
    """The object is too big to pass through Step Functions (256 KB per state, base64 adds a third)."""


class InvalidImage(ValueError):
    """The endpoint rejected the image (it could not decode it, or it is too large to decode)."""


class EndpointUnavailable(ConnectionError):
    """The endpoint could not be reached or did not answer in time; the state machine retries this."""


class EndpointError(RuntimeError):
    """The endpoint answered with an error other than a rejected image."""


class THRESHOLD_CONFIDENCE_NOT_MET(Exception):  # noqa: N801 - the seed's error name, kept for its alarms
    """No class probability reaches the confidence threshold."""


def body_of(event: Any) -> dict:
    """The payload a function works on: `event["body"]` (a dict, or the seed's JSON string)."""
    if not isinstance(event, dict):
        raise InvalidEvent(f"the event must be a JSON object, got {type(event).__name__}")
    body = event.get("body", event)
    if isinstance(body, str):
        try:
            body = json.loads(body)
        except json.JSONDecodeError as err:
            raise InvalidEvent(f"field 'body' is a string but not JSON: {err}") from None
    if not isinstance(body, dict):
        raise InvalidEvent(f"field 'body' must be a JSON object, got {type(body).__name__}")
    return body


def require(body: dict, field: str, kind: type) -> Any:
    """`body[field]`, checked to be a `kind`; InvalidEvent names the field otherwise."""
    if field not in body:
        raise InvalidEvent(f"the event has no field {field!r} (fields: {sorted(body)})")
    value = body[field]
    if not isinstance(value, kind) or (kind is str and not value):
        raise InvalidEvent(f"field {field!r} must be a non-empty {kind.__name__}, got {value!r:.80}")
    return value


def ok(body: dict) -> dict:
    return {"statusCode": 200, "body": body}
