"""The run's record: every number the notebook measured, as the metrics.json the README report reads."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from common import metrics, paths, report

FIGURE_TITLES = {
    "sample_images.png": "Training images",
    "training_curves.png": "Fine-tuning curves",
    "confusion_matrix.png": "Test confusion matrix",
    "confidence_over_time.png": "Captured confidence over time",
    "confidence_histogram.png": "Captured confidence histogram",
    "low_confidence.png": "Lowest-confidence captures",
    "variant_confidence.png": "Confidence by production variant",
}


def _round(value, digits=4):
    return None if value is None else round(float(value), digits)


def validation_vs_test(model: dict, test: dict) -> dict:
    """Validation and test accuracy side by side with their 95 % intervals (when the image counts are
    known: model["val_images"], test["n"]): on 150 and 200 images a few images apart is within noise,
    and the validation score is the best of the epochs, so it leans optimistic."""
    if not model.get("val_images") or not test.get("n"):
        return {}
    parts = []
    for name, acc, n in (("validation", model["val_accuracy"], model["val_images"]), ("test", test["accuracy"], test["n"])):
        correct = round(acc * n)
        low, high = metrics.accuracy_interval(correct, n)
        parts.append((name, correct, n, low, high))
    (_, vc, vn, vlo, vhi), (_, tc, tn, tlo, thi) = parts
    overlap = "overlap" if vlo <= thi and tlo <= vhi else "do not overlap"
    return {"validation vs test (95% intervals)": (
        f"validation {vc}/{vn} ({vlo:.1%}-{vhi:.1%}, the best of {model.get('epochs', 'the')} epochs, so optimistic) "
        f"vs test {tc}/{tn} ({tlo:.1%}-{thi:.1%}): the intervals {overlap}")}


@dataclass(frozen=True)
class Run:
    """Which run this is: its profile and backend, the data it used (source, stand_in, note), its figures' folder."""
    profile: str
    backend: str
    data: dict
    figures_dir: Path


@dataclass(frozen=True)
class Executions:
    """The workflow's executions: one row per test image (`results`), one per deliberately bad input."""
    results: pd.DataFrame
    bad_inputs: pd.DataFrame


@dataclass(frozen=True)
class Monitoring:
    """What monitoring measured from the captures. `captures`: records, files, accuracy, labelled; `drift`:
    (table, p-value); `variants`: (table, verdict); `alarm`: a monitor.AlarmCheck, and `monitor --check`'s
    exit code."""
    captures: dict
    drift: tuple[pd.DataFrame, float]
    variants: tuple[pd.DataFrame, str]
    alarm: Any
    alarm_exit_code: int | None


def build_metrics(run: Run, model: dict, test: dict, executions: Executions, monitoring: Monitoring, *,
                  retraining: Any, load: dict, benchmark: list[dict]) -> dict:
    """metrics.json for the run. `model`: name, train_seconds, activations_cached, val_accuracy, best_epoch,
    path, size_mb; `test`: accuracy, n, wrong, below_threshold, per_class (DataFrame); `retraining`: a
    retrain.RetrainResult or None; `load`: loadtest.run_load's summary ({} when not run); `benchmark`: the
    TorchScript vs ONNX Runtime rows ([] when not run)."""
    rows, alarm, alarm_exit_code = executions.results, monitoring.alarm, monitoring.alarm_exit_code
    status = rows["status"].value_counts()
    succeeded = rows[rows["status"] == "SUCCEEDED"]
    passed_accuracy = (float((succeeded["predicted_label"] == succeeded["true_label"]).mean())
                       if len(succeeded) and "true_label" in succeeded else None)
    summary = {
        "test accuracy": _round(test["accuracy"]),
        "test images wrong": int(test["wrong"]),
        "test images below the confidence threshold": int(test["below_threshold"]),
        "validation accuracy": _round(model["val_accuracy"]),
        **validation_vs_test(model, test),
        "train seconds": _round(model["train_seconds"], 1),
        "train seconds include the trunk pass (no cache)": not model["activations_cached"],
        "served model": model["name"],
        "served model MB": _round(model["size_mb"], 1),
        "executions (test images)": len(rows),
        "executions succeeded": int(status.get("SUCCEEDED", 0)),
        "executions failed (filter / errors)": int(status.get("FAILED", 0)),
        "accuracy of passed inferences": _round(passed_accuracy),
        "capture records": int(monitoring.captures["records"]),
        "variant verdict": monitoring.variants[1],
        "alarm": alarm.message(),
        "monitor --check exit code": alarm_exit_code,
    }
    tables = [report.table("Test set per class", test["per_class"]),
              report.table("Executions by outcome", rows.fillna({"error": "-"}).groupby(["status", "error"])
                           .size().rename("executions").reset_index()),
              report.table("Bad inputs", executions.bad_inputs[["s3_key", "status", "error"]]),
              report.table("Production variants (from capture)", monitoring.variants[0]),
              report.table("Class-share drift (earlier vs later half)", monitoring.drift[0])]
    retrain_record = None
    if retraining is not None:
        retrain_record = {k: paths.display(v) if k.endswith("_path") and v else v
                          for k, v in asdict(retraining).items()}  # no path of this machine in the record
        summary.update({"retraining: captured images used": retraining.pseudo_labelled + retraining.human_labelled,
                        "retraining: candidate test accuracy": _round(retraining.candidate_accuracy),
                        "retraining: production test accuracy": _round(retraining.current_accuracy),
                        "retraining: promoted": retraining.promoted})
        tables.append(report.table("Retraining round", pd.DataFrame(
            [(k, str(v)) for k, v in retrain_record.items() if k not in ("notes",)], columns=["measure", "value"])))
    if load:
        breakdown = load.get("breakdown_ms", {})
        summary.update({
            "load: executions / clients": f"{load['executions']} / {load['concurrency']}",
            "load: all executions terminal, no capture lost": bool(load["checks_passed"]),
            "load: executions per second": load["executions_per_s"],
            "load: p50 latency ms": load["p50_ms"],
            "endpoint images per second (ONNX Runtime, concurrent clients)": load["endpoint_images_per_s"],
        })
        tables.append(report.table("Where an execution's time goes (ms per execution, mean)", pd.DataFrame(
            list(breakdown.items()), columns=["part", "ms per execution"])))
        tables.append(report.table("Load test", pd.DataFrame(
            [(k, str(v)) for k, v in load.items() if k not in ("capture_dir", "breakdown_ms")],
            columns=["measure", "value"])))
    if benchmark:
        tables.append(report.table("TorchScript vs ONNX Runtime (same model, same machine, one run)",
                                   pd.DataFrame(benchmark)))
        ratio = next((r for r in benchmark if "speed-up" in str(r.get("runtime", ""))), None)
        if ratio:
            summary["ONNX Runtime speed-up, single image p50 (1 thread)"] = ratio.get("p50 ms (1 thread)")
    figures = [{"title": title, "path": f"figures/{name}"} for name, title in FIGURE_TITLES.items()
               if (Path(run.figures_dir) / name).exists()]
    return {
        "project": "scones_workflow",
        "title": "Scones Unlimited workflow (ONNX endpoint, Lambdas, Step Functions, monitoring, retraining)",
        "profile": run.profile,
        "backend": run.backend,
        "data": run.data,
        "headline": {"metric": "test accuracy (200 CIFAR-100 images; target 98%)",
                     "seed": "not reported (the seed deploys SageMaker's built-in image classifier)",
                     "value": f"{test['accuracy']:.1%} ({test['wrong']} test images wrong)"},
        "highlights": {"tables": ["Test set per class", "Production variants (from capture)",
                                  "TorchScript vs ONNX Runtime (same model, same machine, one run)"]},
        "summary": summary,
        "tables": tables,
        "figures": figures,
        "load": {k: paths.display(v) if k == "capture_dir" else v for k, v in (load or {}).items()},
        "benchmark": benchmark,
        "retraining": retrain_record,
        "alarm": {"in_alarm": alarm.in_alarm, "rate": _round(alarm.rate), "max_rate": alarm.max_rate,
                  "inferences": alarm.inferences, "window_start": str(alarm.window_start),
                  "window_end": str(alarm.window_end), "exit_code": alarm_exit_code},
    }
