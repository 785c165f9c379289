"""The notebook's parameters and stripped outputs, and the command line's help. The notebook runs
end to end in tests/test_notebooks_as_users_run_them.py."""
from __future__ import annotations

import subprocess
import sys

import nbformat

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


def test_cli_help_explains_every_subcommand():
    result = subprocess.run([sys.executable, "-m", "scones_workflow", "--help"], capture_output=True, text=True,
                            cwd=REPO_ROOT, check=True)
    for command in ("stage", "train", "serve", "run", "monitor", "retrain", "load", "deploy", "teardown"):
        assert command in result.stdout
    load_help = subprocess.run([sys.executable, "-m", "scones_workflow", "load", "--help"], capture_output=True,
                               text=True, cwd=REPO_ROOT, check=True)
    assert "--concurrency" in load_help.stdout and "capture" in load_help.stdout
