"""The local model on tiny generated data: training loop, activation cache, TorchScript export, predictor."""
from __future__ import annotations

import numpy as np
import pytest

from common.images import ImageError
from scones_workflow.src import data, model
from tests.scones_fixtures import png_bytes

TINY = model.TrainConfig(resolution=32, split_block=15, epochs=2, batch_size=16)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("standin")
    data.generate_stand_in(root, n_train=40, n_test=10)
    staged = data.open_folder(root, "fixture", stand_in=True)
    images, labels = data.load_arrays(staged, "train")
    cache = tmp_path_factory.mktemp("cache")
    result = model.train(images, labels, TINY, cache_dir=cache)
    path = model.save(result.model, tmp_path_factory.mktemp("model") / "model.pt", TINY)
    return result, path, images, cache, labels


def test_training_keeps_the_best_epoch_and_logs_history(trained):
    result, _, _, cache, _ = trained
    assert set(result.history) == {"train_loss", "val_loss", "val_accuracy"}
    assert all(len(v) == TINY.epochs for v in result.history.values())
    assert 1 <= result.best_epoch <= TINY.epochs and result.val_accuracy == max(result.history["val_accuracy"])
    assert len(list(cache.glob("trunk_*.pt"))) == 2 and not result.activations_cached  # fit (+ mirrors), validation


def test_trunk_activations_come_from_the_cache_the_second_time(trained, tmp_path, monkeypatch):
    result, _, images, _, _ = trained
    first = model.trunk_activations(result.model, images[:4], tmp_path)
    monkeypatch.setattr(result.model, "trunk", lambda x: pytest.fail("recomputed instead of read from the cache"))
    assert model.trunk_activations(result.model, images[:4], tmp_path).equal(first)


def test_validation_split_is_stratified():
    labels = np.array([0] * 20 + [1] * 40)
    fit, val = model.validation_split(labels, 0.25, seed=1)
    assert len(set(fit) & set(val)) == 0 and len(fit) + len(val) == 60
    assert (labels[val] == 0).sum() == 5 and (labels[val] == 1).sum() == 10


def test_saved_model_serves_any_size_and_mode(trained):
    _, path, _, _, _ = trained
    predictor = model.Predictor(path)
    for image in (png_bytes(), png_bytes("RGBA", size=(64, 48)), png_bytes("L", fmt="JPEG"), png_bytes("P")):
        probabilities = predictor(image)
        assert len(probabilities) == 2 and abs(sum(probabilities) - 1) < 1e-5
    with pytest.raises(ImageError, match="request body: not an image"):
        predictor(b"plain text")


def test_saved_model_matches_the_trained_one(trained):
    result, path, images, _, _ = trained
    import torch

    expected = model.predict_proba(result.model, images[:5])
    actual = model.predict_proba(torch.jit.load(str(path)), images[:5])
    assert np.allclose(expected, actual, atol=1e-5)


def test_predictor_names_a_missing_model(tmp_path):
    with pytest.raises(FileNotFoundError, match="model file .*missing.pt not found: train first"):
        model.Predictor(tmp_path / "missing.pt")


def test_serve_command_answers_and_flushes_captures_on_sigterm(trained, tmp_path):
    """`python -m scones_workflow serve`, as the container runs it: SIGTERM must not lose captures."""
    import signal
    import socket
    import subprocess
    import sys
    import time

    import requests

    from common.paths import REPO_ROOT
    from scones_workflow.src import monitor

    _, path, _, _, _ = trained
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    process = subprocess.Popen([sys.executable, "-m", "scones_workflow", "serve", "--model", str(path), "--host",
                                "127.0.0.1", "--port", str(port), "--capture", str(tmp_path / "captures")],
                               cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if requests.get(f"http://127.0.0.1:{port}/ping", timeout=1).status_code == 200:
                    break
            except requests.ConnectionError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise AssertionError(process.stdout.read().decode()) from None
                time.sleep(0.2)
        response = requests.post(f"http://127.0.0.1:{port}/invocations", data=png_bytes(),
                                 headers={"Content-Type": "image/png"}, timeout=10)
        assert response.status_code == 200 and len(response.json()) == 2
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    assert len(monitor.read_captures(tmp_path / "captures")) == 1


def test_a_second_training_run_reads_the_cached_activations(trained):
    _, _, images, cache, labels = trained
    assert model.train(images, labels, TINY, cache_dir=cache).activations_cached
