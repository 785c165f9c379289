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
     "run": {...}}                              # added by the runner
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


def render_project(metrics: Mapping[str, Any], report_dir_rel: str) -> str:
    """One project's README section; `report_dir_rel` is the report folder relative to README."""
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
    for spec in metrics.get("tables", []):
        lines += ["", f"#### {spec['title']}", "", _markdown_table(spec)]
    for figure in metrics.get("figures", []):
        lines += ["", f"![{figure['title']}]({report_dir_rel}/{figure['path']})"]
    return "\n".join(lines).strip() + "\n"


def render_report(reports_root: Path, projects: Iterable[str], readme_dir: Path) -> str:
    sections = []
    for project in projects:
        folder = reports_root / project
        if (folder / "metrics.json").exists():
            rel = os.path.relpath(folder, readme_dir)
            sections.append(render_project(read_metrics(folder), rel))
        else:
            sections.append(f"### {project}\n\nNo run yet: `make run` writes `{os.path.relpath(folder, readme_dir)}/`.\n")
    return "\n".join(sections)


def update_readme(readme: Path, reports_root: Path, projects: Iterable[str]) -> None:
    """Replace the text between the report markers in README with a fresh report."""
    text = readme.read_text()
    pattern = re.compile(re.escape(START_MARKER) + ".*?" + re.escape(END_MARKER), re.S)
    if not pattern.search(text):
        raise ValueError(f"{readme} has no report markers ({START_MARKER} ... {END_MARKER})")
    body = render_report(reports_root, projects, readme.parent)
    new = pattern.sub(lambda _: f"{START_MARKER}\n<!-- generated by `python -m common.run`; do not edit by hand -->\n\n{body}\n{END_MARKER}", text)
    s3io.write_text(readme, new)
