"""The local model on tiny generated data: training loop, activation cache, ONNX export, the torch-free predictor."""
from __future__ import annotations

import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest

from common.images import ImageError
from common.paths import REPO_ROOT
from common.serving import ModelFileError, read_metadata
from scones_workflow.src import data
from scones_workflow.src.config import config_for
from scones_workflow.src.training import model
from scones_workflow.src.data.stand_in import generate_stand_in
from scones_workflow.src.serving.predictor import Predictor
from tests.scones_fixtures import png_bytes

TINY = model.TrainConfig(backbone="efficientnet_lite0", resolution=32, split_block=15, epochs=2, batch_size=16,
                         trunk_engine="torch")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("standin")
    generate_stand_in(root, n_train=40, n_test=10)
    staged = data.open_folder(root, "fixture", stand_in=True)
    images, labels = data.load_arrays(staged, "train")
    cache = tmp_path_factory.mktemp("cache")
    result = model.train(images, labels, TINY, cache_dir=cache)
    path = model.export(result.model, tmp_path_factory.mktemp("model") / "model.onnx", TINY,
                        {"profile": "test", "dataset": "fixture"})
    return result, path, images, cache, labels


def test_training_keeps_the_best_epoch_and_logs_history(trained):
    result, _, _, cache, _ = trained
    assert set(result.history) == {"train_loss", "val_loss", "val_accuracy"}
    assert all(len(v) == TINY.epochs for v in result.history.values())
    assert 1 <= result.best_epoch <= TINY.epochs and result.val_accuracy == max(result.history["val_accuracy"])
    assert not result.activations_cached and len(list(cache.glob("trunk_pairs_*.pt"))) == 1


def test_activations_are_cached_per_image(trained, tmp_path, monkeypatch):
    result, _, images, _, _ = trained
    first = model.activation_cache(result.model, TINY, tmp_path)(model.to_tensor(images[:4]))
    cache = model.activation_cache(result.model, TINY, tmp_path)  # a new process would read the file
    monkeypatch.setattr(cache, "_run", lambda x: pytest.fail("recomputed instead of read from the cache"))
    again = cache(model.to_tensor(images[[3, 1]]))  # any subset, any order
    assert again.plain.equal(first.plain[[3, 1]]) and again.mirror.equal(first.mirror[[3, 1]])
    assert cache.missing(model.to_tensor(images[:6])) == [4, 5]


def test_validation_split_is_stratified():
    labels = np.array([0] * 20 + [1] * 40)
    fit, val = model.validation_split(labels, 0.25, seed=1)
    assert len(set(fit) & set(val)) == 0 and len(fit) + len(val) == 60
    assert (labels[val] == 0).sum() == 5 and (labels[val] == 1).sum() == 10


def test_exported_model_carries_its_metadata(trained):
    _, path, _, _, _ = trained
    meta = read_metadata(path)
    for key in ("class_names", "input", "mean", "std", "model_name", "training_run", "resolution"):
        assert key in meta
    assert meta["class_names"] == ["bicycle", "motorcycle"] and meta["input"].startswith("uint8 N x 3 x H x W")
    assert meta["training_run"]["profile"] == "test" and "date" in meta["training_run"]


def test_served_model_takes_any_size_and_mode(trained):
    _, path, _, _, _ = trained
    predictor = Predictor(path)
    for image in (png_bytes(), png_bytes("RGBA", size=(64, 48)), png_bytes("L", fmt="JPEG"), png_bytes("P"),
                  png_bytes(size=(300, 517))):
        probabilities = predictor(image)
        assert len(probabilities) == 2 and abs(sum(probabilities) - 1) < 1e-5
    with pytest.raises(ImageError, match="request body: not an image"):
        predictor(b"plain text")


def test_onnx_file_matches_the_trained_model(trained):
    result, path, images, _, _ = trained
    expected = model.predict_proba(result.model, images[:5])
    assert np.allclose(Predictor(path).predict_arrays(images[:5]), expected, atol=1e-5)


def test_test_time_flip_averages_the_mirror_image(trained):
    result, _, images, _, _ = trained
    flip = model.predict_proba(result.model, images[:3])
    plain = model.without_tta(result.model)
    # the mean of the two logits (the kit's served prediction, as in landmark): softmax of the mean log-probability
    log_mean = (np.log(model.predict_proba(plain, images[:3])) + np.log(model.predict_proba(plain, model.mirrored(images[:3])))) / 2
    both = np.exp(log_mean) / np.exp(log_mean).sum(1, keepdims=True)
    assert result.model.tta and np.allclose(flip, both, atol=1e-6)


def test_predictor_names_a_missing_or_wrong_model(tmp_path):
    with pytest.raises(ModelFileError, match="missing.onnx: no such model file"):
        Predictor(tmp_path / "missing.onnx")
    (tmp_path / "old.pt").write_bytes(b"torchscript")
    with pytest.raises(ModelFileError, match="old.pt: expected an ONNX model"):
        Predictor(tmp_path / "old.pt")
    (tmp_path / "broken.onnx").write_bytes(b"not onnx")
    with pytest.raises(ModelFileError, match="broken.onnx: not a loadable ONNX model"):
        Predictor(tmp_path / "broken.onnx")


def test_serving_path_imports_no_torch():
    code = ("import sys; import scones_workflow.src.serving.server, scones_workflow.src.serving.predictor, "
            "scones_workflow.src.cli; print('torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_committed_model_is_the_default_and_small():
    from scones_workflow.src.serving import predictor

    path = predictor.COMMITTED_MODEL
    if not path.is_file():
        pytest.skip(f"{path} is written by the run of record (full profile)")
    assert path.stat().st_size <= 30 * 2**20
    meta = read_metadata(path)
    assert meta["class_names"] == ["bicycle", "motorcycle"] and meta["training_run"]["profile"] == "full"


def test_serve_command_answers_and_flushes_captures_on_sigterm(trained, tmp_path):
    """`python -m scones_workflow serve --model FILE.onnx`, as the container runs it: SIGTERM loses no capture."""
    import signal
    import socket
    import time

    import requests

    from scones_workflow.src.monitoring import monitor

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


def test_cross_validation_scores_every_image_once(trained, tmp_path):
    _, _, images, cache, labels = trained
    scores = model.cross_validate(images, labels, TINY, folds=2, cache_dir=cache)
    assert scores["images"] == 40 and 0 <= scores["accuracy"] <= 1 and 0 <= scores["accuracy_with_flip"] <= 1


def test_serve_defaults_to_the_env_then_the_container_then_the_committed_model(monkeypatch, tmp_path):
    from scones_workflow.src.serving import predictor

    monkeypatch.setenv("SCONES_MODEL", str(tmp_path / "x.onnx"))
    assert predictor.default_model() == tmp_path / "x.onnx"
    monkeypatch.delenv("SCONES_MODEL")
    monkeypatch.setattr(predictor, "CONTAINER_MODEL", tmp_path / "opt" / "model.onnx")
    assert predictor.default_model() == predictor.COMMITTED_MODEL
    (tmp_path / "opt").mkdir()
    (tmp_path / "opt" / "model.onnx").write_bytes(b"x")
    assert predictor.default_model() == tmp_path / "opt" / "model.onnx"


def test_fit_head_is_reproducible_and_leaves_the_global_random_state_alone():
    """Dropout and drop connect draw from torch's global generator: seeded inside fit_head, two fits of the
    same data give the same weights, and the caller's random stream goes on as if nothing had happened."""
    import torch

    config = config_for("tiny").train
    net = model.build(config)
    initial = {k: v.clone() for k, v in net.state_dict().items()}
    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    acts = model.activation_cache(net, replace(config, trunk_engine="torch"), None)(images)
    labels = torch.arange(16) % 2
    weights = []
    for caller_seed in (1, 2):  # the caller's random state differs, the fit does not
        net.load_state_dict(initial)
        torch.manual_seed(caller_seed)
        model.fit_head(net, acts, labels, config)
        weights.append(net.net.head.weight.detach().clone())
        after = torch.rand(1)
        torch.manual_seed(caller_seed)
        assert torch.equal(after, torch.rand(1))
    assert torch.equal(weights[0], weights[1])
