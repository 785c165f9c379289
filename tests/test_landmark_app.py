"""The app's upload callback: top-5 chart for a photo, the error message (not a traceback) for anything else."""
from __future__ import annotations

from datetime import datetime, timezone

from landmark_classifier.src.app import LandmarkApp
from tests.landmark_fixtures import CLASSES, tiny_dataset, tiny_predictor  # noqa: F401 (fixtures)


def test_callback_shows_the_top_k_for_a_photo(tiny_predictor, tiny_dataset, tmp_path):
    app = LandmarkApp(tiny_predictor[0])
    image = next((tiny_dataset.root / "test").rglob("*.jpg"))
    result = app.classify(image.read_bytes(), image.name, save_to=tmp_path / "top5.png")
    assert not result.error and len(result.top) == CLASSES
    assert result.top[0][1] >= result.top[-1][1] and (tmp_path / "top5.png").stat().st_size > 1000
    shown = app.output.outputs  # the photo and the chart, in the widget's state
    assert len(shown) == 2 and all("image/png" in item["data"] for item in shown)
    app.classify(image.read_bytes(), image.name)
    assert len(app.output.outputs) == 2  # a new upload replaces the previous result


def test_callback_shows_an_error_message_for_bad_files(tiny_predictor):
    app = LandmarkApp(tiny_predictor[0])
    for name, content in {"empty.jpg": b"", "notes.txt": b"hello", "half.jpg": b"\xff\xd8\xff\xe0"}.items():
        result = app.classify(content, name)
        assert result.top == [] and name in result.error
        (shown,) = app.output.outputs
        assert "Cannot classify" in shown["data"]["text/html"] and name in shown["data"]["text/html"]


def test_upload_widget_triggers_the_callback(tiny_predictor, tiny_dataset, monkeypatch):
    app = LandmarkApp(tiny_predictor[0])
    seen = []
    monkeypatch.setattr(app, "classify", lambda content, name: seen.append((name, len(content))))
    image = next((tiny_dataset.root / "test").rglob("*.jpg"))
    app.upload.value = ({"name": image.name, "type": "image/jpeg", "size": image.stat().st_size,
                         "content": memoryview(image.read_bytes()),
                         "last_modified": datetime.now(timezone.utc)},)
    assert seen == [(image.name, image.stat().st_size)]
