"""The main job: execute every project's notebooks headless and regenerate the report.

    python -m common.run                      # all projects, full profile (the run of record)
    python -m common.run bike_sharing_autogluon --profile quick
    python -m common.run landmark_classifier --param DATASET=landmark_gldv2

For each project (listed, with its notebooks in order, under
`[tool.portfolio.projects]` in pyproject.toml) the runner executes the
notebooks with papermill, passing PROFILE, DATA_DIR and REPORT_DIR (and any
`--param KEY=VALUE`) into the cell tagged `parameters`, and saves the executed copies in the report folder.
The notebooks write `metrics.json`, figures and the models they export (under
`models/`) there; the runner adds the wall time and peak memory of the run.
A failing cell stops that project, is named on stderr, and the runner exits 1.

The record is protected: every run goes to `reports/local/<project>/` (git-ignored)
first. Only a run of the `full` profile on the real dataset is promoted into the
record: `reports/<project>/`, the project's committed `models/` and the README
report. Anything else (stand-in data, `quick`, `tiny`) stays in `reports/local/`
and leaves every tracked file as it was. `--reports-dir DIR` writes there instead
and promotes nothing.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
import tomllib
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from common import paths, report
from common.memory import PeakMemory

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


@dataclass(frozen=True)
class Execution:
    """How the notebooks are executed (the same for every notebook of a run).

    `stream` copies what the cells print (stage results, progress bars) to this terminal;
    otherwise a bar counts cells, which can sit still for minutes on a long training cell.
    `cell_timeout`: seconds after which a cell is taken to hang and fails the run."""
    stream: bool = False
    cell_timeout: int = CELL_TIMEOUT_SECONDS


def run_notebook(notebook: Path, output: Path, parameters: dict, execution: Execution = Execution()) -> None:
    """Execute one notebook with papermill; a failing cell raises NotebookFailed naming it."""
    import papermill
    from papermill.exceptions import PapermillExecutionError

    stream, cell_timeout = execution.stream, execution.cell_timeout
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
            # The kernel's own start-up log (ipykernel 7 warns at each start that its localhost TCP
            # sockets are unencrypted, as in any local Jupyter) only buries the notebooks' output;
            # its errors still show, and nothing the cells print or warn is affected.
            extra_arguments=["--IPKernelApp.log_level=ERROR"],
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


LOCAL = "local"  # reports/local/<project>/: runs that are not the record (git-ignored)


RESERVED_PARAMETERS = ("PROFILE", "DATA_DIR", "REPORT_DIR")


def parse_params(items: list[str]) -> dict[str, object]:
    """`["KEY=VALUE", ...]` -> {KEY: value}. Values are read as JSON when they parse (numbers,
    true/false, null, quoted strings), else kept as strings: `DATASET=landmark_gldv2` is the string."""
    import json

    parsed: dict[str, object] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise ValueError(f"--param {item!r}: expected KEY=VALUE with KEY a Python name (e.g. DATASET=landmark_gldv2)")
        if key in RESERVED_PARAMETERS:
            raise ValueError(f"--param {key}: set it with --profile, --data-dir or --reports-dir instead")
        try:
            parsed[key] = json.loads(value)
        except json.JSONDecodeError:
            parsed[key] = value
    return parsed


def run_project(project: str, notebooks: list[str], profile: str, data_dir: Path | str, reports_root: Path, *,
                execution: Execution = Execution(), root: Path = paths.REPO_ROOT, params: dict | None = None) -> dict:
    """Run the notebooks of `root/project`; returns its metrics with the `run` record added.

    `params` are extra papermill parameters (`--param KEY=VALUE`) for every notebook.

    The project's report folder is emptied first, so it never mixes files of two runs.
    Notebooks get DATA_DIR as given and REPORT_DIR relative to the repository root when it is
    inside it, so the executed copies carry no absolute path of this machine."""
    shutil.rmtree(reports_root / project, ignore_errors=True)
    report_dir = paths.report_dir(project, reports_root / project)
    started = time.perf_counter()
    parameters = {**(params or {}), "PROFILE": profile, "DATA_DIR": str(data_dir),
                  "REPORT_DIR": paths.display(report_dir)}
    with PeakMemory(interval=0.5) as memory:
        for name in notebooks:
            print(f"[{project}] running {name} (profile {profile}, DATA_DIR {data_dir})", flush=True)
            run_notebook(root / project / name, report_dir / name, parameters, execution)
            record_paths(report_dir / name, root / project / name)
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
        "parameters": dict(params or {}),
    }
    report.write_metrics(report_dir, metrics)
    return metrics


def record_paths(executed: Path, source: Path) -> None:
    """Papermill writes the absolute input and output paths into the executed notebook's metadata;
    keep them relative to the repository so a committed report names no machine's folders."""
    import nbformat

    notebook = nbformat.read(executed, as_version=4)
    meta = notebook.metadata.get("papermill")
    if meta is not None:
        meta["input_path"], meta["output_path"] = paths.display(source), paths.display(executed)
        nbformat.write(notebook, executed)


def is_record(profile: str, metrics: dict) -> bool:
    """Only the full profile on the real dataset may become the record."""
    return profile == "full" and not metrics["data"].get("stand_in", True)


def promote(project: str, staged: Path, record_root: Path, root: Path = paths.REPO_ROOT) -> list[Path]:
    """Make a staged run the record: its report folder replaces `record_root/project`, and the
    models it exported (`staged/models/*`) replace those in `root/project/models/`.
    Returns the model files written."""
    target = record_root / project
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(staged, target, ignore=shutil.ignore_patterns("models"))
    for executed in target.glob("*.ipynb"):
        record_paths(executed, root / project / executed.name)
    written = []
    if (staged / "models").is_dir():
        models_dir = root / project / "models"
        models_dir.mkdir(parents=True, exist_ok=True)
        for model in sorted(p for p in (staged / "models").iterdir() if p.is_file()):
            shutil.copy2(model, models_dir / model.name)
            written.append(models_dir / model.name)
    return written


def _relative_to_repo(path: str) -> str:
    """A path given on the command line (relative to the working directory), relative to the
    repository root when it can be: notebooks resolve it against the root, and the executed
    copies then show `../shared/data` rather than this machine's absolute path."""
    absolute = (Path.cwd() / Path(path).expanduser()).resolve()
    return os.path.relpath(absolute, paths.REPO_ROOT) if not Path(path).is_absolute() else path


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
    parser.add_argument("--reports-dir", default=None,
                        help="write executed notebooks, metrics.json, figures and models here and promote "
                             "nothing (default: reports/local/, and a real-data full run becomes the record "
                             "in reports/, the projects' models/ and the README report)")
    parser.add_argument("--readme", default=None,
                        help="README whose report section is regenerated after a run of record (default: ./README.md)")
    parser.add_argument("--no-readme", action="store_true", help="do not touch the README")
    parser.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                        help="a papermill parameter for every notebook of the run, repeatable "
                             "(e.g. --param DATASET=landmark_gldv2; values are JSON when they parse, else strings)")
    parser.add_argument("--quiet", action="store_true",
                        help="show a cell-count progress bar instead of what the notebooks print")
    return parser


def main(argv: list[str] | None = None, root: Path = paths.REPO_ROOT) -> int:
    projects = load_projects(root / "pyproject.toml")
    args = build_parser(projects).parse_args(argv)
    unknown = [p for p in args.projects if p not in projects]
    if unknown:
        print(f"unknown project(s): {', '.join(unknown)}; choose from {', '.join(projects)}", file=sys.stderr)
        return 2
    try:
        params = parse_params(args.param)
    except ValueError as err:
        print(err, file=sys.stderr)
        return 2
    chosen = args.projects or list(projects)
    data_dir = _relative_to_repo(args.data_dir or os.environ.get("DATA_DIR") or "data")
    record_root = root / "reports"
    staging_root = Path(args.reports_dir).resolve() if args.reports_dir else record_root / LOCAL
    failures, promoted = [], []
    for project in chosen:
        if not projects[project]:
            print(f"[{project}] no notebooks yet, skipped")
            continue
        try:
            metrics = run_project(project, projects[project], args.profile, data_dir, staging_root,
                                  execution=Execution(stream=not args.quiet), params=params, root=root)
        except NotebookFailed as err:
            print(f"[{project}] FAILED: {err}", file=sys.stderr)
            failures.append(project)
            continue
        data = metrics["data"]
        label = "STAND-IN DATA" if data.get("stand_in") else "data"
        print(f"[{project}] done in {metrics['run']['wall_seconds']:.0f} s, "
              f"peak {metrics['run']['peak_memory_mb']:.0f} MB; {label}: {data['source']}", flush=True)
        staged = staging_root / project
        if args.reports_dir:
            print(f"[{project}] results in {staged}", flush=True)
        elif is_record(args.profile, metrics):
            models = promote(project, staged, record_root, root)
            promoted.append(project)
            print(f"[{project}] the run of record: reports/{project}/"
                  + (f" and {len(models)} model file(s) in {project}/models/" if models else ""), flush=True)
        else:
            why = "stand-in data" if data.get("stand_in") else f"profile {args.profile}"
            print(f"[{project}] not the record ({why}): results in {paths.display(staged)}/; "
                  f"reports/{project}/, {project}/models/ and the README are unchanged", flush=True)
    if promoted and not args.no_readme:
        readme = Path(args.readme) if args.readme else root / "README.md"
        report.update_readme(readme, record_root, list(projects))
        print(f"report section of {paths.display(readme)} regenerated")
    if failures:
        print(f"failed: {', '.join(failures)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
