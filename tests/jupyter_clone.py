"""A fresh clone of this checkout, and notebooks executed in it the way Jupyter executes them.

Users open the notebooks in Jupyter or SageMaker Studio and press Run All: no runner, no papermill,
the parameters cell as written (they may edit it, as the tests edit PROFILE). `fresh_clone` copies
what a clone of this checkout would hold (tracked files and new files git does not ignore) into a
new git repository, so `tracked_changes` shows exactly what a run changed there."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import nbformat
from nbclient import NotebookClient

from common.paths import REPO_ROOT


def _git(root: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout


def fresh_clone(dest: Path, source: Path = REPO_ROOT) -> Path:
    """`source`'s files as a clone would have them (uncommitted edits included), committed in `dest`."""
    listed = _git(source, "ls-files", "-z", "--cached", "--others", "--exclude-standard").split("\0")
    for name in filter(None, listed):
        if (source / name).is_file():  # a tracked file deleted in the working tree is not copied
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source / name, dest / name)
    _git(dest, "init", "-q")
    _git(dest, "add", "-A")
    _git(dest, "-c", "user.name=test", "-c", "user.email=test@example.invalid", "commit", "-qm", "fresh clone")
    return dest


def tracked_changes(root: Path) -> list[str]:
    """`git status --porcelain` lines: modified, deleted and new files git does not ignore."""
    return _git(root, "status", "--porcelain", "--untracked-files=all").splitlines()


def run_as_jupyter(notebook: Path, *, profile: str = "tiny", timeout: int = 300) -> nbformat.NotebookNode:
    """Execute `notebook` top to bottom as Jupyter's Run All does (its folder as the working
    directory), with `PROFILE = "full"` edited to `profile` in its parameters cell. A failing cell
    raises nbclient's CellExecutionError, which shows the cell and its traceback."""
    notebook = Path(notebook)
    nb = nbformat.read(notebook, as_version=4)
    parameters = next((c for c in nb.cells if "parameters" in c.metadata.get("tags", [])), None)
    if parameters is not None and 'PROFILE = "full"' in parameters.source:
        parameters.source = parameters.source.replace('PROFILE = "full"', f'PROFILE = "{profile}"')
    NotebookClient(nb, timeout=timeout, kernel_name="python3",
                   resources={"metadata": {"path": str(notebook.parent)}}).execute()
    return nb


def outputs_text(nb: nbformat.NotebookNode, stream: str | None = None) -> str:
    """Everything the cells printed (`stream` "stdout"/"stderr" for one stream only)."""
    parts = []
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            if output.get("output_type") == "stream" and stream in (None, output.get("name")):
                parts.append(output.get("text", ""))
    return "".join(parts)
