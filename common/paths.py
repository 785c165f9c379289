"""Where things live: the repository root, the data folder, the reports folder.

Notebooks run with their own folder as working directory (Jupyter's default and
the runner's choice), while `make` and the tests run from the repository root.
Resolving every default against the repository root makes both agree.
"""
from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def data_dir(value: str | os.PathLike | None = None) -> Path:
    """The data folder: `value`, else `$DATA_DIR`, else `<repo>/data`.

    Relative paths are taken relative to the repository root, so
    `DATA_DIR=../shared/data` means the same folder from a notebook or a shell.
    """
    chosen = value if value not in (None, "") else os.environ.get("DATA_DIR") or "data"
    path = Path(chosen).expanduser()
    return path if path.is_absolute() else (REPO_ROOT / path).resolve()


LOCAL_REPORTS = REPO_ROOT / "reports" / "local"


def report_dir(project: str, value: str | os.PathLike | None = None) -> Path:
    """The folder for a project's executed notebooks, metrics and figures: `value`, else
    `<repo>/reports/local/<project>` (git-ignored).

    A notebook run in Jupyter, SageMaker Studio or nbclient therefore never touches the record
    (`reports/<project>/`, tracked): only the runner (`python -m common.run`) promotes a run
    there, and only a real-data `full` one."""
    path = Path(value).expanduser() if value else LOCAL_REPORTS / project
    path = path if path.is_absolute() else (REPO_ROOT / path).resolve()
    (path / "figures").mkdir(parents=True, exist_ok=True)
    return path


def display(path: str | os.PathLike) -> str:
    """`path` as a committed report should show it: relative to the repository root when inside
    it, `DATA_DIR/...` when inside the data folder, else as given.

    Reports travel with the repository; the absolute path of the machine that ran them means
    nothing anywhere else (and names that machine's user)."""
    path = Path(path)
    resolved = path.resolve() if path.is_absolute() else (REPO_ROOT / path).resolve()
    if resolved.is_relative_to(REPO_ROOT):
        return str(resolved.relative_to(REPO_ROOT))
    data = data_dir()
    if resolved.is_relative_to(data):
        return str(Path("DATA_DIR") / resolved.relative_to(data))
    return str(path)
