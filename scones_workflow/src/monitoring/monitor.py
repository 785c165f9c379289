"""Monitoring from data capture: read SageMaker capture files, plot confidence, check accuracy and drift,
compare production variants, and raise the low-confidence alarm.

`read_captures` reads what any SageMaker endpoint writes (this project's server or a real one):
JSON Lines under a local folder or an `s3://` prefix, outputs encoded as JSON, CSV or BASE64. The
endpoint and variant of each record come from its path, `<endpoint>/<variant>/yyyy/mm/dd/hh/<file>`.
"""
from __future__ import annotations

import base64
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from scipy.stats import chi2_contingency, fisher_exact

from common import plotting, s3io
from common.images import load_image

from ..data import CLASSES

COLUMNS = ["inference_time", "event_id", "inference_id", "content_type", "probabilities", "predicted_label",
           "confidence", "input_data", "capture_file", "endpoint", "variant"]
# <endpoint>/<variant>/yyyy/mm/dd/hh/<file>.jsonl, SageMaker's capture layout
CAPTURE_PATH = re.compile(r"(?:^|/)([^/]+)/([^/]+)/\d{4}/\d{2}/\d{2}/\d{2}/[^/]+\.jsonl$")


def endpoint_and_variant(capture_file: str) -> tuple[str | None, str | None]:
    match = CAPTURE_PATH.search(str(capture_file).replace("\\", "/"))
    return (match.group(1), match.group(2)) if match else (None, None)


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
    endpoint, variant = endpoint_and_variant(capture_file)
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
        "endpoint": endpoint,
        "variant": variant,
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


# ----------------------------------------------------------------------------- variants

def compare_variants(captures: pd.DataFrame, threshold: float) -> tuple[pd.DataFrame, str]:
    """One row per production variant: traffic, accuracy where labels are known, confidence, low-confidence
    rate and class share; and a sentence saying which variant wins and how sure that is.

    The winner has the higher accuracy on labelled captures (Fisher's exact test says whether the
    difference could be chance); without labels, the lower low-confidence rate."""
    if captures.empty:
        raise ValueError("no captures to compare")
    frame = captures.assign(variant=captures["variant"].fillna("(unknown)"))
    rows = []
    for name, group in frame.groupby("variant", sort=True):
        known = group.dropna(subset=["true_label"]) if "true_label" in group else group.iloc[:0]
        correct = int((known["true_label"] == known["predicted_label"]).sum()) if len(known) else 0
        row = {"variant": name, "inferences": len(group), "traffic share": round(len(group) / len(frame), 4),
               "labelled": len(known), "accuracy": round(correct / len(known), 4) if len(known) else None,
               "correct": correct,
               "mean confidence": round(float(group["confidence"].mean()), 4),
               "low-confidence rate": round(float((group["confidence"] < threshold).mean()), 4)}
        for cls in CLASSES:
            row[f"{cls} share"] = round(float((group["predicted_label"] == cls).mean()), 4)
        rows.append(row)
    table = pd.DataFrame(rows)
    if len(table) < 2:
        return table, f"only one variant ({table['variant'].iloc[0]}) in the captures: nothing to compare"
    with_labels = table[table["labelled"] > 0]
    if len(with_labels) >= 2:
        ranked = with_labels.sort_values(["accuracy", "low-confidence rate"], ascending=[False, True])
        best, second = ranked.iloc[0], ranked.iloc[1]
        p_value = float(fisher_exact([[best["correct"], best["labelled"] - best["correct"]],
                                      [second["correct"], second["labelled"] - second["correct"]]])[1])
        if best["accuracy"] == second["accuracy"]:
            verdict = (f"tie on accuracy ({best['accuracy']:.2%}); {best['variant']} wins on the low-confidence rate "
                       f"({best['low-confidence rate']:.1%} vs {second['low-confidence rate']:.1%})")
        else:
            verdict = (f"{best['variant']} wins: accuracy {best['accuracy']:.2%} on {best['labelled']} labelled vs "
                       f"{second['accuracy']:.2%} on {second['labelled']} for {second['variant']}")
        significance = "significant" if p_value < 0.05 else "not significant: collect more labelled traffic"
        return table, f"{verdict} (Fisher's exact test p = {p_value:.3f}, {significance})"
    ranked = table.sort_values(["low-confidence rate", "mean confidence"], ascending=[True, False])
    best, second = ranked.iloc[0], ranked.iloc[1]
    return table, (f"no labels: {best['variant']} wins on confidence (low-confidence rate "
                   f"{best['low-confidence rate']:.1%} vs {second['low-confidence rate']:.1%} for {second['variant']})")


# ----------------------------------------------------------------------------- alarm

@dataclass
class AlarmCheck:
    """The low-confidence alarm over one window of captures (the local twin of the CloudWatch alarm)."""
    window_start: pd.Timestamp
    window_end: pd.Timestamp
    inferences: int
    low_confidence: int
    rate: float
    max_rate: float
    threshold: float
    min_inferences: int = 1

    @property
    def in_alarm(self) -> bool:
        return self.inferences >= max(1, self.min_inferences) and self.rate > self.max_rate

    def message(self) -> str:
        window = f"{self.window_start:%Y-%m-%d %H:%M:%S} to {self.window_end:%Y-%m-%d %H:%M:%S} UTC"
        state = "ALARM" if self.in_alarm else "OK"
        relation = "above" if self.in_alarm else "within"
        if not self.in_alarm and self.rate > self.max_rate:
            relation = f"above but with fewer than {self.min_inferences} inferences, under"
        return (f"{state}: low-confidence rate {self.rate:.1%} ({self.low_confidence} of {self.inferences} "
                f"inferences below confidence {self.threshold}) in the window {window}, {relation} the "
                f"{self.max_rate:.1%} limit")


def check_low_confidence(captures: pd.DataFrame, *, threshold: float, max_rate: float, window_minutes: float = 60,
                         end: pd.Timestamp | None = None, min_inferences: int = 1) -> AlarmCheck:
    """The share of inferences below `threshold` in the `window_minutes` before `end` (default: the latest
    capture); in alarm when it exceeds `max_rate` over at least `min_inferences` inferences (as the
    CloudWatch alarm in template.yaml)."""
    if not 0 <= max_rate <= 1:
        raise ValueError(f"max_rate must lie in [0, 1], got {max_rate}")
    if captures.empty:
        now = pd.Timestamp.now(tz="UTC")
        return AlarmCheck(now, now, 0, 0, 0.0, max_rate, threshold, min_inferences)
    end = _utc(pd.Timestamp(end)) if end is not None else captures["inference_time"].max()
    start = end - pd.Timedelta(minutes=window_minutes)
    window = captures[(captures["inference_time"] > start) & (captures["inference_time"] <= end)]
    low = int((window["confidence"] < threshold).sum())
    rate = low / len(window) if len(window) else 0.0
    return AlarmCheck(start, end, len(window), low, rate, max_rate, threshold, min_inferences)
