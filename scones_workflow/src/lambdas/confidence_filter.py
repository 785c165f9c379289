"""confidenceFilter: pass the event on only if some class probability reaches `THRESHOLD_CONFIDENCE`.

Otherwise raise THRESHOLD_CONFIDENCE_NOT_MET (the seed's error), which fails the execution so that
a human looks at the image instead of a driver getting the wrong delivery radius.

Every inference it sees is also a CloudWatch metric, written as one line of the embedded metric
format (EMF) to stdout: Lambda sends stdout to CloudWatch Logs, and CloudWatch extracts the metrics
from EMF lines by itself (no `cloudwatch:PutMetricData` permission, no API call, no latency).
template.yaml's alarm watches the low-confidence rate computed from them.
"""
from __future__ import annotations

import json
import os
import sys
import threading
import time

from .constants import (CLASS_NAMES, METRIC_CONFIDENCE, METRIC_INFERENCES, METRIC_LOW_CONFIDENCE, METRIC_NAMESPACE,
                        THRESHOLD)
from .events import THRESHOLD_CONFIDENCE_NOT_MET, InvalidEvent, body_of, ok, require

DEFAULT_THRESHOLD = THRESHOLD


def threshold() -> float:
    raw = os.environ.get("THRESHOLD_CONFIDENCE", str(DEFAULT_THRESHOLD))
    try:
        value = float(raw)
    except ValueError:
        raise InvalidEvent(f"environment variable THRESHOLD_CONFIDENCE={raw!r} is not a number") from None
    if not 0 <= value <= 1:
        raise InvalidEvent(f"environment variable THRESHOLD_CONFIDENCE={value} must lie in [0, 1]")
    return value


def metric_record(body: dict, confidence: float, limit: float, *, now_ms: int | None = None) -> dict:
    """One EMF record: Inferences=1, LowConfidence=0/1 and Confidence, per endpoint and per endpoint x variant.

    Format: https://docs.aws.amazon.com/AmazonCloudWatch/latest/monitoring/CloudWatch_Embedded_Metric_Format_Specification.html
    (`_aws.CloudWatchMetrics[].Namespace/Dimensions/Metrics`, the values as top-level members)."""
    endpoint = os.environ.get("ENDPOINT_NAME", "unknown")
    variant = str(body.get("variant") or "unknown")
    inferences = body["inferences"]
    best = max(range(len(inferences)), key=inferences.__getitem__)
    return {
        "_aws": {"Timestamp": now_ms if now_ms is not None else int(time.time() * 1000),
                 "CloudWatchMetrics": [{
                     "Namespace": METRIC_NAMESPACE,
                     "Dimensions": [["EndpointName"], ["EndpointName", "Variant"]],
                     "Metrics": [{"Name": METRIC_INFERENCES, "Unit": "Count"},
                                 {"Name": METRIC_LOW_CONFIDENCE, "Unit": "Count"},
                                 {"Name": METRIC_CONFIDENCE, "Unit": "None"}]}]},
        "EndpointName": endpoint, "Variant": variant,
        METRIC_INFERENCES: 1, METRIC_LOW_CONFIDENCE: int(confidence < limit), METRIC_CONFIDENCE: confidence,
        # properties (searchable in Logs Insights, not metrics)
        "threshold": limit, "s3_key": str(body.get("s3_key", "")),
        "predicted_label": CLASS_NAMES[best] if best < len(CLASS_NAMES) else str(best),
    }


_write_lock = threading.Lock()


def emit(record: dict) -> None:
    """One JSON line on stdout, which CloudWatch Logs reads EMF from; `$METRICS_FILE` (set by the local
    workflow) appends the line to that file instead, so local runs keep their metrics out of the console."""
    line = json.dumps(record, separators=(",", ":")) + "\n"
    path = os.environ.get("METRICS_FILE")
    with _write_lock:
        if path:
            with open(path, "a", encoding="utf-8") as out:
                out.write(line)
        else:
            sys.stdout.write(line)
            sys.stdout.flush()


def lambda_handler(event: dict, context: object) -> dict:
    body = body_of(event)
    inferences = require(body, "inferences", list)
    if not inferences or not all(isinstance(p, (int, float)) and not isinstance(p, bool) for p in inferences):
        raise InvalidEvent(f"field 'inferences' must be a non-empty list of probabilities, got {inferences!r:.80}")
    limit = threshold()
    confidence = float(max(inferences))
    emit(metric_record(body, confidence, limit))
    if confidence < limit:
        raise THRESHOLD_CONFIDENCE_NOT_MET(
            f"{body.get('s3_key', 'image')}: highest probability {confidence:.4f} is below {limit}")
    return ok(body)
