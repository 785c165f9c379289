"""serializeImageData: read the image at `s3_bucket`/`s3_key` and return it base64-encoded.

Checks what can be checked without an image library (existence, size, PNG/JPEG signature), so
the common bad inputs fail here with a named error instead of deep in the endpoint.
"""
from __future__ import annotations

import base64
import functools
import os

import boto3
from botocore.exceptions import ClientError

from .events import EmptyImage, ImageNotFound, ImageTooLarge, NotAnImage, body_of, ok, require

# Step Functions passes at most 256 KB between states; base64 makes 4 bytes of 3.
MAX_IMAGE_BYTES = 180_000
SIGNATURES = {b"\x89PNG\r\n\x1a\n": "image/png", b"\xff\xd8\xff": "image/jpeg"}


@functools.lru_cache(maxsize=4)
def _s3(endpoint_url: str | None):
    return boto3.client("s3", endpoint_url=endpoint_url)


def content_type(data: bytes) -> str | None:
    return next((kind for magic, kind in SIGNATURES.items() if data.startswith(magic)), None)


def lambda_handler(event: dict, context: object) -> dict:
    body = body_of(event)
    bucket, key = require(body, "s3_bucket", str), require(body, "s3_key", str)
    where = f"s3://{bucket}/{key}"
    s3 = _s3(os.environ.get("S3_ENDPOINT_URL") or None)
    try:
        response = s3.get_object(Bucket=bucket, Key=key)
    except ClientError as err:
        code = err.response["Error"]["Code"]
        if code in ("404", "NoSuchKey", "NoSuchBucket", "NotFound"):
            raise ImageNotFound(f"{where} does not exist") from None
        raise
    if response["ContentLength"] > MAX_IMAGE_BYTES:  # checked before the body is read
        response["Body"].close()
        raise ImageTooLarge(f"{where} has {response['ContentLength']:,} bytes; the limit is {MAX_IMAGE_BYTES:,}")
    data = response["Body"].read()
    if not data:
        raise EmptyImage(f"{where} is empty (0 bytes)")
    kind = content_type(data)
    if kind is None:
        raise NotAnImage(f"{where} is not a PNG or JPEG (first bytes {data[:8]!r})")
    return ok({"image_data": base64.b64encode(data).decode("ascii"), "content_type": kind,
               "s3_bucket": bucket, "s3_key": key, "inferences": []})
