"""The main job: execute every project's notebooks headless and regenerate the report.

    python -m common.run                      # all projects, full profile (the run of record)
    python -m common.run bike_sharing_autogluon --profile quick

For each project (listed, with its notebooks in order, under
`[tool.portfolio.projects]` in pyproject.toml) the runner executes the
notebooks with papermill, passing PROFILE, DATA_DIR and REPORT_DIR into the
cell tagged `parameters`, and saves the executed copies in `reports/<project>/`.
The notebooks write `metrics.json` and figures there; the runner adds the wall
time and peak memory of the run, then rewrites the README report section.
A failing cell stops that project, is named on stderr, and the runner exits 1.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import time
import tomllib
from datetime import datetime, timezone
from pathlib import Path

from common import paths, report
from common.resources import PeakMemory

PROFILES = {
    "quick": "small budgets: every project in minutes, for a first look",
    "full": "the run of record, whose numbers the README reports",
    "tiny": "seconds per project; used by the tests to exercise notebooks end to end",
}


def load_projects(pyproject: Path = paths.REPO_ROOT / "pyproject.toml") -> dict[str, list[str]]:
    """Project name -> its notebooks, in execution order, from pyproject.toml."""
    config = tomllib.loads(pyproject.read_text())
    try:
        return dict(config["tool"]["portfolio"]["projects"])
    except KeyError:
        raise ValueError(f"{pyproject} has no [tool.portfolio.projects] table") from None


class NotebookFailed(RuntimeError):
    pass


# A cell that runs longer than this is taken to hang (a headless kernel waiting for a widget,
# say) and fails the run instead of blocking it forever; the longest cells of the full profile
# (AutoGluon stages, the MNIST CNN) take about 15 minutes on 2 cores.
CELL_TIMEOUT_SECONDS = 3600


def run_notebook(notebook: Path, output: Path, parameters: dict, *, stream: bool,
                 cell_timeout: int = CELL_TIMEOUT_SECONDS) -> None:
    """Execute one notebook with papermill; a failing cell raises NotebookFailed naming it.

    `stream` copies what the cells print (stage results, progress bars) to this terminal;
    otherwise a bar counts cells, which can sit still for minutes on a long training cell."""
    import papermill
    from papermill.exceptions import PapermillExecutionError

    try:
        papermill.execute_notebook(
            str(notebook),
            str(output),
            parameters=parameters,
            cwd=str(notebook.parent),
            kernel_name="python3",
            progress_bar=not stream,
            execution_timeout=cell_timeout,
            stdout_file=sys.stdout if stream else None,
            stderr_file=sys.stderr if stream else None,
        )
    except PapermillExecutionError as err:
        raise NotebookFailed(
            f"{notebook.name} failed in cell {err.cell_index} "
            f"(execution count {err.exec_count}): {err.ename}: {err.evalue}\n"
            f"  the executed notebook with the traceback is {output}"
        ) from None
    except TimeoutError:  # nbclient's CellTimeoutError: the cell ran too long, or hangs
        raise NotebookFailed(
            f"{notebook.name}: a cell ran longer than {cell_timeout} s and was stopped (a hang?)\n"
            f"  the executed notebook up to that cell is {output}"
        ) from None


def run_project(project: str, notebooks: list[str], profile: str, data_dir: Path, reports_root: Path, *,
                stream: bool = False, root: Path = paths.REPO_ROOT,
                cell_timeout: int = CELL_TIMEOUT_SECONDS) -> dict:
    """Run the notebooks of `root/project`; returns its metrics with the `run` record added.

    The project's report folder is emptied first, so it never mixes files of two runs."""
    shutil.rmtree(reports_root / project, ignore_errors=True)
    report_dir = paths.report_dir(project, reports_root / project)
    started = time.perf_counter()
    parameters = {"PROFILE": profile, "DATA_DIR": str(data_dir), "REPORT_DIR": str(report_dir)}
    with PeakMemory(interval=0.5) as memory:
        for name in notebooks:
            print(f"[{project}] running {name} (profile {profile}, DATA_DIR {data_dir})", flush=True)
            run_notebook(root / project / name, report_dir / name, parameters, stream=stream,
                         cell_timeout=cell_timeout)
    metrics_path = report_dir / "metrics.json"
    if not metrics_path.exists():
        raise NotebookFailed(f"{project}: the notebooks ran but wrote no {metrics_path}")
    metrics = report.read_metrics(report_dir)
    if metrics.get("profile") != profile:
        raise NotebookFailed(f"{metrics_path} says profile {metrics.get('profile')!r}, the run used {profile!r}")
    metrics["run"] = {
        "finished_at": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "wall_seconds": round(time.perf_counter() - started, 1),
        "peak_memory_mb": round(memory.peak_bytes / 2**20, 1),
        "notebooks": notebooks,
    }
    report.write_metrics(report_dir, metrics)
    return metrics


def build_parser(projects: dict[str, list[str]]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m common.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("projects", nargs="*", metavar="PROJECT",
                        help=f"projects to run (default: all): {', '.join(projects)}")
    parser.add_argument("--profile", choices=PROFILES, default="full",
                        help="; ".join(f"{k}: {v}" for k, v in PROFILES.items()) + " (default: full)")
    parser.add_argument("--data-dir", default=None,
                        help="datasets folder (default: $DATA_DIR, else ./data); missing data is downloaded "
                             "there, and with no network each project falls back to labelled stand-in data")
    parser.add_argument("--reports-dir", default=str(paths.REPO_ROOT / "reports"),
                        help="where executed notebooks, metrics.json and figures go (default: ./reports)")
    parser.add_argument("--readme", default=str(paths.REPO_ROOT / "README.md"),
                        help="README whose report section is regenerated (default: ./README.md)")
    parser.add_argument("--no-readme", action="store_true", help="do not touch the README")
    parser.add_argument("--quiet", action="store_true",
                        help="show a cell-count progress bar instead of what the notebooks print")
    return parser


def main(argv: list[str] | None = None) -> int:
    projects = load_projects()
    args = build_parser(projects).parse_args(argv)
    unknown = [p for p in args.projects if p not in projects]
    if unknown:
        print(f"unknown project(s): {', '.join(unknown)}; choose from {', '.join(projects)}", file=sys.stderr)
        return 2
    chosen = args.projects or list(projects)
    data_dir = paths.data_dir(args.data_dir)
    reports_root = Path(args.reports_dir).resolve()
    failures = []
    for project in chosen:
        if not projects[project]:
            print(f"[{project}] no notebooks yet, skipped")
            continue
        try:
            metrics = run_project(project, projects[project], args.profile, data_dir, reports_root,
                                  stream=not args.quiet)
        except NotebookFailed as err:
            print(f"[{project}] FAILED: {err}", file=sys.stderr)
            failures.append(project)
            continue
        data = metrics["data"]
        label = "STAND-IN DATA" if data.get("stand_in") else "data"
        print(f"[{project}] done in {metrics['run']['wall_seconds']:.0f} s, "
              f"peak {metrics['run']['peak_memory_mb']:.0f} MB; {label}: {data['source']}", flush=True)
    if not args.no_readme:
        report.update_readme(Path(args.readme), reports_root, list(projects))
        print(f"report section of {args.readme} regenerated")
    if failures:
        print(f"failed: {', '.join(failures)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
