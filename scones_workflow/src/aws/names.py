"""What the AWS modules share: this deploy's resource names (`<endpoint>-<UTC timestamp>`, so a re-run never
reuses one), which names deploy made, and telling "there is none" from a real error."""
from __future__ import annotations

import datetime as dt
import re

from botocore.exceptions import ClientError

NAME_LIMIT = 63  # SageMaker's limit for job, model, config and endpoint names


def timestamp(now: dt.datetime | None = None) -> str:
    """UTC to the millisecond, e.g. 20261122-041503-123: sorts in time order, unique per deploy."""
    now = now or dt.datetime.now(dt.timezone.utc)
    return now.strftime("%Y%m%d-%H%M%S-") + f"{now.microsecond // 1000:03d}"


STAMP_PATTERN = r"\d{8}-\d{6}-\d{3}"


def versioned_name(base: str, stamp: str) -> str:
    """`<base>-<stamp>`: the name of this deploy's training job, model and endpoint config."""
    name = f"{base}-{stamp}"
    if len(name) > NAME_LIMIT or not re.fullmatch(r"[a-zA-Z0-9](-*[a-zA-Z0-9])*", name):
        raise ValueError(f"SageMaker name {name!r} is invalid or longer than {NAME_LIMIT} characters: "
                         f"use a shorter --endpoint-name (at most {NAME_LIMIT - len(stamp) - 1} characters)")
    return name


def is_ours(name: str, endpoint_name: str) -> bool:
    """A model or endpoint config that deploy made for this endpoint (or the seed's fixed name)."""
    return name == endpoint_name or re.fullmatch(re.escape(endpoint_name) + "-" + STAMP_PATTERN, name) is not None


def missing(err: ClientError) -> bool:
    """The error says the thing asked for does not exist (a no-op for teardown, None for a describe)."""
    message = err.response["Error"].get("Message", "").lower()
    code = err.response["Error"].get("Code", "")
    return code in ("NoSuchBucket", "404", "NotFound", "ResourceNotFound") or any(
        text in message for text in ("could not find", "does not exist", "not found"))
