from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest

from common import paths, report, run


def metrics(**extra) -> dict:
    return {"project": "demo", "title": "Demo project", "profile": "tiny",
            "data": {"source": "generated numbers", "stand_in": True, "note": "for the test"},
            "summary": {"accuracy": 0.91234, "model": "tiny"},
            "tables": [{"title": "Models", "columns": ["model", "score"], "rows": [["a|b", 0.5], ["c", None]]}],
            "figures": [{"title": "Curve", "path": "figures/curve.png"}], **extra}


def test_write_metrics_requires_the_shared_keys(tmp_path):
    with pytest.raises(ValueError, match="needs the key 'data'"):
        report.write_metrics(tmp_path, {"project": "p", "title": "t", "profile": "quick"})
    report.write_metrics(tmp_path, metrics())
    assert report.read_metrics(tmp_path)["summary"]["accuracy"] == 0.91234
    assert not list(tmp_path.glob("*.tmp"))


def test_read_metrics_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="metrics.json not found"):
        report.read_metrics(tmp_path)
    (tmp_path / "metrics.json").write_text("{broken")
    with pytest.raises(ValueError, match=r"metrics.json is not valid JSON"):
        report.read_metrics(tmp_path)


def test_table_from_dataframe_is_plain_json():
    import numpy as np
    import pandas as pd

    spec = report.table("T", pd.DataFrame({"a": [np.int64(1), np.int64(2)], "b": [0.5, np.nan]}))
    assert spec == {"title": "T", "columns": ["a", "b"], "rows": [[1, 0.5], [2, None]]}
    json.dumps(spec)


def test_render_labels_stand_in_and_renders_tables_and_figures():
    text = report.render_project(metrics(), "reports/demo")
    assert "**Stand-in data, not the real dataset:** generated numbers" in text
    assert "- accuracy: **0.9123**" in text
    assert "| a\\|b | 0.5 |" in text and "| c | n/a |" in text
    assert "![Curve](reports/demo/figures/curve.png)" in text


def test_update_readme_replaces_only_the_marked_section(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{report.START_MARKER}\nold numbers\n{report.END_MARKER}\nfooter\n")
    report.write_metrics(tmp_path / "reports" / "demo", metrics())
    report.update_readme(readme, tmp_path / "reports", ["demo", "missing"])
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith("footer\n") and "old numbers" not in text
    assert "### Demo project" in text and "### missing\n\nNo run yet" in text
    readme.write_text("no markers")
    with pytest.raises(ValueError, match="has no report markers"):
        report.update_readme(readme, tmp_path / "reports", ["demo"])


def write_notebook(path: Path, body: str) -> None:
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell('PROFILE = "full"\nDATA_DIR = None\nREPORT_DIR = None')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(body)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)


WRITES_METRICS = """
import json, pathlib
m = {"project": "demo", "title": "Demo", "profile": PROFILE,
     "data": {"source": "generated from " + DATA_DIR, "stand_in": False, "note": ""}}
pathlib.Path(REPORT_DIR, "metrics.json").write_text(json.dumps(m))
print("stage one done")
big = bytearray(50 * 2**20)  # the runner's memory sampler should see the kernel grow
import time; time.sleep(1.5)
"""


@pytest.mark.slow
def test_runner_executes_passes_parameters_and_records_the_run(tmp_path, capsys):
    write_notebook(tmp_path / "demo" / "demo.ipynb", WRITES_METRICS)
    stale = tmp_path / "reports" / "demo" / "submission_old_stage.csv"
    stale.parent.mkdir(parents=True)
    stale.write_text("left by an earlier run")
    result = run.run_project("demo", ["demo.ipynb"], "tiny", tmp_path / "data", tmp_path / "reports",
                             execution=run.Execution(stream=True), root=tmp_path)
    assert "stage one done" in capsys.readouterr().out  # what cells print reaches the terminal
    assert result["profile"] == "tiny" and result["data"]["source"] == f"generated from {tmp_path / 'data'}"
    assert result["run"]["wall_seconds"] > 1 and result["run"]["peak_memory_mb"] > 50
    executed = nbformat.read(tmp_path / "reports" / "demo" / "demo.ipynb", as_version=4)
    assert any("injected-parameters" in c.metadata.get("tags", []) for c in executed.cells)
    assert report.read_metrics(tmp_path / "reports" / "demo")["run"] == result["run"]
    assert not stale.exists()


@pytest.mark.slow
def test_a_hanging_cell_fails_the_run_instead_of_blocking_it(tmp_path):
    write_notebook(tmp_path / "demo" / "demo.ipynb", "import time; time.sleep(60)")
    with pytest.raises(run.NotebookFailed, match="demo.ipynb: a cell ran longer than 2 s"):
        run.run_project("demo", ["demo.ipynb"], "tiny", tmp_path, tmp_path / "reports", root=tmp_path,
                        execution=run.Execution(cell_timeout=2))


@pytest.mark.slow
def test_runner_names_the_failing_notebook_and_cell(tmp_path):
    write_notebook(tmp_path / "demo" / "demo.ipynb", "raise ValueError('bad column temp')")
    with pytest.raises(run.NotebookFailed, match=r"demo.ipynb failed in cell \d+ .*ValueError: bad column temp"):
        run.run_project("demo", ["demo.ipynb"], "tiny", tmp_path, tmp_path / "reports", root=tmp_path)


def test_cli_help_and_unknown_project(capsys):
    with pytest.raises(SystemExit):
        run.main(["--help"])
    assert "--profile {quick,full,tiny}" in capsys.readouterr().out
    assert run.main(["no_such_project", "--no-readme"]) == 2
    assert "unknown project(s): no_such_project" in capsys.readouterr().err


def test_every_listed_notebook_exists_is_stripped_and_starts_with_parameters():
    from common.paths import REPO_ROOT

    for project, notebooks in run.load_projects().items():
        for name in notebooks:
            nb = nbformat.read(REPO_ROOT / project / name, as_version=4)
            code = [c for c in nb.cells if c.cell_type == "code"]
            assert "parameters" in code[0].metadata.get("tags", []), f"{name}: first code cell must be tagged parameters"
            assert 'PROFILE = "' in code[0].source and "DATA_DIR" in code[0].source
            assert all(not c.outputs and c.execution_count is None for c in code), f"{name} has outputs: strip them"
            # what the runner passes, papermill finds in that cell (it injects its values after it)
            import papermill

            found = papermill.inspect_notebook(str(REPO_ROOT / project / name))
            assert {"PROFILE", "DATA_DIR", "REPORT_DIR"} <= set(found), f"{name}: papermill sees {sorted(found)}"
            assert found["PROFILE"]["default"] == '"full"' and found["REPORT_DIR"]["default"] == "None", name


def test_params_parse_json_values_or_strings_and_reject_reserved_keys():
    assert run.parse_params(["DATASET=landmark_gldv2", "EPOCHS=3", "FAST=true", 'NAME="07"']) == {
        "DATASET": "landmark_gldv2", "EPOCHS": 3, "FAST": True, "NAME": "07"}
    assert run.parse_params([]) == {}
    for bad, message in (("DATASET", "expected KEY=VALUE"), ("not a name=1", "expected KEY=VALUE"),
                         ("PROFILE=quick", "--param PROFILE")):
        with pytest.raises(ValueError, match=message):
            run.parse_params([bad])


@pytest.mark.slow
def test_runner_passes_params_to_every_notebook(tmp_path):
    body = ('import json, pathlib\n'
            'm = {"project": "demo", "title": "Demo", "profile": PROFILE, "data": {"source": DATASET, '
            '"stand_in": True, "note": str(EPOCHS)}}\n'
            'pathlib.Path(REPORT_DIR, "metrics.json").write_text(json.dumps(m))')
    write_notebook(tmp_path / "demo" / "demo.ipynb", body)
    result = run.run_project("demo", ["demo.ipynb"], "tiny", tmp_path, tmp_path / "reports", root=tmp_path,
                             params=run.parse_params(["DATASET=landmark_gldv2", "EPOCHS=2"]))
    assert result["data"]["source"] == "landmark_gldv2" and result["data"]["note"] == "2"
    assert result["run"]["parameters"] == {"DATASET": "landmark_gldv2", "EPOCHS": 2}


def test_cli_rejects_a_malformed_param(capsys):
    assert run.main(["--param", "DATASET", "--no-readme"]) == 2
    assert "expected KEY=VALUE" in capsys.readouterr().err


# A project whose data is "real" only when DATA_DIR holds real.txt; it exports a model file.
RECORDABLE = """
import json, pathlib
real = pathlib.Path(DATA_DIR, "real.txt").is_file()
report_dir = pathlib.Path(REPORT_DIR)
m = {"project": "demo", "title": "Demo", "profile": PROFILE,
     "data": {"source": "real numbers" if real else "generated numbers", "stand_in": not real, "note": ""},
     "headline": {"metric": "accuracy", "seed": "50%", "value": "91%"},
     "tables": [{"title": "Key", "columns": ["a"], "rows": [[1]]}, {"title": "Detail", "columns": ["b"], "rows": [[2]]}],
     "figures": []}
(report_dir / "metrics.json").write_text(json.dumps(m))
(report_dir / "models").mkdir(exist_ok=True)
(report_dir / "models" / "demo.onnx").write_text(f"model of a {PROFILE} run")
"""


def git(repo: Path, *args: str) -> str:
    import subprocess

    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout


@pytest.mark.slow
def test_only_a_real_data_full_run_rewrites_the_record(tmp_path, capsys):
    """`make run` on stand-in data, or a quick profile, leaves every tracked file as it was."""
    repo = tmp_path / "repo"
    write_notebook(repo / "demo" / "demo.ipynb", RECORDABLE)
    (repo / "pyproject.toml").write_text('[tool.portfolio.projects]\ndemo = ["demo.ipynb"]\n')
    (repo / "README.md").write_text(f"# Title\n\n{report.START_MARKER}\nold\n{report.END_MARKER}\n")
    (repo / ".gitignore").write_text("reports/local/\n")
    (repo / "demo" / "models").mkdir()
    (repo / "demo" / "models" / "demo.onnx").write_text("the committed model")
    (repo / "reports" / "demo").mkdir(parents=True)
    (repo / "reports" / "demo" / "metrics.json").write_text("{}")
    git(repo, "init", "-q")
    git(repo, "add", "-A")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "record")
    empty, real = tmp_path / "empty", tmp_path / "real"
    empty.mkdir()
    real.mkdir()
    (real / "real.txt").write_text("yes")

    assert run.main(["demo", "--profile", "full", "--data-dir", str(empty), "--quiet"], root=repo) == 0
    assert "not the record (stand-in data): results in" in capsys.readouterr().out
    assert run.main(["demo", "--profile", "quick", "--data-dir", str(real), "--quiet"], root=repo) == 0
    assert "not the record (profile quick)" in capsys.readouterr().out
    assert git(repo, "status", "--porcelain") == ""  # nothing tracked changed, nothing untracked appeared
    assert (repo / "reports" / "local" / "demo" / "models" / "demo.onnx").read_text() == "model of a quick run"

    assert run.main(["demo", "--profile", "full", "--data-dir", str(real), "--quiet"], root=repo) == 0
    assert (repo / "demo" / "models" / "demo.onnx").read_text() == "model of a full run"
    record = report.read_metrics(repo / "reports" / "demo")
    assert record["data"]["stand_in"] is False and record["run"]["notebooks"] == ["demo.ipynb"]
    assert not (repo / "reports" / "demo" / "models").exists()  # models live in demo/models/
    readme = (repo / "README.md").read_text()
    assert "## Results at a glance" in readme and "| accuracy | 50% | 91% | real numbers |" in readme
    assert "#### Key" in readme and "#### Detail" not in readme  # the README shows the highlights
    assert "#### Detail" in (repo / "reports" / "demo" / "README.md").read_text()  # the rest is linked


def test_no_machine_paths_in_the_committed_record():
    """Reports travel with the repository: no absolute path of the machine that ran them."""
    from common.paths import REPO_ROOT

    needles = {str(REPO_ROOT), str(Path.home())}
    files = [REPO_ROOT / "README.md", *(p for p in (REPO_ROOT / "reports").rglob("*")
                                        if p.is_file() and p.suffix in {".md", ".json", ".ipynb", ".csv", ".txt"}
                                        and "local" not in p.relative_to(REPO_ROOT / "reports").parts[:1])]
    offenders = [f"{p.relative_to(REPO_ROOT)} ({n})" for p in files for n in needles
                 if len(n) > 1 and n in p.read_text(errors="ignore")]
    assert not offenders, f"absolute paths of this machine in committed files: {offenders}"


def test_a_notebook_outside_the_runner_writes_to_the_git_ignored_local_folder(tmp_path):
    """REPORT_DIR = None (Jupyter, SageMaker Studio): reports/local/<project>/, which git ignores."""
    import shutil
    import subprocess

    folder = paths.report_dir("a_project_of_this_test")
    try:
        assert folder == paths.REPO_ROOT / "reports" / "local" / "a_project_of_this_test"
        assert (folder / "figures").is_dir()
        ignored = subprocess.run(["git", "check-ignore", "-q", str(folder / "metrics.json")], cwd=paths.REPO_ROOT)
        assert ignored.returncode == 0, f"{folder} is not ignored by git"
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    assert paths.report_dir("x", tmp_path / "x") == tmp_path / "x"  # the runner's REPORT_DIR wins
