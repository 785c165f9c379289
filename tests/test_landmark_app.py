"""The landmark app's logic without a browser: cards, top-5 text, errors, uploads, the notebook.

The model is a tiny ONNX graph built with onnx.helper (no torch, milliseconds) that honours the
predictor's contract: uint8 N x 3 x H x W of any size in, probabilities out, class names in the
metadata. The browser test (test_landmark_app_browser.py) drives the real page with the committed model.
"""
from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from datetime import datetime, timezone

import ipywidgets as widgets
import nbformat
import numpy as np
import pytest
from PIL import Image

from common import paths
from common.serving import ModelFileError
from landmark_classifier.src import app

CLASSES = ["00.Eiffel_Tower", "01.Geisel_Library", "02.Golden_Gate_Bridge", "03.Great_Wall_of_China",
           "04.Leaning_Tower_of_Pisa", "05.Mount_Rushmore", "06.Niagara_Falls"]


def write_model(path, class_names=CLASSES, metadata=True, extra=None):
    """Mean colour of the image -> linear -> softmax: the predictor's input and output contract."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = numpy_helper.from_array(rng.normal(size=(3, len(class_names))).astype(np.float32) * 20, "w")
    nodes = [helper.make_node("Cast", ["input"], ["x"], to=TensorProto.FLOAT),
             helper.make_node("ReduceMean", ["x"], ["m"], axes=[2, 3], keepdims=0),
             helper.make_node("Div", ["m", "c255"], ["n"]),
             helper.make_node("MatMul", ["n", "w"], ["logits"]),
             helper.make_node("Softmax", ["logits"], ["output"], axis=1)]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("input", TensorProto.UINT8, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", len(class_names)])],
        initializer=[weights, numpy_helper.from_array(np.array(255, np.float32), "c255")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if metadata:
        for key, value in {"class_names": class_names, "input": "uint8 N x 3 x H x W RGB, any size",
                           "model_name": "tiny test model",
                           **(extra or {})}.items():
            entry = model.metadata_props.add()
            entry.key, entry.value = key, json.dumps(value)
    onnx.save_model(model, str(path))
    return path


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return write_model(tmp_path_factory.mktemp("model") / "tiny.onnx")


def jpeg(width=200, height=150, seed=0) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(buffer, format="JPEG")
    return buffer.getvalue()


def card_html(card) -> str:
    return card.value if isinstance(card, widgets.HTML) else card.children[1].value


def upload_value(*files):
    return tuple({"name": name, "type": "image/jpeg", "size": len(content), "content": memoryview(content),
                  "last_modified": datetime.now(timezone.utc)} for name, content in files)


def test_display_names_come_from_the_class_folders():
    assert app.display_name("06.Niagara_Falls") == "Niagara Falls"
    assert app.display_name("12.Kantanagar_Temple") == "Kantanagar Temple"
    assert app.display_name("Golden_Gate_Bridge") == "Golden Gate Bridge"


def test_a_photo_gets_a_preview_and_its_top_5_as_text(model_path):
    landmark_app = app.LandmarkApp(model_path)
    result = landmark_app.classify(jpeg(640, 480), "holiday.jpg")
    assert not result.error and len(result.top) == 5
    probabilities = [p for _, p in result.top]
    assert probabilities == sorted(probabilities, reverse=True) and 0 < sum(probabilities) <= 1 + 1e-6
    preview, text = result.card.children
    # the old app sent a PIL image to an Output widget and the page got "[object Object]"
    assert isinstance(preview, widgets.Image) and preview.format == "jpeg"
    assert bytes(preview.value[:2]) == b"\xff\xd8" and max(Image.open(io.BytesIO(preview.value)).size) == 320
    assert text.value.count("<tr>") == 5 and "Top 5 landmarks" in text.value
    for label, p in result.top:
        assert app.display_name(label) in text.value and f"{p:.1%}" in text.value
    assert "lm-card" in result.card._dom_classes


@pytest.mark.parametrize("name, content, reason", [
    ("empty.jpg", b"", "no image data"),
    ("notes.txt", b"these are not pixels", "not an image"),
    ("truncated.png", None, "cannot decode"),
])
def test_a_bad_file_gets_one_message_naming_it_once(model_path, name, content, reason):
    if content is None:
        buffer = io.BytesIO()
        Image.new("RGB", (300, 300), "red").save(buffer, format="PNG")
        content = buffer.getvalue()[:200]
    landmark_app = app.LandmarkApp(model_path)
    result = landmark_app.classify(content, name)
    assert result.top == [] and result.error.startswith(f"Cannot classify {name}: ") and reason in result.error
    assert result.error.count(name) == 1 and card_html(result.card).count(name) == 1
    assert "role='alert'" in card_html(result.card)
    assert landmark_app.classify(jpeg(), "after.jpg").top  # and the app keeps working


def test_big_jpegs_are_decoded_at_a_reduced_scale_that_keeps_what_the_model_needs():
    big = jpeg(2000, 1500)
    assert app.decode_upload(big, "big.jpg", 600).size == (1000, 750)  # 1/2: 1/4 would be under 600
    assert app.decode_upload(big, "big.jpg", 300).size == (500, 375)
    assert app.decode_upload(big, "big.jpg", None).size == (2000, 1500)
    assert app.decode_upload(jpeg(640, 480), "small.jpg", 600).size == (640, 480)
    buffer = io.BytesIO()
    Image.new("RGB", (2000, 1500), "blue").save(buffer, format="PNG")
    assert app.decode_upload(buffer.getvalue(), "big.png", 300).size == (2000, 1500)  # only JPEGs
    with pytest.raises(ValueError, match="^cut.jpg: cannot decode"):
        app.decode_upload(big[:5000], "cut.jpg", 300)


def test_the_app_decodes_big_jpegs_smaller_when_the_model_says_its_size(tmp_path):
    shown = [f"Landmark {i}" for i in range(len(CLASSES))]
    landmark_app = app.LandmarkApp(write_model(tmp_path / "sized.onnx",
                                               extra={"resize_size": 256, "display_names": shown}))
    assert landmark_app.decode_side == 512
    result = landmark_app.classify(jpeg(4032, 3024), "phone.jpg")
    assert not result.error and len(result.top) == 5
    best = CLASSES.index(result.top[0][0])
    assert f"phone.jpg</b>: Landmark {best} (" in card_html(result.card)  # the model's own display names


def test_an_unexpected_failure_is_a_message_too(model_path, monkeypatch):
    landmark_app = app.LandmarkApp(model_path)
    monkeypatch.setattr(landmark_app.model, "run_all", lambda batch: 1 / 0)
    result = landmark_app.classify(jpeg(), "x.jpg")
    assert result.error == "Cannot classify x.jpg: unexpected error (ZeroDivisionError: division by zero)"


def test_uploads_several_files_at_once_and_the_same_file_twice(model_path):
    landmark_app = app.LandmarkApp(model_path)
    landmark_app.upload.value = upload_value(("a.jpg", jpeg(seed=1)), ("bad.jpg", b"nope"), ("c.jpg", jpeg(seed=2)))
    cards = landmark_app.results.children
    assert len(cards) == 3 and "a.jpg" in card_html(cards[0]) and "bad.jpg" in card_html(cards[1])
    assert landmark_app.upload.value == () and not landmark_app.upload.disabled  # ready for the same file again
    assert "3 files classified in" in landmark_app.status.value
    landmark_app.upload.value = upload_value(("a.jpg", jpeg(seed=1)))
    cards = landmark_app.results.children
    assert len(cards) == 4 and card_html(cards[0]) == card_html(cards[1])  # answered again, on top


def test_old_cards_are_dropped_beyond_the_limit(model_path, monkeypatch):
    monkeypatch.setattr(app, "MAX_CARDS", 3)
    landmark_app = app.LandmarkApp(model_path)
    for i in range(5):
        landmark_app.classify_many([(jpeg(seed=i), f"{i}.jpg")])
    assert [card_html(c).split("</b>")[0].rsplit(">", 1)[1] for c in landmark_app.results.children] == \
        ["4.jpg", "3.jpg", "2.jpg"]


def test_a_missing_or_unusable_model_is_named_on_the_page(tmp_path):
    missing = tmp_path / "nope.onnx"
    with pytest.raises(ModelFileError, match="nope.onnx"):
        app.LandmarkApp(missing)
    shown = app.page(missing)
    assert isinstance(shown, widgets.HTML) and "cannot start" in shown.value and "nope.onnx" in shown.value
    no_names = write_model(tmp_path / "bare.onnx", metadata=False)
    shown = app.page(no_names).value
    assert "not a landmark predictor" in shown and "class_names" in shown


def test_the_model_path_defaults_to_the_committed_predictor(monkeypatch, tmp_path):
    monkeypatch.delenv(app.MODEL_ENV, raising=False)
    assert app.resolve_model_path() == paths.REPO_ROOT / "landmark_classifier" / "models" / "landmark_predictor.onnx"
    monkeypatch.setenv(app.MODEL_ENV, str(tmp_path / "m.onnx"))
    assert app.resolve_model_path() == tmp_path / "m.onnx"
    assert app.resolve_model_path("x.onnx").name == "x.onnx"


def test_the_launcher_names_a_missing_model(tmp_path, capsys):
    assert app.main(["--model", str(tmp_path / "none.onnx")]) == 2
    assert "none.onnx: no such model file" in capsys.readouterr().err


def test_the_app_imports_no_torch():
    code = "import sys; import landmark_classifier.src.app; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=paths.REPO_ROOT).stdout
    assert out.strip() == "False"


def test_the_notebook_only_builds_the_ui(model_path, tmp_path, monkeypatch):
    """Stripped, parameters first, and executed it shows the widget without error or writing files."""
    from nbclient import NotebookClient

    notebook = nbformat.read(app.NOTEBOOK, as_version=4)
    code = [c for c in notebook.cells if c.cell_type == "code"]
    assert notebook.cells[0] is code[0] and "parameters" in code[0].metadata.get("tags", [])
    assert "MODEL = None" in code[0].source
    assert all(not c.outputs and c.execution_count is None for c in code)
    assert len(code) == 2, "the app notebook only builds the UI"
    monkeypatch.setenv(app.MODEL_ENV, str(model_path))
    workdir = tmp_path / "run"
    workdir.mkdir()
    NotebookClient(notebook, timeout=120, kernel_name="python3",
                   resources={"metadata": {"path": str(workdir)}}).execute()
    outputs = [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error" or o.get("name") == "stderr"], outputs
    assert any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in outputs)
    assert list(workdir.iterdir()) == []


def test_the_report_chart_still_draws(tmp_path):
    figure = app.top_k_chart([("00.Eiffel_Tower", 0.9), ("06.Niagara_Falls", 0.1)], "x.jpg", tmp_path / "c.png")
    assert (tmp_path / "c.png").stat().st_size > 1000 and figure is not None


def test_the_readme_report_shows_the_screenshot_and_its_timings(tmp_path):
    from common import report

    folder = tmp_path / "reports" / "landmark_classifier"
    folder.mkdir(parents=True)
    assert report.render_app_screenshot(folder, "reports/landmark_classifier") == ""  # none taken
    (folder / "app_screenshot.png").write_bytes(b"\x89PNG")
    (folder / "app_screenshot.json").write_text(json.dumps({
        "photo": "landmark_gldv2/test/00.Eiffel_Tower/a.jpg", "answer": "a.jpg: Eiffel Tower (97.0%)\nTop 5",
        "command": "python -m landmark_classifier.src.app_screenshot", "browser": "headless Chromium",
        "measured_at": "2026-11-22 05:00 UTC", "machine": "2 CPU cores", "runs": 5,
        "median_seconds": {"page interactive": 2.5, "upload -> result": 0.31},
        "median_cpu_seconds": {"page interactive": 4.2}, "model": {"model_name": "lite0 + head"}}))
    text = report.render_app_screenshot(folder, "reports/landmark_classifier")
    assert "![The app answering a real photo (landmark_gldv2/test/00.Eiffel_Tower/a.jpg)]" \
           "(reports/landmark_classifier/app_screenshot.png)" in text
    assert "a.jpg: Eiffel Tower (97.0%) (model: lite0 + head)" in text
    assert "| in the browser | median of 5 (s) | worst (s) | CPU of all processes, median (s) |" in text
    assert "| page interactive | 2.5 | n/a | 4.2 |" in text and "| upload -> result | 0.31 | n/a | n/a |" in text


@pytest.mark.slow
def test_one_command_serves_the_page_and_prints_its_url(model_path):
    """`make app` runs this launcher: Voila on 127.0.0.1, the URL printed; Ctrl+C stops it all."""
    import os
    import signal
    import urllib.request

    launcher = subprocess.Popen([sys.executable, "-m", "landmark_classifier.src.app", "--model", str(model_path)],
                                cwd=paths.REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                start_new_session=True)
    try:
        line = launcher.stdout.readline()  # printed once the server answers
        url = re.search(r"http://127\.0\.0\.1:\d+/", line).group(0)
        with urllib.request.urlopen(url, timeout=30) as response:
            assert response.status == 200 and b"voila" in response.read().lower()
        launcher.send_signal(signal.SIGINT)  # what Ctrl+C sends
        assert launcher.wait(timeout=30) == 0
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
            launcher.wait()


def test_a_photo_of_no_known_landmark_says_so_with_the_guesses_greyed(tmp_path):
    # a file whose open-set threshold is above every score: each photo shows "no known landmark"
    rule = {"method": "msp", "temperature": 1.0, "threshold": 1.01, "known_if": "known_score >= threshold"}
    landmark_app = app.LandmarkApp(write_model(tmp_path / "strict.onnx", extra={"open_set": rule}))
    result = landmark_app.classify(jpeg(), "cat.jpg")
    assert not result.error and result.landmark is None and len(result.top) == 5
    shown = card_html(result.card)
    assert "cat.jpg</b>: <span class='lm-none'>none of the 7 landmarks I know</span>" in shown
    assert "lm-guesses" in shown and "Best guesses" in shown and "Top 5 landmarks" not in shown
    named = app.LandmarkApp(write_model(tmp_path / "open.onnx")).classify(jpeg(), "x.jpg")
    assert named.landmark == named.top[0][0] and "lm-guesses" not in card_html(named.card)
