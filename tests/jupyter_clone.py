"""A fresh clone of this checkout, and notebooks executed in it the way Jupyter executes them.

Users open the notebooks in Jupyter or SageMaker Studio and press Run All: no runner, no papermill,
the parameters cell as written (they may edit it, as the tests edit PROFILE). `fresh_clone` copies
what a clone of this checkout would hold (tracked files and new files git does not ignore) into a
new git repository, so `tracked_changes` shows exactly what a run changed there."""
from __future__ import annotations

import base64
import re
import shutil
import struct
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


# What a user sees as broken after Run All: a red stderr block that warns (UserWarning, a logged
# WARNING, matplotlib's "constrained_layout not applied"), or a figure collapsed into a sliver or
# blown up past any screen (the MNIST chart once rendered 4224 x 333 px).
WARNS = re.compile(r"Warning|WARNING")
MAX_ASPECT = 4.0   # width / height between 1/4 and 4
MAX_SIDE = 3000    # pixels


def png_size(data: str | bytes) -> tuple[int, int]:
    """(width, height) of a PNG, base64 as Jupyter stores it or raw bytes, read from its IHDR chunk."""
    raw = base64.b64decode(data) if isinstance(data, str) else data
    if raw[:8] != b"\x89PNG\r\n\x1a\n" or raw[12:16] != b"IHDR":
        raise ValueError("not a PNG")
    return struct.unpack(">II", raw[16:24])


def output_problems(nb: nbformat.NotebookNode) -> list[str]:
    """Each stderr output that warns, and each PNG whose aspect ratio or size is not sane, named by
    its cell (index and first line) and what it showed."""
    problems = []
    for index, cell in enumerate(nb.cells):
        where = f"cell {index} ({cell.source.splitlines()[0] if cell.source else ''!r})"
        for output in cell.get("outputs", []):
            text = output.get("text", "")
            if output.get("output_type") == "stream" and output.get("name") == "stderr" and WARNS.search(text):
                line = next(line for line in text.splitlines() if WARNS.search(line))
                problems.append(f"{where}: a warning on stderr: {line.strip()[:300]}")
            png = output.get("data", {}).get("image/png")
            if png:
                width, height = png_size(png)
                if not (1 / MAX_ASPECT <= width / height <= MAX_ASPECT) or max(width, height) >= MAX_SIDE:
                    problems.append(f"{where}: a {width} x {height} px figure")
    return problems
