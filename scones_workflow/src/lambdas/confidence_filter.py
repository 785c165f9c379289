"""confidenceFilter: pass the event on only if some class probability reaches `THRESHOLD_CONFIDENCE`.

Otherwise raise THRESHOLD_CONFIDENCE_NOT_MET (the seed's error), which fails the execution so that
a human looks at the image instead of a driver getting the wrong delivery radius.
"""
from __future__ import annotations

import os

from .events import THRESHOLD_CONFIDENCE_NOT_MET, InvalidEvent, body_of, ok, require

DEFAULT_THRESHOLD = 0.94


def threshold() -> float:
    raw = os.environ.get("THRESHOLD_CONFIDENCE", str(DEFAULT_THRESHOLD))
    try:
        value = float(raw)
    except ValueError:
        raise InvalidEvent(f"environment variable THRESHOLD_CONFIDENCE={raw!r} is not a number") from None
    if not 0 <= value <= 1:
        raise InvalidEvent(f"environment variable THRESHOLD_CONFIDENCE={value} must lie in [0, 1]")
    return value


def lambda_handler(event: dict, context: object) -> dict:
    body = body_of(event)
    inferences = require(body, "inferences", list)
    if not inferences or not all(isinstance(p, (int, float)) for p in inferences):
        raise InvalidEvent(f"field 'inferences' must be a non-empty list of probabilities, got {inferences!r:.80}")
    limit = threshold()
    if max(inferences) < limit:
        raise THRESHOLD_CONFIDENCE_NOT_MET(
            f"{body.get('s3_key', 'image')}: highest probability {max(inferences):.4f} is below {limit}")
    return ok(body)
