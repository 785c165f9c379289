"""Open set: calibration, the scores, the held-out-class protocol, and the exported rule that says
"no known landmark" (ONNX file = eager, the predictor's answer, the CLI's --json)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from common.serving import load_onnx, read_metadata
from common.transfer import Activations, FinetuneConfig
from landmark_classifier.src import export, openset, predictor
from tests.landmark_fixtures import tiny_dataset, tiny_export, toy_classifier  # noqa: F401


def test_temperature_scaling_recovers_an_overconfident_models_temperature():
    generator = torch.Generator().manual_seed(0)
    calibrated = torch.randn(4000, 5, generator=generator) * 2
    labels = torch.multinomial(torch.softmax(calibrated, 1), 1, generator=generator).flatten()
    assert openset.fit_temperature(calibrated * 3, labels) == pytest.approx(3, rel=0.1)
    before = openset.calibration(torch.softmax(calibrated * 3, 1).numpy(), labels.numpy())
    after = openset.calibration(torch.softmax(calibrated, 1).numpy(), labels.numpy())
    assert before["ece"] > 0.1 > 0.03 > after["ece"]
    assert sum(row["photos"] for row in after["bins"]) == 4000


def test_separation_and_the_feature_scores_rank_known_photos_first():
    rng = np.random.default_rng(0)
    assert openset.separation(np.array([2.0, 3, 4]), np.array([0.0, 1])) == {"auroc": 1.0, "fpr_at_tpr": 0.0}
    assert openset.separation(np.arange(100.0), np.array([50.0]), tpr=0.95)["fpr_at_tpr"] == 1.0
    centres = torch.tensor([[5.0, 0, 0, 0], [0, 5.0, 0, 0]])
    labels = torch.arange(200) % 2
    features = centres[labels] + torch.from_numpy(rng.normal(size=(200, 4))).float()
    near = centres[torch.tensor([0, 1])] + 0.1
    far = torch.tensor([[0.0, 0, 6, 0], [0, 0, 0, -6]])
    knn = openset.KNN(features, max_k=5)
    for score in (openset.Mahalanobis(features, labels), lambda x: knn(x, 5), lambda x: knn(x, 1)):
        assert score(near).min() > score(far).max()


def test_thumbnails_keep_the_size_and_lose_the_detail():
    images = torch.randint(0, 256, (2, 3, 96, 96), dtype=torch.uint8)
    small = openset.thumbnails(images, 24)
    assert small.shape == images.shape and small.dtype == torch.uint8
    detail = lambda x: x.float().diff(dim=3).abs().mean()  # noqa: E731
    assert detail(small) < detail(images) / 3


def test_rotations_hold_out_each_class_once():
    groups = openset.rotations(12, openset.OpenSetConfig())
    assert len(groups) == 4 and sorted(c for g in groups for c in g) == list(range(12))


def _clusters(classes: int, per_class: int, seed: int, shift: float = 0.0) -> tuple[Activations, torch.Tensor]:
    """Fake trunk activations (N x 4 x 2 x 2): one cluster per class."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, 4, 2, 2, generator=torch.Generator().manual_seed(99)) * 3
    labels = torch.arange(classes * per_class) % classes
    plain = centres[labels] + torch.randn(len(labels), 4, 2, 2, generator=generator) + shift
    return Activations(plain.half(), plain.flip(3).half()), labels


def _known(classes, per_class, seed) -> openset.Known:
    acts, labels = _clusters(classes, per_class, seed)
    thumbs = Activations((acts.plain.float() * 0.8).half(), (acts.mirror.float() * 0.8).half())
    return openset.Known(acts, thumbs, labels)


def _top() -> nn.Module:
    return nn.Sequential(nn.Conv2d(4, 8, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())


def test_the_protocol_scores_every_method_on_every_rotation():
    torch.manual_seed(0)
    photos = openset.Photos(_known(4, 12, 1), _known(4, 6, 2), _known(4, 6, 3),
                            outliers=_clusters(1, 30, 4, shift=8.0)[0],
                            non_landmarks={"far": _clusters(1, 10, 5, shift=-8.0)[0]})
    config = openset.OpenSetConfig(heldout=1, rotations=2, knn_ks=(1, 3))
    rows = openset.heldout_protocol(_top(), photos, FinetuneConfig(epochs=2, lr=1e-2, batch_size=16), config)
    assert len(rows) == 2 * len(openset.method_names(config)) == 2 * (len(openset.METHODS) + 1)
    assert {r["method"] for r in rows} == set(openset.method_names(config))
    for row in rows:
        assert 0 <= row["validation"]["auroc"] <= 1 and 0 <= row["turned away: far"] <= 1
        assert 0 <= row["known photos kept"] <= 1 and 0 <= row["closed-set accuracy"] <= 1
    table = openset.summarise(rows)
    assert [r["method"] for r in table] == openset.method_names(config)
    assert openset.choose(table)["validation fpr_at_tpr"] == min(r["validation fpr_at_tpr"] for r in table)


def test_k_of_knn_is_chosen_like_a_method_and_shipped():
    """Each k is its own row of the protocol; the rule of "knn k=K" ships K (not the largest k searched)."""
    torch.manual_seed(0)
    train, valid = _known(3, 20, 1), _known(3, 8, 2)
    config = openset.OpenSetConfig(knn_ks=(1, 5))
    model = openset.fit_model(_top(), train, valid, FinetuneConfig(epochs=2, lr=1e-2, batch_size=16), config)
    one, five = (model.scores(valid.photos, f"knn k={k}")[0] for k in (1, 5))
    assert (one >= five).all() and (one > five).any()  # the nearest photo is never farther than the 5th
    rule = openset.rule_for(model, "knn k=1", valid, config)
    assert (rule.method, rule.k, rule.note["chosen"]) == ("knn", 1, "knn k=1")
    with pytest.raises(ValueError, match="knn k=K"):
        model.scores(valid.photos, "knn")


def test_the_refit_learns_from_validation_too_and_keeps_what_validation_chose():
    """refit_model: the validation model's C and temperature, every pooled photo in its statistics,
    and it learns from the validation photos; refit_rule keeps the threshold, reads the refit's bank."""
    torch.manual_seed(0)
    train, valid = _known(3, 20, 1), _known(3, 8, 2)
    config, tune = openset.OpenSetConfig(knn_ks=(1, 3)), FinetuneConfig(epochs=2, lr=1e-2, batch_size=16)
    model = openset.fit_model(_top(), train, valid, tune, config)
    assert model.C in (0.3, 1.0)
    pooled = openset.Known.join(train, valid)
    assert torch.equal(pooled.labels, torch.cat([train.labels, valid.labels]))
    refit = openset.refit_model(model, _top(), pooled, tune, config)
    assert (refit.C, refit.temperature) == (model.C, model.temperature)
    assert len(refit.knn.bank) == 2 * (60 + 24)  # photos and thumbnails, training and validation
    # a validation photo is now in the bank: its nearest neighbour is itself
    assert refit.scores(valid.photos, "knn k=1")[0] == pytest.approx(0, abs=1e-3)
    assert model.scores(valid.photos, "knn k=1")[0].max() < -1e-2
    knn = openset.rule_for(model, "knn k=3", valid, config)
    moved = openset.refit_rule(knn, refit)
    assert moved.bank is refit.knn.bank and (moved.threshold, moved.temperature, moved.k) == (knn.threshold, knn.temperature, 3)
    maha = openset.refit_rule(openset.rule_for(model, "mahalanobis", valid, config), refit)
    assert torch.allclose(maha.means, torch.from_numpy(refit.mahalanobis.means).float())
    msp = openset.rule_for(model, "msp", valid, config)
    kept = openset.refit_rule(msp, refit)
    assert (kept.method, kept.threshold, kept.temperature) == ("msp", msp.threshold, msp.temperature)
    assert "held out" in kept.metadata()["threshold and temperature from"]  # the file says where they came from
    assert model.best_epoch in (1, 2) and refit.best_epoch is None
    with pytest.raises(ValueError, match="C"):
        openset.refit_model(openset.Fitted(model.top, model.head, model.mahalanobis, model.knn), _top(), pooled, tune, config)


def test_outlier_exposure_lowers_the_confidence_on_outliers():
    torch.manual_seed(0)
    train, valid = _known(3, 20, 1), _known(3, 8, 2)
    outliers = _clusters(1, 40, 4, shift=4.0)[0]
    tune, config = FinetuneConfig(epochs=6, lr=1e-2, batch_size=16, outlier_weight=1.0), openset.OpenSetConfig(knn_ks=(3,))
    plain = openset.fit_model(_top(), train, valid, tune, config)
    exposed = openset.fit_model(_top(), train, valid, tune, config, outliers=outliers)
    mean_msp = lambda m: m.scores(outliers, "msp")[0].mean()  # noqa: E731
    assert mean_msp(exposed) < mean_msp(plain)


# ----------------------------------------------------------------- the rule in the exported file

@pytest.mark.parametrize("method", export.OPEN_SET_METHODS)
def test_the_exported_rule_equals_eager_and_decides(method, tiny_dataset, tmp_path, capsys):
    model = toy_classifier()
    means, precision = (torch.randn(3, 6), torch.eye(6)) if method == "mahalanobis" else (None, None)
    bank = torch.nn.functional.normalize(torch.randn(20, 6), dim=1) if method == "knn" else None
    preprocessing = export.Preprocessing(40, 32, (0.5,) * 3, (0.25,) * 3, mirror=True)
    card = export.ModelCard(tiny_dataset.class_names, "toy", {}, tiny_dataset.display_names)
    x = torch.randint(0, 256, (2, 3, 50, 70), dtype=torch.uint8)
    probe = export.ServingModel(model, preprocessing, card.class_names,
                                export.OpenSetRule(method, 0.5, 0.0, means, precision, bank, k=3))
    with torch.no_grad():
        probabilities, score = probe(x)
    threshold = float(score.max()) + 1.0  # above every score: every photo is "no known landmark"
    rule = export.OpenSetRule(method, 0.5, threshold, means, precision, bank, k=3, note={"tpr": 0.95})
    exported = export.export_predictor(model, preprocessing, card, tmp_path, rule=rule, stem=f"toy_{method}")
    outputs = load_onnx(exported.onnx_path).run_all(x.numpy())
    assert np.allclose(outputs["probabilities"], probabilities.numpy(), atol=1e-4)
    assert np.allclose(outputs["known_score"], score.numpy(), rtol=1e-4, atol=1e-4)
    assert read_metadata(exported.onnx_path)["open_set"] == {
        "method": method, "temperature": 0.5, "threshold": threshold, "known_if": "known_score >= threshold",
        **({"k": 3, "bank": 20} if method == "knn" else {}), "tpr": 0.95}
    photo = next((tiny_dataset.root / "test").rglob("*.jpg"))
    served = predictor.load(exported.onnx_path)
    answer = predictor.predict(served, photo, k=2)
    assert answer.landmark is None and answer.known_score < answer.threshold == threshold
    assert len(answer.top) == 2 and answer.top[0][1] == answer.confidence
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image")
    assert predictor.main([str(photo), str(bad), "--model", str(exported.onnx_path), "--json", "-k", "2"]) == 1
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    shown = dict(zip(tiny_dataset.class_names, tiny_dataset.display_names))
    assert lines[0] == {"file": str(photo), "landmark": None, "confidence": round(answer.confidence, 4),
                        "top": [[shown[name], round(p, 4)] for name, p in answer.top]}
    assert lines[1]["file"] == str(bad) and "not an image" in lines[1]["error"]


def test_a_photo_above_the_threshold_is_named(tiny_dataset, tiny_export, capsys):
    exported = tiny_export  # the default rule: msp, threshold 0, so every photo is above it
    assert read_metadata(exported.onnx_path)["open_set"]["threshold"] == 0.0
    photo = next((tiny_dataset.root / "test").rglob("*.jpg"))
    answer = predictor.predict(predictor.load(exported.onnx_path), photo)
    assert answer.landmark == answer.top[0][0] in tiny_dataset.class_names
    assert predictor.main([str(photo), "--model", str(exported.onnx_path)]) == 0
    shown = dict(zip(tiny_dataset.class_names, tiny_dataset.display_names))
    assert f"{photo}: {shown[answer.landmark]} (" in capsys.readouterr().out


def test_the_files_knn_score_is_scikit_learns():
    features, bank = torch.randn(7, 6), torch.randn(30, 6)
    expected = openset.KNN(bank, max_k=10)(features, 4)
    rule = export.OpenSetRule("knn", 1.0, 0.0, bank=openset.KNN(bank, max_k=10).bank, k=4)
    got = export.KnownScore(rule)(features, torch.zeros(7, 3)).numpy()
    assert np.allclose(got, expected, atol=2e-3)  # the bank is stored float16
