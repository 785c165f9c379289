"""The three landmark notebooks: the runner's order, stripped outputs, the parameters cell.
They run end to end in tests/test_notebooks_as_users_run_them.py."""
from __future__ import annotations

import nbformat

from common import paths, run

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
