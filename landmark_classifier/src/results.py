"""The project's record: the metrics.json the three notebooks build together and the README report reads.

Each notebook adds its own summary lines, tables and figures to the same file (`update_metrics`),
so a run of the notebooks in order leaves one record of the run.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from common import report
from landmark_classifier.src.config import PROJECT
from landmark_classifier.src.data import LandmarkData

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
