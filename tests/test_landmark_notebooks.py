"""The three landmark notebooks end to end through the runner, tiny profile, offline stand-in data."""
from __future__ import annotations

import json

import nbformat
import pytest

from common import paths, run

pytestmark = pytest.mark.slow

NOTEBOOKS = ["cnn_from_scratch.ipynb", "transfer_learning.ipynb", "predictor_demo.ipynb"]


def test_the_runner_runs_these_notebooks_in_this_order():
    assert run.load_projects()["landmark_classifier"] == NOTEBOOKS


def test_notebooks_are_stripped_and_start_with_the_parameters_cell():
    for name in NOTEBOOKS:
        notebook = nbformat.read(paths.REPO_ROOT / "landmark_classifier" / name, as_version=4)
        code = [c for c in notebook.cells if c.cell_type == "code"]
        assert "parameters" in code[0].metadata.get("tags", []), name
        assert all(s in code[0].source for s in ('PROFILE = "full"', "DATA_DIR = None", "REPORT_DIR = None",
                                                 "DATASET = None")), name
        assert all(not c.outputs and c.execution_count is None for c in code), f"{name} has outputs"
        assert 'paths.report_dir("landmark_classifier", REPORT_DIR)' in code[1].source, name


def test_notebooks_run_end_to_end_in_the_tiny_profile(tmp_path, monkeypatch):
    monkeypatch.setenv("LANDMARK_OFFLINE", "1")  # no download attempt: straight to the stand-in
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    metrics = run.run_project("landmark_classifier", NOTEBOOKS, "tiny", data_dir, tmp_path / "reports",
                              cell_timeout=300)
    folder = tmp_path / "reports" / "landmark_classifier"
    assert json.loads((folder / "metrics.json").read_text()) == metrics
    assert metrics["profile"] == "tiny" and metrics["data"]["stand_in"] is True
    summary = metrics["summary"]
    for key in ("scratch CNN test accuracy", "transfer learning test accuracy", "transfer learning model",
                "predictor latency p50 (ms, one 1024x768 photo, 1 CPU thread)",
                "ONNX Runtime vs TorchScript single-image speed-up (1 thread, x)"):
        assert key in summary, key
    assert 0 <= summary["scratch CNN test accuracy"] <= 1 and 0 <= summary["transfer learning test accuracy"] <= 1
    titles = {t["title"].split(":")[0] for t in metrics["tables"]}
    assert titles >= {"Scratch CNN", "Transfer learning", "Predictor"}
    for figure in metrics["figures"]:
        assert (folder / figure["path"]).stat().st_size > 1000, figure
    assert any("misclassified" in f["title"] for f in metrics["figures"])
    assert [row["upload"] for row in metrics["app"]["bad_inputs"]] == ["empty.jpg", "notes.txt", "truncated.jpg"]
    assert all(row["shown to the user"].startswith(row["upload"] + ":") for row in metrics["app"]["bad_inputs"])
    assert metrics["app"]["cli_exit_code"] == 1  # the deliberately bad file
    exported = folder / "models"
    assert (exported / "landmark_predictor.onnx").is_file() and (exported / "landmark_predictor.pt").is_file()
    assert metrics["transfer"]["predictor"]["metadata"]["training_run"]["profile"] == "tiny"
    for name in NOTEBOOKS:
        assert (folder / name).exists()
