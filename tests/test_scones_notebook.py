"""The notebook end to end in the tiny profile, through the runner, offline on the generated stand-in;
and the command line's help."""
from __future__ import annotations

import subprocess
import sys

import nbformat
import pytest

from common import report, run
from common.paths import REPO_ROOT

NOTEBOOK = REPO_ROOT / "scones_workflow" / "scones_workflow.ipynb"


def test_notebook_is_stripped_and_starts_with_the_parameters():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert "parameters" in code[0].metadata.get("tags", [])
    for assignment in ('PROFILE = "full"', "DATA_DIR = None", "REPORT_DIR = None", 'BACKEND = "local"'):
        assert assignment in code[0].source
    assert 'paths.report_dir("scones_workflow", REPORT_DIR)' in code[1].source
    assert all(not c.outputs and c.execution_count is None for c in code)


@pytest.mark.slow
def test_notebook_runs_end_to_end_in_the_tiny_profile_on_the_stand_in(tmp_path):
    empty_data_dir = tmp_path / "data"  # nothing there and no network: the stand-in is generated
    empty_data_dir.mkdir()
    metrics = run.run_project("scones_workflow", ["scones_workflow.ipynb"], "tiny", empty_data_dir,
                              tmp_path / "reports", cell_timeout=300)
    folder = tmp_path / "reports" / "scones_workflow"
    assert report.read_metrics(folder) == metrics
    assert metrics["profile"] == "tiny" and metrics["data"]["stand_in"] is True
    summary = metrics["summary"]
    assert summary["executions (test images)"] == 20 and summary["capture records"] >= summary["executions succeeded"]
    assert metrics["load"]["checks_passed"] is True and "endpoint model" in metrics["load"]["breakdown_ms"]
    bad = {row[0]: row[2] for row in next(t for t in metrics["tables"] if t["title"] == "Bad inputs")["rows"]}
    assert bad == {"bad/missing.png": "ImageNotFound", "bad/empty.png": "EmptyImage",
                   "bad/not_an_image.png": "NotAnImage", "bad/truncated.png": "InvalidImage"}
    variants = next(t for t in metrics["tables"] if t["title"].startswith("Production variants"))
    assert {row[0] for row in variants["rows"]} <= {"Primary", "Challenger"} and summary["variant verdict"]
    assert metrics["alarm"]["exit_code"] == (1 if metrics["alarm"]["in_alarm"] else 0)
    assert metrics["retraining"]["candidate_accuracy"] is not None and "promoted" in metrics["retraining"]
    assert {r["runtime"] for r in metrics["benchmark"]} >= {"TorchScript", "ONNX Runtime"}
    assert len(metrics["figures"]) == 7
    for figure in metrics["figures"]:
        assert (folder / figure["path"]).stat().st_size > 1000


def test_cli_help_explains_every_subcommand():
    result = subprocess.run([sys.executable, "-m", "scones_workflow", "--help"], capture_output=True, text=True,
                            cwd=REPO_ROOT, check=True)
    for command in ("stage", "train", "serve", "run", "monitor", "retrain", "load", "deploy", "teardown"):
        assert command in result.stdout
    load_help = subprocess.run([sys.executable, "-m", "scones_workflow.src.loadtest", "--help"], capture_output=True,
                               text=True, cwd=REPO_ROOT, check=True)
    assert "--concurrency" in load_help.stdout and "capture" in load_help.stdout
