"""Monitoring from data capture: read SageMaker capture files, plot confidence, check accuracy and drift.

`read_captures` reads what any SageMaker endpoint writes (this project's server or a real one):
JSON Lines under a local folder or an `s3://` prefix, outputs encoded as JSON, CSV or BASE64.
"""
from __future__ import annotations

import base64
import json
import os
from collections.abc import Mapping

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from scipy.stats import chi2_contingency

from common import plotting, s3io
from common.images import load_image

from .data import CLASSES

COLUMNS = ["inference_time", "event_id", "inference_id", "content_type", "probabilities", "predicted_label",
           "confidence", "input_data", "capture_file"]


def _decode(section: Mapping, field: str, where: str) -> str:
    """The `data` of an endpointInput/endpointOutput section as text (BASE64 decoded)."""
    try:
        data, encoding = section["data"], section.get("encoding", "JSON")
    except (KeyError, TypeError):
        raise ValueError(f"{where}: captureData.{field} has no 'data'") from None
    if encoding == "BASE64":
        return base64.b64decode(data).decode("utf-8")
    return data if isinstance(data, str) else json.dumps(data)


def parse_probabilities(text: str, where: str) -> list[float]:
    """The built-in classifier's output, `[0.1, 0.9]` (JSON) or `0.1,0.9` (CSV)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = [float(v) for v in text.strip().split(",")] if "," in text else None
    if isinstance(value, dict):  # e.g. {"probabilities": [...]} or {"predictions": [...]}
        value = value.get("probabilities", value.get("predictions"))
    if not isinstance(value, list) or not value or not all(isinstance(v, (int, float)) for v in value):
        raise ValueError(f"{where}: endpointOutput data {text[:80]!r} is not a list of probabilities")
    return [float(v) for v in value]


def _utc(stamp: pd.Timestamp) -> pd.Timestamp:
    return stamp.tz_convert("UTC") if stamp.tzinfo else stamp.tz_localize("UTC")


def parse_record(record: Mapping, where: str, capture_file: str = "") -> dict:
    try:
        capture, meta = record["captureData"], record["eventMetadata"]
        output = capture["endpointOutput"]
        event_id, when = meta["eventId"], meta["inferenceTime"]
    except (KeyError, TypeError) as err:
        raise ValueError(f"{where}: not a SageMaker capture record (missing {err})") from None
    probabilities = parse_probabilities(_decode(output, "endpointOutput", where), where)
    best = int(np.argmax(probabilities))
    endpoint_input = capture.get("endpointInput", {})
    return {
        "inference_time": _utc(pd.Timestamp(when)),
        "event_id": event_id,
        "inference_id": meta.get("inferenceId"),
        "content_type": endpoint_input.get("observedContentType"),
        "probabilities": probabilities,
        "predicted_label": CLASSES[best] if len(probabilities) == len(CLASSES) else str(best),
        "confidence": max(probabilities),
        # BASE64 is how SageMaker stores binary inputs such as images
        "input_data": endpoint_input.get("data") if endpoint_input.get("encoding") == "BASE64" else None,
        "capture_file": capture_file,
    }


def read_captures(location: str | os.PathLike, *, endpoint_url: str | None = None) -> pd.DataFrame:
    """Every capture record under `location` (recursive), one row per inference, sorted by time."""
    rows = []
    for path in s3io.list_files(location, ".jsonl", endpoint_url=endpoint_url):
        for number, record in enumerate(s3io.read_jsonl(path, endpoint_url=endpoint_url), start=1):
            rows.append(parse_record(record, f"{path}, record {number}", path))
    frame = pd.DataFrame(rows, columns=COLUMNS)
    return frame.sort_values("inference_time", kind="stable").reset_index(drop=True)


def attach_labels(captures: pd.DataFrame, labels: Mapping[str, int]) -> pd.DataFrame:
    """Add `true_label` from `inference_id` (the image's file name, which the classify Lambda sends)."""
    names = captures["inference_id"].fillna("").map(lambda s: s.rsplit("/", 1)[-1])
    out = captures.copy()
    out["true_label"] = names.map(lambda n: CLASSES[labels[n]] if n in labels else None)
    out["correct"] = np.where(out["true_label"].isna(), None, out["true_label"] == out["predicted_label"])
    return out


def accuracy(captures: pd.DataFrame) -> tuple[float | None, int]:
    """Accuracy over the captures whose true label is known, and how many that is."""
    known = captures.dropna(subset=["true_label"])
    if known.empty:
        return None, 0
    return float((known["true_label"] == known["predicted_label"]).mean()), len(known)


def low_confidence(captures: pd.DataFrame, threshold: float) -> pd.DataFrame:
    return captures[captures["confidence"] < threshold].sort_values("confidence")


def class_share_drift(captures: pd.DataFrame, split_at: pd.Timestamp | None = None) -> tuple[pd.DataFrame, float]:
    """Share of each predicted class before and after `split_at` (default: the earlier and the later half of
    the records, by time), and the chi-square test's p-value; a small p-value means the class mix shifted."""
    ordered = captures.sort_values("inference_time", kind="stable")
    if split_at is None:  # by position: capture times have whole seconds, so many records tie
        later = np.arange(len(ordered)) >= len(ordered) // 2
    else:
        later = (ordered["inference_time"] >= split_at).to_numpy()
    window = np.where(later, "later", "earlier")
    counts = pd.crosstab(ordered["predicted_label"].to_numpy(), window)
    counts = counts.reindex(index=list(CLASSES), columns=["earlier", "later"], fill_value=0)
    testable = (counts.sum(axis=0) > 0).all() and (counts.sum(axis=1) > 0).sum() > 1
    p_value = float(chi2_contingency(counts.to_numpy())[1]) if testable else 1.0
    shares = (counts / counts.sum(axis=0).replace(0, 1)).round(4)
    table = pd.DataFrame({"class": counts.index, "earlier count": counts["earlier"].to_numpy(),
                          "earlier share": shares["earlier"].to_numpy(), "later count": counts["later"].to_numpy(),
                          "later share": shares["later"].to_numpy()})
    return table, p_value


def thumbnails(captures: pd.DataFrame, *, limit: int = 10, title: str = "", save_to: str | None = None
               ) -> Figure | None:
    """The captured input images of `captures` with prediction and confidence; None when there are none."""
    shown = captures.dropna(subset=["input_data"]).head(limit)
    if shown.empty:
        return None
    images = [np.asarray(load_image(base64.b64decode(d), name=f"captured input of event {e}"))
              for d, e in zip(shown["input_data"], shown["event_id"])]
    truth = shown["true_label"] if "true_label" in shown else [None] * len(shown)
    labels = [f"{p} {c:.2f}" + (f"\n(true {t})" if isinstance(t, str) else "")
              for p, c, t in zip(shown["predicted_label"], shown["confidence"], truth)]
    return plotting.image_grid(images, labels, ncols=5, title=title, save_to=save_to)
