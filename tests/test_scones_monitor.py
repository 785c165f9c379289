"""Monitoring: variant comparison, the low-confidence alarm (`monitor --check`), capture paths."""
from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest

from common.paths import REPO_ROOT
from scones_workflow.src.monitoring import monitor
from scones_workflow.src.serving.capture import CaptureWriter


def _frame(variant, predicted, truth, confidence, start="2026-01-01 10:00"):
    n = len(predicted)
    return pd.DataFrame({"inference_time": pd.date_range(start, periods=n, freq="s", tz="UTC"),
                         "predicted_label": predicted, "true_label": truth, "confidence": confidence,
                         "variant": variant, "inference_id": [f"{variant}{i}.png" for i in range(n)]})


def test_capture_paths_give_endpoint_and_variant():
    assert monitor.endpoint_and_variant("s3://b/data_capture/ep-1/Primary/2026/01/02/03/04-05-006-x.jsonl") == (
        "ep-1", "Primary")
    assert monitor.endpoint_and_variant("/tmp/bad.jsonl") == (None, None)


def test_variant_with_higher_labelled_accuracy_wins():
    primary = _frame("Primary", ["bicycle"] * 90, ["bicycle"] * 88 + ["motorcycle"] * 2, [0.99] * 90)
    challenger = _frame("Challenger", ["bicycle"] * 10, ["bicycle"] * 7 + ["motorcycle"] * 3, [0.7] * 10)
    table, verdict = monitor.compare_variants(pd.concat([primary, challenger]), threshold=0.94)
    rows = table.set_index("variant")
    assert rows.loc["Primary", "accuracy"] == pytest.approx(88 / 90, abs=1e-4) and rows.loc["Challenger", "labelled"] == 10
    assert rows.loc["Primary", "traffic share"] == 0.9 and rows.loc["Challenger", "low-confidence rate"] == 1.0
    assert rows.loc["Primary", "bicycle share"] == 1.0
    assert verdict.startswith("Primary wins") and "Fisher" in verdict


def test_without_labels_the_more_confident_variant_wins():
    a = _frame("A", ["bicycle"] * 10, [None] * 10, [0.99] * 9 + [0.5])
    b = _frame("B", ["bicycle"] * 10, [None] * 10, [0.5] * 5 + [0.99] * 5)
    _, verdict = monitor.compare_variants(pd.concat([a, b]), threshold=0.94)
    assert verdict.startswith("no labels: A wins")


def test_alarm_fires_above_the_rate_and_names_window_and_rate():
    frame = _frame("AllTraffic", ["bicycle"] * 100, [None] * 100, [0.5] * 20 + [0.99] * 80)
    check = monitor.check_low_confidence(frame, threshold=0.94, max_rate=0.1, window_minutes=60)
    assert check.in_alarm and check.rate == pytest.approx(0.2) and check.inferences == 100
    assert "ALARM: low-confidence rate 20.0% (20 of 100" in check.message() and "2026-01-01 10:01:39" in check.message()
    # only the last 60 s: the 20 low ones came first, so the window is clean
    recent = monitor.check_low_confidence(frame, threshold=0.94, max_rate=0.1, window_minutes=1)
    assert not recent.in_alarm and recent.low_confidence == 0 and recent.message().startswith("OK")
    few = monitor.check_low_confidence(frame.head(5), threshold=0.94, max_rate=0.1, min_inferences=10)
    assert few.rate == 1.0 and not few.in_alarm and "fewer than 10 inferences" in few.message()


def _write_captures(folder, confidences):
    writer = CaptureWriter(str(folder), "scones-endpoint", flush_seconds=60)
    for c in confidences:
        writer.record(b"\x89PNG", "image/png", json.dumps([c, 1 - c]))
    writer.close()


@pytest.mark.parametrize("confidences,code,text", [([0.99] * 9 + [0.6], 0, "OK: low-confidence rate 10.0%"),
                                                   ([0.99] * 8 + [0.6] * 2, 1, "ALARM: low-confidence rate 20.0%")])
def test_monitor_check_exits_non_zero_in_alarm(tmp_path, confidences, code, text):
    _write_captures(tmp_path, confidences)
    result = subprocess.run([sys.executable, "-m", "scones_workflow", "monitor", str(tmp_path), "--check",
                             "--max-rate", "0.1", "--min-inferences", "10"], cwd=REPO_ROOT, capture_output=True,
                            text=True)
    assert result.returncode == code and text in result.stdout + result.stderr
    assert "in the window" in result.stdout + result.stderr


def test_monitor_check_without_captures_says_so(tmp_path):
    result = subprocess.run([sys.executable, "-m", "scones_workflow", "monitor", str(tmp_path), "--check"],
                            cwd=REPO_ROOT, capture_output=True, text=True)
    assert result.returncode == 2 and "no capture records" in result.stderr
