"""Retraining from capture: pseudo-labels, the labelling queue, the promotion gate (tiny model, stand-in data)."""
from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from scones_workflow.src import data
from scones_workflow.src.training import model, retrain
from scones_workflow.src.data.stand_in import generate_stand_in
from scones_workflow.src.monitoring import monitor
from scones_workflow.src.serving.capture import CaptureWriter

TINY = model.TrainConfig(backbone="efficientnet_lite0", resolution=32, split_block=15, epochs=1, batch_size=16,
                         trunk_engine="torch")


def _png(image):
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("standin")
    generate_stand_in(root, n_train=30, n_test=10, seed=3)
    staged = data.open_folder(root, "fixture", stand_in=True)
    train_images, train_labels = data.load_arrays(staged, "train")
    test_images, test_labels = data.load_arrays(staged, "test")
    cache = tmp_path_factory.mktemp("cache")
    production = model.export(model.train(train_images, train_labels, TINY, cache_dir=cache).model,
                              tmp_path_factory.mktemp("prod") / "model.onnx", TINY, {"profile": "test"})
    # captured traffic: 6 new images (4 confident, 2 not), plus one test image that must be dropped
    extra = tmp_path_factory.mktemp("extra")
    generate_stand_in(extra, n_train=6, n_test=2, seed=9)
    new_images, new_labels = data.load_arrays(data.open_folder(extra, "extra", stand_in=True), "train")
    captures = tmp_path_factory.mktemp("captures")
    writer = CaptureWriter(str(captures), "scones-endpoint", flush_seconds=60)
    confidences = [0.99, 0.98, 0.97, 0.99, 0.6, 0.55]
    for image, label, c in zip(new_images, new_labels, confidences):
        probs = [c, 1 - c] if label == 0 else [1 - c, c]
        writer.record(_png(image), "image/png", json.dumps(probs), inference_id=f"new_{c}.png")
    writer.record(_png(test_images[0]), "image/png", json.dumps([0.99, 0.01]), inference_id="test0.png")
    writer.record(_png(new_images[0]), "image/png", json.dumps([0.99, 0.01]), inference_id="again.png")  # duplicate
    writer.close()
    return dict(train_images=train_images, train_labels=train_labels, test_images=test_images,
                test_labels=test_labels, production=production, captures=captures, cache=cache)


def _round(setup, tmp_path, queue):
    images = retrain.LabelledImages(setup["train_images"], setup["train_labels"], setup["test_images"],
                                    setup["test_labels"])
    files = retrain.RoundFiles(setup["production"], queue, tmp_path / "out", cache_dir=setup["cache"])
    return retrain.retrain(setup["captures"], images, files, TINY, threshold=0.94)


def test_a_round_pseudo_labels_queues_and_gates(setup, tmp_path, monkeypatch):
    queue = tmp_path / "queue.csv"
    before = setup["production"].read_bytes()
    accuracies = iter([0.5, 0.9])  # candidate, production: the candidate is worse
    monkeypatch.setattr(retrain, "_accuracy", lambda *a: next(accuracies))
    result = _round(setup, tmp_path, queue)
    assert result.captures == 8 and result.excluded_test_images == 1
    assert result.pseudo_labelled == 4 and result.queued == 2 and result.human_labelled == 0
    assert not result.promoted and setup["production"].read_bytes() == before
    assert "NOT promoted" in result.summary()
    rows = pd.read_csv(queue, keep_default_na=False)
    assert list(rows.columns) == retrain.QUEUE_COLUMNS and set(rows["confidence"]) == {0.6, 0.55}
    assert all((tmp_path / p).is_file() for p in rows["image"]) and set(rows["label"]) == {""}

    # a person labels one row; the next round uses it, keeps the other queued, and promotes on a tie
    rows.loc[0, "label"] = "Motorcycle "
    rows.to_csv(queue, index=False)
    accuracies = iter([0.9, 0.9])
    monkeypatch.setattr(retrain, "_accuracy", lambda *a: next(accuracies))
    second = _round(setup, tmp_path, queue)
    assert second.human_labelled == 1 and second.queued == 1 and second.pseudo_labelled == 4
    assert second.promoted and setup["production"].read_bytes() == (tmp_path / "out" / "candidate.onnx").read_bytes()
    assert len(pd.read_csv(queue)) == 2  # nothing queued twice


def test_a_bad_label_in_the_queue_is_named(tmp_path):
    queue = tmp_path / "queue.csv"
    pd.DataFrame({"event_id": ["e1", "e2"], "label": ["bicycle", "scooter"]}).to_csv(queue, index=False)
    with pytest.raises(ValueError, match=r"queue.csv, row 3 \(event e2\): label 'scooter' is not one of"):
        retrain.read_queue(queue)


def test_captured_images_are_decoded_deduplicated_and_resized(setup):
    frame = monitor.read_captures(setup["captures"])
    decoded = retrain.decode_captures(frame)
    assert decoded.images.shape == (7, 32, 32, 3) and decoded.duplicates == 1
    kept, dropped = retrain.drop_images(decoded, setup["test_images"])
    assert dropped == 1 and len(kept.images) == 6


def test_simulated_uploads_are_jpegs_of_another_size():
    uploads = retrain.simulate_uploads(np.zeros((2, 32, 32, 3), dtype=np.uint8), size=96)
    assert all(Image.open(io.BytesIO(u)).format == "JPEG" and Image.open(io.BytesIO(u)).size == (96, 96)
               for u in uploads)
