"""metrics.json of the notebook, built by results.build_metrics from what the run measured."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from common import report
from scones_workflow.src import results
from scones_workflow.src.monitoring import monitor
from scones_workflow.src.training.retrain import RetrainResult


def _inputs(tmp_path):
    executions = pd.DataFrame({"s3_key": ["a", "b", "c"], "status": ["SUCCEEDED", "SUCCEEDED", "FAILED"],
                               "predicted_label": ["bicycle", "motorcycle", None], "true_label": ["bicycle", "bicycle",
                                                                                                  "motorcycle"],
                               "error": [None, None, "THRESHOLD_CONFIDENCE_NOT_MET"]})
    bad = pd.DataFrame({"s3_key": ["bad/empty.png"], "status": ["FAILED"], "error": ["EmptyImage"]})
    frame = pd.DataFrame({"inference_time": pd.date_range("2026-01-01", periods=4, freq="s", tz="UTC"),
                          "confidence": [0.99, 0.5, 0.99, 0.99], "predicted_label": ["bicycle"] * 4})
    alarm = monitor.check_low_confidence(frame, threshold=0.94, max_rate=0.1)
    (tmp_path / "figures").mkdir()
    (tmp_path / "figures" / "confusion_matrix.png").write_bytes(b"png")
    retraining = RetrainResult(10, 9, 1, 7, 1, 1, 0.98, 0.985, True, "c.onnx", "p.onnx", "q.csv")
    return dict(run=results.Run("tiny", "local", {"source": "fixture", "stand_in": True}, tmp_path / "figures"),
                model={"name": "lite2", "train_seconds": 12.345, "activations_cached": False, "val_accuracy": 0.97,
                       "best_epoch": 3, "size_mb": 20.1},
                test={"accuracy": 0.985, "wrong": 3, "below_threshold": 5,
                      "per_class": pd.DataFrame({"class": ["bicycle"], "recall": [0.99]})},
                executions=results.Executions(executions, bad),
                monitoring=results.Monitoring(captures={"records": 4, "accuracy": 0.75, "labelled": 4},
                                              drift=(pd.DataFrame({"class": ["bicycle"]}), 0.5),
                                              variants=(pd.DataFrame({"variant": ["Primary"], "accuracy": [0.99]}),
                                                        "Primary wins"),
                                              alarm=alarm, alarm_exit_code=1),
                retraining=retraining,
                load={"executions": 24, "concurrency": 4, "checks_passed": True, "executions_per_s": 5.0,
                      "p50_ms": 100.0, "endpoint_images_per_s": 160.0, "capture_dir": "/x",
                      "breakdown_ms": {"endpoint model": 20.0, "engine (moto Step Functions) and the rest": 80.0}},
                benchmark=[{"model": "m", "runtime": "TorchScript", "p50 ms (1 thread)": 40.0},
                           {"model": "m", "runtime": "ONNX Runtime", "p50 ms (1 thread)": 10.0},
                           {"model": "m", "runtime": "ONNX Runtime speed-up (x)", "p50 ms (1 thread)": 4.0}])


def test_metrics_carry_every_measured_part_and_survive_json(tmp_path):
    metrics = results.build_metrics(**_inputs(tmp_path))
    summary = metrics["summary"]
    assert summary["test accuracy"] == 0.985 and summary["executions succeeded"] == 2
    assert metrics["headline"]["value"].startswith("98.5% (")  # the front page's number is the run's
    assert summary["accuracy of passed inferences"] == 0.5 and summary["train seconds"] == 12.3
    assert summary["alarm"].startswith("ALARM: low-confidence rate 25.0%") and summary["monitor --check exit code"] == 1
    assert summary["retraining: promoted"] is True and summary["retraining: captured images used"] == 8
    assert summary["ONNX Runtime speed-up, single image p50 (1 thread)"] == 4.0
    assert summary["endpoint images per second (ONNX Runtime, concurrent clients)"] == 160.0
    titles = [t["title"] for t in metrics["tables"]]
    assert "Production variants (from capture)" in titles and "Retraining round" in titles
    assert any(t.startswith("Where an execution's time goes") for t in titles)
    assert metrics["figures"] == [{"title": "Test confusion matrix", "path": "figures/confusion_matrix.png"}]
    assert metrics["alarm"]["in_alarm"] and metrics["alarm"]["inferences"] == 4
    report.write_metrics(tmp_path, metrics)
    assert json.loads((tmp_path / "metrics.json").read_text())["summary"]["test images wrong"] == 3


def test_metrics_without_load_or_retraining(tmp_path):
    inputs = _inputs(tmp_path)
    inputs.update(load={}, retraining=None, benchmark=[])
    metrics = results.build_metrics(**inputs)
    assert metrics["retraining"] is None and "load: executions per second" not in metrics["summary"]



def test_validation_and_test_are_compared_with_their_intervals(tmp_path):
    inputs = _inputs(tmp_path)
    inputs["model"].update(val_accuracy=0.98, val_images=150, epochs=5)
    inputs["test"].update(accuracy=0.95, n=200)
    line = results.build_metrics(**inputs)["summary"]["validation vs test (95% intervals)"]
    assert line.startswith("validation 147/150 (94.3%-99.3%, the best of 5 epochs, so optimistic) vs test 190/200 (")
    assert line.endswith("the intervals overlap")
    inputs["model"].update(val_accuracy=1.0)
    inputs["test"].update(accuracy=0.5)
    assert results.build_metrics(**inputs)["summary"]["validation vs test (95% intervals)"].endswith("do not overlap")


def test_accuracy_interval_is_wilsons_and_rejects_impossible_counts():
    from common.metrics import accuracy_interval

    low, high = accuracy_interval(190, 200)
    assert low == pytest.approx(0.910, abs=1e-3) and high == pytest.approx(0.973, abs=1e-3)
    assert accuracy_interval(200, 200)[1] == pytest.approx(1.0)
    for bad in [(3, 0), (5, 4), (-1, 4), (1.5, 4)]:
        with pytest.raises(ValueError, match="total|correct"):
            accuracy_interval(*bad)
