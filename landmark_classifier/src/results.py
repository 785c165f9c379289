"""The project's record: the metrics.json the three notebooks build together and the README report reads.

Each notebook adds its own summary lines, tables and figures to the same file (`update_metrics`),
so a run of the notebooks in order leaves one record of the run.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from common import report
from landmark_classifier.src.config import PROJECT
from landmark_classifier.src.data import GLDV2_FOLDER, LandmarkData
from landmark_classifier.src.evaluate import Evaluation
from landmark_classifier.src.export import Exported
from landmark_classifier.src.transfer import Comparison, TransferConfig

TITLE = "Landmark classification (CNN from scratch, transfer learning, ONNX predictor)"


def data_summary(data: LandmarkData) -> dict[str, Any]:
    """What metrics.json (and so the README) says about the data a run used."""
    return {"source": data.source, "stand_in": data.stand_in, "note": data.note, "dataset": data.name,
            "classes": len(data.class_names), "images": data.counts or {}}


def update_metrics(report_dir: str | os.PathLike, *, profile: str, data: LandmarkData,
                   summary: dict[str, Any] | None = None, tables: list[dict] | None = None,
                   figures: list[dict] | None = None, **sections: Any) -> Path:
    """Read-modify-write the project's metrics.json: each notebook adds its own entries.

    Tables and figures replace those of the same title (re-running one notebook does not
    duplicate them); a file left by a run of another profile is started afresh."""
    folder = Path(report_dir)
    metrics: dict[str, Any] = {}
    if (folder / "metrics.json").exists():
        metrics = report.read_metrics(folder)
        if metrics.get("profile") != profile:
            metrics = {}
    metrics.update(project=PROJECT, title=TITLE, profile=profile, data=data_summary(data))
    metrics.setdefault("summary", {}).update(summary or {})
    for key, new in (("tables", tables or []), ("figures", figures or [])):
        titles = {item["title"] for item in new}
        metrics[key] = [item for item in metrics.get(key, []) if item["title"] not in titles] + new
    metrics.update(sections)
    return report.write_metrics(folder, metrics)


CANDIDATES_TITLE = "Transfer learning: candidates, scored on validation (test used once, for the chosen one)"


@dataclass
class Shipped:
    """The model the file holds: the chosen recipe retrained on photos and thumbnails for the open set."""
    label: str
    valid_accuracy: float
    train_seconds: float
    upright: dict | None = None  # the file's orientation rule (`orientation.Orientation.metadata`), if it has one
    fusion: dict | None = None   # how it names photos (`fusion.report_note`): what chose it, what it did on validation
    refit: dict | None = None    # refitted on training + validation photos: on how many, what was kept, seconds


@dataclass
class TransferRun:
    """What `transfer_learning.ipynb` measured, for `record_transfer`."""
    comparison: Comparison
    config: TransferConfig
    comparison_seconds: float
    exported: Exported
    test: Evaluation  # the chosen model, scored once through the exported file
    test_paths: list[Path]
    labels: np.ndarray
    names: list[str]  # display names, by class index
    figures: list[dict]  # {"title", "path"} of the fine-tuning curves and the test figures
    shipped: Shipped | None = None  # None: the file holds the chosen candidate itself

    @property
    def chosen_label(self) -> str:
        if self.shipped is not None:
            return self.shipped.label
        chosen = self.comparison.selection.chosen
        return f"{chosen.backbone}, {chosen.method}"

    @property
    def valid_accuracy(self) -> float:
        return self.comparison.selection.chosen.valid_accuracy if self.shipped is None else self.shipped.valid_accuracy

    @property
    def train_seconds(self) -> float:
        return self.comparison.selection.chosen.train_seconds if self.shipped is None else self.shipped.train_seconds

    def candidates_table(self) -> pd.DataFrame:
        """Every candidate's validation scores, the chosen one marked, and the backbones not run."""
        selection = self.comparison.selection
        table = pd.DataFrame([c.row() for c in selection.candidates])
        table["chosen"] = [c is selection.chosen for c in selection.candidates]
        skipped = [{"backbone": name, "method": "(not run)", "detail": why}
                   for name, why in self.comparison.skipped.items()]
        return pd.concat([table, pd.DataFrame(skipped)], ignore_index=True)


def record_transfer(report_dir: str | os.PathLike, profile: str, data: LandmarkData, run: TransferRun) -> Path:
    """Add the transfer-learning part (headline, summary, tables, figures, details) to metrics.json."""
    selection, result = run.comparison.selection, run.test
    scratch = report.read_metrics(report_dir).get("summary", {}).get("scratch CNN test accuracy")
    data_label = ("real GLDv2 photos, 12 landmarks (not the Udacity 50)" if data.name == GLDV2_FOLDER
                  else data.source.split(";")[0])
    per_class = result.per_class
    update_metrics(
        report_dir, profile=profile, data=data,
        headline={"metric": "test accuracy: transfer learning (chosen on validation) / scratch CNN",
                  "seed": "75% / 51% on the Udacity 50 classes (not comparable)",
                  "value": f"{result.accuracy:.1%} / " + ("n/a" if scratch is None else f"{scratch:.1%}"),
                  "data": data_label},
        highlights={"tables": [CANDIDATES_TITLE, "Scratch CNN",
                               "Predictor: TorchScript vs ONNX Runtime (CPU, one run; last row: ratios)"],
                    "figures": ["Transfer: confusion matrix (test)", "Transfer: misclassified test photos",
                                "Scratch CNN: loss, accuracy and learning rate"]},
    )
    exported = run.exported
    return update_metrics(
        report_dir, profile=profile, data=data,
        summary={**result.summary("transfer learning"),
                 "transfer learning model": run.chosen_label,
                 "transfer learning validation accuracy": round(run.valid_accuracy, 4),
                 "transfer learning training seconds": round(run.train_seconds, 1),
                 "transfer learning comparison seconds (all candidates)": run.comparison_seconds,
                 "transfer learning test scored on": f"{exported.onnx_path.name} through predictor.py, from the photo files",
                 **_upright_summary(run.shipped), **_fusion_summary(run.shipped), **_refit_summary(run.shipped)},
        tables=[report.table(CANDIDATES_TITLE, run.candidates_table()),
                report.table("Transfer learning: test accuracy per class", per_class.round(4))],
        figures=run.figures,
        transfer={"chosen": run.chosen_label, "selection": selection.reason, "test_accuracy": round(result.accuracy, 4),
                  "test_scored_on": "the exported ONNX file (predictor.py)",
                  "validation_accuracy": round(run.valid_accuracy, 4), "train_seconds": round(run.train_seconds, 1),
                  "candidates": [c.row() for c in selection.candidates], "skipped": run.comparison.skipped,
                  "config": {k: str(v) for k, v in run.config.__dict__.items()},
                  "predictor": {"onnx": exported.onnx_path.name, "onnx_mb": exported.onnx_mb,
                                "torchscript": exported.torchscript_path.name, "torchscript_mb": exported.torchscript_mb,
                                "torchscript_export": exported.torchscript_how, "metadata": exported.metadata},
                  "per_class_accuracy": dict(zip(per_class["class"], per_class["accuracy"].round(4).tolist())),
                  "misclassified": [{"photo": run.test_paths[i].name, "true": run.names[run.labels[i]],
                                     "predicted": run.names[result.predicted[i]]} for i in result.wrong]},
    )


def _fusion_summary(shipped: Shipped | None) -> dict:
    """How the file names photos (fusion.py), for the summary."""
    return {} if shipped is None or not shipped.fusion else {
        f"naming: {key}": value for key, value in shipped.fusion.items()}


def _refit_summary(shipped: Shipped | None) -> dict:
    """The refit on the training and validation photos, for the summary."""
    return {} if shipped is None or not shipped.refit else {
        f"refit: {key}": value for key, value in shipped.refit.items()}


def _upright_summary(shipped: Shipped | None) -> dict:
    """The sideways-photo step's validation numbers (orientation.py), for the summary."""
    if shipped is None or not shipped.upright:
        return {}
    fit, choice = shipped.upright["fit"], shipped.upright["chosen on validation"]
    return {"sideways photos: orientation head validation accuracy (four turns)": fit["validation accuracy"],
            "sideways photos: run again below p(upright)": shipped.upright["rerun_below"],
            "sideways photos: validation photos run again": choice["validation photos run again"],
            "transfer learning validation accuracy without the sideways step":
                choice["validation photos (no thumbnails): accuracy without"]}


OPEN_SET_TITLE = "Open set: held-out-class protocol, mean of the rotations (method chosen on validation)"


@dataclass
class OpenSetRun:
    """What the notebook's open-set sections measured, for `record_open_set`."""
    methods: list[dict]        # openset.summarise: one row per method
    rotations: list[dict]      # openset.heldout_protocol's rows
    picked: dict               # the row chosen on validation
    rule: Any                  # export.OpenSetRule shipped in the file
    served: Any                # openset.OpenSetReport of the shipped file
    sources: dict[str, str]    # the non-landmark photos used, and how
    seconds: float
    figures: list[dict]


def record_open_set(report_dir: str | os.PathLike, profile: str, data: LandmarkData, run: OpenSetRun) -> Path:
    """Add the open-set part (protocol table, the shipped file's answers, calibration) to metrics.json."""
    chosen = run.picked
    summary = {**run.served.summary,
               "open set (protocol, test): FPR at 95% TPR against held-out landmarks":
                   chosen["test: other landmarks fpr_at_tpr"],
               "open set (protocol, test): AUROC against held-out landmarks": chosen["test: other landmarks auroc"],
               "open set seconds (protocol, shipped model, scoring)": round(run.seconds, 1)}
    update_metrics(report_dir, profile=profile, data=data)
    metrics = report.read_metrics(report_dir)
    highlights = metrics.get("highlights", {})
    highlights["tables"] = list(dict.fromkeys([*highlights.get("tables", []), OPEN_SET_TITLE,
                                               "Open set: the shipped file's answers (test photos, thumbnails, no-landmark photos)"]))
    highlights["figures"] = list(dict.fromkeys([*highlights.get("figures", []), "Transfer: reliability diagram (test)"]))
    return update_metrics(
        report_dir, profile=profile, data=data, summary=summary, highlights=highlights,
        tables=[report.table(OPEN_SET_TITLE, pd.DataFrame(run.methods).assign(
                    chosen=[m["method"] == chosen["method"] for m in run.methods])),
                report.table("Open set: the shipped file's answers (test photos, thumbnails, no-landmark photos)",
                             pd.DataFrame(run.served.rows))],
        figures=run.figures,
        open_set={"chosen": chosen["method"], "rule": run.rule.metadata(), "sources": run.sources,
                  "rotations": run.rotations, "calibration": {"ece_before": run.served.ece_before,
                                                              "ece_after": run.served.ece_after,
                                                              "bins": run.served.curves}})
