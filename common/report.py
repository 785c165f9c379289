"""Each project's `metrics.json`, and the README report generated from them.

A notebook writes `reports/<project>/metrics.json` with `write_metrics`; the
runner adds how the run went (`run`) and rewrites the README section between
the report markers from every project's file. README numbers are therefore
never typed: they are rendered from the last run.

The schema every project shares (projects may add keys of their own):

    {"project": str, "title": str, "profile": str,
     "data": {"source": str, "stand_in": bool, "note": str},
     "summary": {label: value, ...},            # headline numbers
     "tables": [{"title", "columns", "rows"}],  # rendered as Markdown tables
     "figures": [{"title", "path"}],            # paths relative to the report folder
     "headline": {"metric", "seed", "value"},   # one line of the README's "Results at a glance"
     "highlights": {"tables": [title, ...],     # what the README section shows (default: the first
                    "figures": [title, ...]},   #   table and three figures); the rest is linked
     "run": {...}}                              # added by the runner

Each project's complete report (every table and figure) is rendered to
`reports/<project>/README.md`; the README shows the highlights and links it.
"""
from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any, Iterable, Mapping

import pandas as pd

from common import s3io

START_MARKER = "<!-- report:start -->"
END_MARKER = "<!-- report:end -->"
GLANCE_START = "<!-- glance:start -->"
GLANCE_END = "<!-- glance:end -->"
README_FIGURES = 3


def _jsonable(value: Any) -> Any:
    """Plain JSON values: numpy scalars to Python, NaN to None."""
    if hasattr(value, "item") and not isinstance(value, (list, dict, str)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def table(title: str, frame: pd.DataFrame) -> dict:
    """A DataFrame as a metrics.json table (the index is dropped; reset it first to keep it)."""
    rows = [[_jsonable(v) for v in row] for row in frame.itertuples(index=False)]
    return {"title": title, "columns": [str(c) for c in frame.columns], "rows": rows}


def stand_in_banner(source: str, not_comparable_with: str) -> str:
    """The notebooks' warning (Markdown) when a project runs on stand-in data instead of the real set."""
    return (f"**STAND-IN DATA: results are not comparable with {not_comparable_with}.** {source}. "
            f"This run stays in `reports/local/` and never becomes the record.")


def write_metrics(report_dir: str | os.PathLike, metrics: Mapping[str, Any]) -> Path:
    """Write `metrics.json` atomically (a crash never leaves half a file)."""
    for key in ("project", "title", "profile", "data"):
        if key not in metrics:
            raise ValueError(f"metrics.json needs the key {key!r}")
    path = Path(report_dir) / "metrics.json"
    s3io.write_text(path, json.dumps(metrics, indent=2, default=_jsonable) + "\n")
    return path


def read_metrics(report_dir: str | os.PathLike) -> dict:
    path = Path(report_dir) / "metrics.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} not found: run the project's notebook first") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err})") from None


def format_value(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def _markdown_table(spec: Mapping[str, Any]) -> str:
    lines = [f"| {' | '.join(spec['columns'])} |", "|" + "---|" * len(spec["columns"])]
    lines += [f"| {' | '.join(format_value(v) for v in row)} |" for row in spec["rows"]]
    return "\n".join(lines)


def _pick(items: list[dict], titles: list[str] | None, default: int) -> list[dict]:
    if titles is None:
        return items[:default]
    return [item for item in items if item["title"] in titles]


def render_project(metrics: Mapping[str, Any], report_dir_rel: str, *, complete: bool = True) -> str:
    """One project's report; `report_dir_rel` is the report folder relative to the file it goes in.

    `complete=False` renders the README section: the highlights, and a link to the rest."""
    data = metrics["data"]
    lines = [f"### {metrics['title']}", ""]
    if data.get("stand_in"):
        lines.append(f"> **Stand-in data, not the real dataset:** {data['source']}. {data.get('note', '')}".rstrip())
    else:
        lines.append(f"Data: {data['source']}. {data.get('note', '')}".rstrip())
    run = metrics.get("run", {})
    facts = [f"profile `{metrics['profile']}`"]
    if run:
        facts.append(f"run {run['finished_at']}")
        facts.append(f"{run['wall_seconds']:.0f} s wall time")
        facts.append(f"{run['peak_memory_mb']:,.0f} MB peak memory")
        facts += [f"[{nb}]({report_dir_rel}/{nb})" for nb in run.get("notebooks", [])]
    lines += ["", "Run: " + ", ".join(facts) + ".", ""]
    for label, value in metrics.get("summary", {}).items():
        lines.append(f"- {label}: **{format_value(value)}**")
    tables, figures = metrics.get("tables", []), metrics.get("figures", [])
    if not complete:
        highlights = metrics.get("highlights", {})
        tables = _pick(tables, highlights.get("tables"), 1)
        figures = _pick(figures, highlights.get("figures"), README_FIGURES)
    for spec in tables:
        lines += ["", f"#### {spec['title']}", "", _markdown_table(spec)]
    for figure in figures:
        lines += ["", f"![{figure['title']}]({report_dir_rel}/{figure['path']})"]
    if not complete:
        lines += ["", f"Every table and figure of this run: [{report_dir_rel}/README.md]({report_dir_rel}/README.md)."]
    return "\n".join(lines).strip() + "\n"


def render_glance(reports_root: Path, projects: Iterable[str], readme_dir: Path) -> str:
    """The README's front-page table: per project, the seed's number and this repository's."""
    rows = ["| project | headline metric | the seed | this repository | data | run of record |",
            "|---|---|---|---|---|---|"]
    for project in projects:
        folder = reports_root / project
        if not (folder / "metrics.json").exists():
            rows.append(f"| {project} | no run yet | | | | |")
            continue
        metrics = read_metrics(folder)
        headline = metrics.get("headline", {})
        data = metrics["data"]
        data_text = headline.get("data", data["source"]) + (" (STAND-IN)" if data.get("stand_in") else "")
        run = metrics.get("run", {})
        wall = f"{run['wall_seconds'] / 60:.1f} min, profile `{metrics['profile']}`" if run else ""
        link = f"[{metrics['title']}]({os.path.relpath(folder, readme_dir)}/README.md)"
        cells = [link, headline.get("metric", "n/a"), headline.get("seed", "n/a"), headline.get("value", "n/a"),
                 data_text, wall]
        rows.append("| " + " | ".join(format_value(c) if c else "" for c in cells) + " |")
    return "\n".join(rows) + "\n"


def render_app_screenshot(folder: Path, report_dir_rel: str) -> str:
    """A project's app page as a real browser showed it, when its report folder has one:
    `app_screenshot.png` and the record beside it, `app_screenshot.json` (the photo, the answer,
    timings; written by e.g. `python -m landmark_classifier.src.app_screenshot`)."""
    image, record_path = folder / "app_screenshot.png", folder / "app_screenshot.json"
    if not (image.exists() and record_path.exists()):
        return ""
    record = json.loads(record_path.read_text())
    answer = record["answer"].splitlines()[0] if record.get("answer") else "n/a"
    model = record.get("model", {}).get("model_name")
    worst, cpu = record.get("max_seconds", {}), record.get("median_cpu_seconds", {})
    rows = [[what, seconds, worst.get(what), cpu.get(what)] for what, seconds in record["median_seconds"].items()]
    spec = {"columns": ["in the browser", f"median of {record['runs']} (s)", "worst (s)",
                        "CPU of all processes, median (s)"], "rows": rows}
    return "\n".join([
        "", "#### The app page", "",
        f"![The app answering a real photo ({record['photo']})]({report_dir_rel}/{image.name})", "",
        f"Answer shown: {answer}" + (f" (model: {model})" if model else "") + ". "
        f"Measured by `{record['command']}` in {record['browser']}; {record['measured_at']}, {record['machine']}.",
        "", _markdown_table(spec),
    ]) + "\n"


def render_report(reports_root: Path, projects: Iterable[str], readme_dir: Path) -> str:
    sections = []
    for project in projects:
        folder = reports_root / project
        if (folder / "metrics.json").exists():
            rel = os.path.relpath(folder, readme_dir)
            sections.append(render_project(read_metrics(folder), rel, complete=False)
                            + render_app_screenshot(folder, rel))
        else:
            sections.append(f"### {project}\n\nNo run yet: `make run` writes `{os.path.relpath(folder, readme_dir)}/`.\n")
    return "\n".join(sections)


def write_project_reports(reports_root: Path, projects: Iterable[str]) -> list[Path]:
    """`reports/<project>/README.md`: every table and figure of the project's last run."""
    written = []
    for project in projects:
        folder = reports_root / project
        if (folder / "metrics.json").exists():
            text = ("<!-- generated by `python -m common.run` from metrics.json; do not edit by hand -->\n\n"
                    + render_project(read_metrics(folder), ".").replace("### ", "# ", 1))
            s3io.write_text(folder / "README.md", text)
            written.append(folder / "README.md")
    return written


def update_readme(readme: Path, reports_root: Path, projects: Iterable[str]) -> None:
    """Replace the text between the report markers in README with a fresh report."""
    text = readme.read_text()
    pattern = re.compile(re.escape(START_MARKER) + ".*?" + re.escape(END_MARKER), re.S)
    if not pattern.search(text):
        raise ValueError(f"{readme} has no report markers ({START_MARKER} ... {END_MARKER})")
    projects = list(projects)
    body = render_report(reports_root, projects, readme.parent)
    new = pattern.sub(lambda _: f"{START_MARKER}\n<!-- generated by `python -m common.run`; do not edit by hand -->\n\n{body}\n{END_MARKER}", text)
    glance = f"{GLANCE_START}\n{render_glance(reports_root, projects, readme.parent)}{GLANCE_END}"
    glance_pattern = re.compile(re.escape(GLANCE_START) + ".*?" + re.escape(GLANCE_END), re.S)
    if glance_pattern.search(new):
        new = glance_pattern.sub(lambda _: glance, new)
    else:  # right under the title
        new = re.sub(r"^(# .*\n)", lambda m: f"{m.group(1)}\n## Results at a glance\n\n{glance}\n", new, count=1,
                     flags=re.M)
    s3io.write_text(readme, new)
    write_project_reports(reports_root, projects)
