"""Every notebook as its users run it: Jupyter's Run All, in a fresh clone, offline, no datasets.

No runner and no papermill: `jupyter_clone.run_as_jupyter` executes the notebook as written, with
only PROFILE edited to "tiny" in its parameters cell (as a user edits it). The tiny profile walks
the full profile's code path with tiny budgets, so what would break `make run` breaks here. After
each project, `git status` of the clone must be clean: a notebook run outside the runner writes to
`reports/local/<project>/` (git-ignored) and never touches the record.

Every test ends with `assert_outputs_look_right`: no cell may print a warning on stderr (a red block
in Jupyter) or show a figure that collapsed or blew up (`jupyter_clone.output_problems`).

The runner's own path (`make run`: papermill, promotion of a real-data full run) is tested with
small notebooks in test_report_and_runner.py, which also checks that papermill finds the parameters
of every real notebook.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import pandas as pd
import pytest

from common import report
from tests.jupyter_clone import fresh_clone, output_problems, outputs_text, run_as_jupyter, tracked_changes

pytestmark = pytest.mark.slow

LANDMARK = ["cnn_from_scratch.ipynb", "transfer_learning.ipynb", "predictor_demo.ipynb"]


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Path:
    return fresh_clone(tmp_path_factory.mktemp("fresh_clone"))


@pytest.fixture
def clone_as_user(clone, tmp_path, monkeypatch) -> Path:
    """The kernel's environment: the clone's code, an empty DATA_DIR (each project falls back to its
    labelled stand-in; no download is attempted or needed) and Jupyter's own plotting backend."""
    monkeypatch.setenv("PYTHONPATH", str(clone))
    empty = tmp_path / "data"
    empty.mkdir()
    monkeypatch.setenv("DATA_DIR", str(empty))
    monkeypatch.setenv("LANDMARK_OFFLINE", "1")
    monkeypatch.delenv("MPLBACKEND", raising=False)
    yield clone
    assert tracked_changes(clone) == [], "a notebook run outside the runner changed tracked files"


def assert_outputs_look_right(*notebooks, known: str | None = None) -> None:
    """No stderr warning and no collapsed figure in any of `notebooks`. `known`: a problem someone owns
    and has not fixed yet; the test then reports it as an expected failure (it passes once fixed)."""
    problems = [problem for nb in notebooks for problem in output_problems(nb)]
    if problems and known:
        pytest.xfail(f"{known}: " + "; ".join(problems))
    assert not problems, "\n".join(problems)


def local_report(clone: Path, project: str) -> tuple[Path, dict]:
    folder = clone / "reports" / "local" / project
    return folder, report.read_metrics(folder)


def test_bike_notebook(clone_as_user):
    from bike_sharing_autogluon.src import train

    nb = run_as_jupyter(clone_as_user / "bike_sharing_autogluon" / "bike_sharing_autogluon.ipynb")
    folder, metrics = local_report(clone_as_user, "bike_sharing_autogluon")
    assert metrics["profile"] == "tiny" and metrics["data"]["stand_in"] is True
    assert [row["stage"] for row in metrics["stages"]] == [s.name for s in train.STAGES]
    sizes = set()
    for stage in train.STAGES:
        submission = pd.read_csv(folder / f"submission_{stage.name}.csv")
        assert list(submission.columns) == ["datetime", "count"] and (submission["count"] >= 0).all()
        sizes.add(len(submission))
    assert len(sizes) == 1 and sizes.pop() > 3000  # 6,493 test hours; 3,223 in the 2011-only stand-in
    selected = metrics["summary"]["selected stage (lowest block CV RMSLE)"]
    assert (folder / "submission.csv").read_bytes() == (folder / f"submission_{selected}.csv").read_bytes()
    for figure in metrics["figures"]:
        assert (folder / figure["path"]).stat().st_size > 1000
    assert_outputs_look_right(nb)


def test_mnist_notebook(clone_as_user):
    nb = run_as_jupyter(clone_as_user / "mnist_classifier" / "mnist_classifier.ipynb")
    folder, metrics = local_report(clone_as_user, "mnist_classifier")
    assert metrics["profile"] == "tiny"
    models = metrics["tables"][0]
    assert [row[0] for row in models["rows"]] == ["mlp_baseline", "mlp_improved", "mlp_bn_onecycle",
                                                   "mlp_bn_onecycle_aug", "cnn"]
    for figure in metrics["figures"]:
        assert (folder / figure["path"]).is_file(), figure
    for suffix in (".pt", ".onnx"):
        assert sorted(p.name for p in (folder / "models").glob(f"*{suffix}")) == sorted(
            f"{row[0]}{suffix}" for row in models["rows"])
    serving = next(t for t in metrics["tables"] if t["title"].startswith("Serving"))
    assert {row[1] for row in serving["rows"]} >= {"TorchScript", "ONNX Runtime"}
    printed = outputs_text(nb, "stdout")
    # offline: the stand-in is said in a plain line with the download's own reason (never an empty "(...gz:)")
    assert re.search(r"could not be downloaded: [^.\s]", printed) and "gz:)" not in printed
    assert "MNIST folder DATA_DIR/mnist" in printed and "data DATA_DIR," not in printed
    shown = [o for cell in nb.cells for o in cell.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(shown) >= 2 + 3 * 5 + 1  # samples, balance, 3 per model, the comparison: all checked below
    assert_outputs_look_right(nb)


def test_scones_notebook(clone_as_user):
    nb = run_as_jupyter(clone_as_user / "scones_workflow" / "scones_workflow.ipynb")
    folder, metrics = local_report(clone_as_user, "scones_workflow")
    assert metrics["profile"] == "tiny" and metrics["data"]["stand_in"] is True
    summary = metrics["summary"]
    assert summary["executions (test images)"] == 20 and summary["capture records"] >= summary["executions succeeded"]
    assert metrics["load"]["checks_passed"] is True and "endpoint model" in metrics["load"]["breakdown_ms"]
    bad = {row[0]: row[2] for row in next(t for t in metrics["tables"] if t["title"] == "Bad inputs")["rows"]}
    assert bad == {"bad/missing.png": "ImageNotFound", "bad/empty.png": "EmptyImage",
                   "bad/not_an_image.png": "NotAnImage", "bad/truncated.png": "InvalidImage"}
    variants = next(t for t in metrics["tables"] if t["title"].startswith("Production variants"))
    assert {row[0] for row in variants["rows"]} <= {"Primary", "Challenger"} and summary["variant verdict"]
    assert metrics["alarm"]["exit_code"] == (1 if metrics["alarm"]["in_alarm"] else 0)
    assert metrics["retraining"]["candidate_accuracy"] is not None and "promoted" in metrics["retraining"]
    assert {r["runtime"] for r in metrics["benchmark"]} >= {"TorchScript", "ONNX Runtime"}
    assert len(metrics["figures"]) == 7
    for figure in metrics["figures"]:
        assert (folder / figure["path"]).stat().st_size > 1000
    # training progress is ordinary output, not red stderr
    assert "epoch 1:" in outputs_text(nb, "stdout") and "INFO" not in outputs_text(nb, "stderr")
    assert_outputs_look_right(nb)


def test_landmark_predictor_demo_works_on_a_fresh_clone_with_the_committed_model(clone_as_user):
    """Before any training: the demo falls back to the committed predictor; the stand-in's scenes are
    not its landmarks, so the answers are shown unscored; the command line classifies real files."""
    nb = run_as_jupyter(clone_as_user / "landmark_classifier" / "predictor_demo.ipynb")
    _, metrics = local_report(clone_as_user, "landmark_classifier")
    app = metrics["app"]
    scenes = [row for row in app["demo"] if row["true landmark"] != "no known landmark"]
    assert scenes and all(row["correct"] is None for row in scenes)
    # the photo of no landmark is scored whatever the data: "no known landmark" is its right answer
    assert [row["photo"] for row in app["demo"] if row not in scenes] == ["coffee.png (scikit-image)"]
    assert "landmark_classifier/models/landmark_predictor.onnx" in outputs_text(nb, "stdout")
    assert app["cli_exit_code"] == 1  # the deliberately bad file, named; the two photos still classified
    assert app["cli_stderr"].startswith("error: not_an_image.jpg:")
    printed = outputs_text(nb, "stdout")
    assert printed.count("  1. ") == 2 and "no such file" not in printed
    assert_outputs_look_right(nb)


def test_landmark_notebooks_in_order(clone_as_user):
    notebooks = [run_as_jupyter(clone_as_user / "landmark_classifier" / name) for name in LANDMARK]
    folder, metrics = local_report(clone_as_user, "landmark_classifier")
    assert metrics["profile"] == "tiny" and metrics["data"]["stand_in"] is True
    summary = metrics["summary"]
    for key in ("scratch CNN test accuracy", "transfer learning test accuracy", "transfer learning model",
                "predictor latency p50 (ms, one 1024x768 photo, 1 CPU thread)",
                "ONNX Runtime vs TorchScript single-image speed-up (1 thread, x)"):
        assert key in summary, key
    assert 0 <= summary["scratch CNN test accuracy"] <= 1 and 0 <= summary["transfer learning test accuracy"] <= 1
    assert "through predictor.py" in summary["transfer learning test scored on"]
    # full's code path: two backbones compared, frozen and fine-tuned candidates of each
    candidates = metrics["transfer"]["candidates"]
    assert {c["backbone"] for c in candidates} == {"efficientnet_lite0", "efficientnet_lite1"}
    assert len({c["method"] for c in candidates}) == 2
    titles = {t["title"].split(":")[0] for t in metrics["tables"]}
    assert titles >= {"Scratch CNN", "Transfer learning", "Predictor"}
    for figure in metrics["figures"]:
        assert (folder / figure["path"]).stat().st_size > 1000, figure
    assert any("misclassified" in f["title"] for f in metrics["figures"])
    app = metrics["app"]
    assert [row["upload"] for row in app["bad_inputs"]] == ["empty.jpg", "notes.txt", "truncated.jpg"]
    assert all(row["shown to the user"].startswith(row["upload"] + ":") for row in app["bad_inputs"])
    assert app["cli_exit_code"] == 1
    assert all(isinstance(row["correct"], bool) for row in app["demo"])  # this run's predictor: scored
    exported = folder / "models"
    assert (exported / "landmark_predictor.onnx").is_file() and (exported / "landmark_predictor.pt").is_file()
    assert metrics["transfer"]["predictor"]["metadata"]["training_run"]["profile"] == "tiny"
    # the file holds the model refitted on the training and validation photos, its rule says so
    assert summary["refit: photos"] == summary["refit: with thumbnails"] / 2 > 0
    assert "refitted on the training and validation photos" in summary["transfer learning model"]
    assert "held out" in metrics["open_set"]["rule"]["threshold and temperature from"]
    # the reported test accuracy is the shipped file's, through predictor.py
    from landmark_classifier.src import data, evaluate, predictor

    landmarks = data.open_dataset(Path(os.environ["DATA_DIR"]) / "landmark_images_standin_small")
    paths, labels = data.list_images(landmarks.root / "test", landmarks.class_names)
    served = evaluate.evaluate_served(predictor.load(exported / "landmark_predictor.onnx"), paths, labels,
                                      landmarks.display_names)
    assert served.accuracy == pytest.approx(summary["transfer learning test accuracy"], abs=1e-4)
    assert_outputs_look_right(*notebooks)


def test_landmark_app_notebook(clone_as_user):
    nb = run_as_jupyter(clone_as_user / "landmark_classifier" / "app.ipynb")
    assert "Traceback" not in outputs_text(nb)
    assert_outputs_look_right(nb)


def test_the_output_check_catches_a_red_warning_and_a_collapsed_figure():
    """What the JupyterLab run showed under tiny: constrained_layout's red warning and a 4224 x 333 px chart."""
    import base64
    import io

    import nbformat
    from PIL import Image

    def png(width, height):
        buffer = io.BytesIO()
        Image.new("RGB", (width, height), "white").save(buffer, "PNG")
        return base64.b64encode(buffer.getvalue()).decode()

    cell = nbformat.v4.new_code_cell("fig, ax = plt.subplots()\nax.barh(...)", outputs=[
        nbformat.v4.new_output("stream", name="stderr", text="/x/layout_engine.py:1: UserWarning: constrained_layout "
                               "not applied because axes sizes collapsed to zero.\n  warnings.warn(\n"),
        nbformat.v4.new_output("display_data", data={"image/png": png(4224, 333), "text/plain": "<Figure>"}),
        nbformat.v4.new_output("display_data", data={"image/png": png(853, 397)}),
        nbformat.v4.new_output("stream", name="stderr", text="stages: 100%|##########| 12/12\n"),
        nbformat.v4.new_output("stream", name="stdout", text="WARNING: printed on stdout is plain text\n")])
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# t"), cell])
    assert output_problems(nb) == [
        "cell 1 ('fig, ax = plt.subplots()'): a warning on stderr: /x/layout_engine.py:1: UserWarning: "
        "constrained_layout not applied because axes sizes collapsed to zero.",
        "cell 1 ('fig, ax = plt.subplots()'): a 4224 x 333 px figure"]
    with pytest.raises(AssertionError, match="4224 x 333"):
        assert_outputs_look_right(nb)
