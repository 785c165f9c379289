"""The second opinion (fusion.py): it sees the served view, the fused head learns from it, and the
exported file names with both networks' features while "no known landmark" reads the first's alone."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from common.backbones import Backbone
from common.transfer import Activations, FinetuneConfig
from landmark_classifier.src import export, fusion, openset, orientation, predictor
from tests.landmark_fixtures import tiny_dataset, toy_classifier  # noqa: F401

FIRST_MEAN, FIRST_STD = (0.5, 0.4, 0.3), (0.25, 0.2, 0.3)


def _second(dim: int = 5) -> Backbone:
    torch.manual_seed(1)
    module = nn.Sequential(nn.Conv2d(3, dim, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    return Backbone("toy_second", module, dim, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 16, 18, "test")


def test_the_second_opinion_sees_the_served_view():
    second = _second()
    opinion = fusion.SecondOpinion(second, FIRST_MEAN, FIRST_STD)
    pixels = torch.rand(2, 3, 24, 24)  # in [0, 1]
    first_input = (pixels - torch.tensor(FIRST_MEAN).view(1, 3, 1, 1)) / torch.tensor(FIRST_STD).view(1, 3, 1, 1)
    resized = F.interpolate(pixels, size=[16, 16], mode="bilinear", antialias=True, align_corners=False)
    own_input = (resized - torch.tensor(second.mean).view(1, 3, 1, 1)) / torch.tensor(second.std).view(1, 3, 1, 1)
    with torch.no_grad():
        assert torch.allclose(opinion(first_input), second.module(own_input), atol=1e-5)
    assert not any(p.requires_grad for p in opinion.parameters())  # frozen


class _Cache:
    """An ActivationCache stand-in: `make(images)` -> features, the mirror's from the flipped images."""

    def __init__(self, make) -> None:
        self.make = make

    def __call__(self, images: torch.Tensor, desc: str = "") -> Activations:
        return Activations(self.make(images.float()), self.make(images.float().flip(3)))


def _photos(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 photos whose class is the brightness of the red channel: the first network is blind to
    it (it reads only green), the second sees it."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(count) % 3
    images = torch.randint(0, 256, (count, 3, 16, 16), generator=generator).float()
    images[:, 0] = 40 + 80 * labels.view(-1, 1, 1).float() + 10 * torch.randn(count, 16, 16, generator=generator)
    return images.clamp(0, 255).to(torch.uint8), labels


def test_the_fused_head_learns_what_only_the_second_opinion_sees():
    first = _Cache(lambda x: x[:, 1:2])  # the trunk's "maps": the green channel
    top = nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.Flatten())  # 4 features, blind to red
    base = SimpleNamespace(top=top, head=nn.Linear(4, 3), temperature=1.0)
    second = _Cache(lambda x: x.mean((2, 3)) / 255)  # the mean of each channel, red included
    fused = fusion.fit(base, first, second, _photos(90, 0), _photos(45, 1), thumbnail_size=8)
    test_images, test_labels = _photos(45, 2)
    assert fused.head.in_features == 4 + 3
    assert fused.accuracy(test_images, test_labels) > 0.9
    assert fused.probabilities(test_images).sum(1) == pytest.approx(np.ones(45), abs=1e-5)
    alone = fusion.fit(base, first, None, _photos(90, 0), _photos(45, 1), thumbnail_size=8)
    assert alone.head is base.head and alone.accuracy(test_images, test_labels) < 0.6
    # the file's rule: this temperature; knn reads the first network's features only; msp refitted
    bank = torch.nn.functional.normalize(torch.randn(10, 4), dim=1)
    knn = fused.rule(export.OpenSetRule("knn", 2.0, -0.5, bank=bank, k=1), test_images, 0.95)
    assert (knn.feature_dims, knn.temperature, knn.threshold) == (4, fused.temperature, -0.5)
    assert knn.metadata()["feature_dims"] == 4
    msp = fused.rule(export.OpenSetRule("msp", 2.0, 0.99), test_images, 0.95)
    with torch.no_grad():
        scores = openset.msp(fused.head(fused.features(test_images)), fused.temperature)
    assert msp.threshold == pytest.approx(float(np.quantile(scores, 0.05)))
    assert alone.rule(knn, test_images, 0.95) is knn


def test_a_fused_upright_file_names_with_both_and_scores_the_open_set_on_the_first(tiny_dataset, tmp_path):
    """The exported file (ONNX, and TorchScript's three outputs) equals the eager model: the second
    opinion's features join the head's input, the knn score reads the first network's only, and the
    orientation output drives the predictor's rerun."""
    toy = toy_classifier()
    second = fusion.SecondOpinion(_second(), (0.5,) * 3, (0.25,) * 3)
    torch.manual_seed(2)
    bank = torch.nn.functional.normalize(torch.randn(12, 6), dim=1)
    # named by the fused head's logits plus the bank's vote, which reads the first network's features
    named_by = export.SumHead(nn.Linear(6 + 5, 3), export.BankHead(bank, torch.arange(12) % 3, 3, 0.05))
    model = fusion.FusedClassifier(toy.trunk, toy.top, named_by, second).eval()
    rule = export.OpenSetRule("knn", 1.5, -0.7, bank=bank, k=2, feature_dims=6)
    preprocessing = export.Preprocessing(40, 32, (0.5,) * 3, (0.25,) * 3, mirror=True)
    card = export.ModelCard(tiny_dataset.class_names, "toy fused", {}, tiny_dataset.display_names)
    linear = nn.Linear(4 * 4, 4)  # says every photo is stored turned a quarter (q = 1)
    with torch.no_grad():
        linear.weight.zero_()
        linear.bias.copy_(torch.tensor([-20.0, 20.0, -20.0, -20.0]))
    head = orientation.OrientationHead(linear)
    exported = export.export_predictor(model, preprocessing, card, tmp_path, rule=rule,
                                       orientation=orientation.Orientation(head, 0.3))
    x = torch.randint(0, 256, (2, 3, 50, 70), dtype=torch.uint8)
    outputs = predictor.load(exported.onnx_path).run_all(x.numpy())
    eager = export.ServingModel(model, preprocessing, card.class_names, rule).eval()
    with torch.no_grad():
        probabilities, score = eager(x)
        prepared = eager.preprocess(x)
        features = (model.features(prepared) + model.features(prepared.flip(3))) / 2
        first_only = export.KnownScore(export.OpenSetRule("knn", 1.5, -0.7, bank=bank, k=2))(features[:, :6], None)
    assert np.allclose(outputs["probabilities"], probabilities.numpy(), atol=1e-4)  # both networks name
    assert np.allclose(outputs["known_score"], score.numpy(), atol=1e-3)
    assert np.allclose(score.numpy(), first_only.numpy(), atol=1e-6)  # the open set reads the first's features
    assert exported.metadata["open_set"]["feature_dims"] == 6
    assert np.allclose(outputs["orientation"], [[0, 1, 0, 0]] * 2, atol=1e-6)
    assert exported.metadata["orientation"]["rerun_below"] == 0.3
    assert eager.score.bank is named_by.bank.bank  # the knn score and the bank's vote share one stored bank
    with torch.no_grad():
        scripted = torch.jit.load(str(exported.torchscript_path))(x)  # the half second opinion, traced
    assert len(scripted) == 3 and np.allclose(scripted[0].numpy(), probabilities.numpy(), atol=1e-4)
    assert np.allclose(scripted[1].numpy(), score.numpy(), atol=1e-3)
    photo = next((tiny_dataset.root / "test").rglob("*.jpg"))  # the file's answer: the photo turned back once
    assert predictor.predict(predictor.load(exported.onnx_path), photo, k=3).turned_back == 1


def test_the_bank_names_a_photo_by_its_nearest_training_photos():
    bank = F.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.1, 1.0], [-0.1, 1.0]]), dim=1)
    labels = torch.tensor([0, 1, 1, 1])
    near_first = torch.tensor([[1.0, 0.6]])  # nearest photo: class 0; the mass of photos: class 1
    sharp, soft = export.BankHead(bank, labels, 3, 0.02), export.BankHead(bank, labels, 3, 10.0)
    assert sharp(near_first).argmax(1).item() == 0
    assert soft(near_first).argmax(1).item() == 1  # at a large tau, a class with more photos near wins
    logits = sharp(near_first)
    assert torch.isfinite(logits).all() and logits[0, 2] < logits[0, 0] - 60  # a class with no photo: floored
    assert torch.equal(sharp(3 * near_first), logits)  # reads directions, like the knn score
    with pytest.raises(ValueError, match="one label per feature"):
        export.BankHead(bank, labels[:3], 3, 0.02)
    with pytest.raises(ValueError, match="tau must be positive"):
        export.BankHead(bank, labels, 3, 0.0)


def test_fit_with_the_bank_names_by_it_with_its_own_temperature():
    """fusion.fit(bank_tau=...): the bank of the base's knn names; temperature refitted on validation;
    the file's rule keeps knn's threshold and bank, refits msp's on these logits."""
    # the trunk's "maps": (red - 128, 30): the class (the red brightness) sets the features' direction
    first = _Cache(lambda x: torch.stack([x[:, 0] - 128, torch.full_like(x[:, 0], 30.0)], 1))
    top = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
    train, valid = _photos(90, 0), _photos(45, 1)
    acts = first(torch.cat([train[0], openset.thumbnails(train[0], 8)]))
    features = (top(acts.plain) + top(acts.mirror)) / 2
    y = torch.cat([train[1], train[1]])
    base = SimpleNamespace(top=top, head=nn.Linear(2, 3), temperature=1.0, knn=openset.KNN(features, 1, y))
    named = fusion.fit(base, first, None, train, valid, thumbnail_size=8, bank_tau=0.02)
    assert isinstance(named.head, export.BankHead) and not named.own_head
    test_images, test_labels = _photos(45, 2)
    assert named.accuracy(test_images, test_labels) > 0.9
    vx, vy = fusion.both(*valid, 8)
    with torch.no_grad():
        assert named.temperature == openset.fit_temperature(named.head(named.features(vx)), vy)
    knn = named.rule(export.OpenSetRule("knn", 2.0, -0.5, bank=base.knn.bank, k=1), valid[0], 0.95)
    assert (knn.temperature, knn.threshold, knn.feature_dims) == (named.temperature, -0.5, None)
    msp = named.rule(export.OpenSetRule("msp", 2.0, 0.99), valid[0], 0.95)
    with torch.no_grad():
        scores = openset.msp(named.head(named.features(valid[0])), named.temperature)
    assert msp.threshold == pytest.approx(float(np.quantile(scores, 0.05)))
    # with a second opinion too: the fused head's logits plus the bank's, the knn score on the first's features
    second = _Cache(lambda x: x.mean((2, 3)) / 255)
    fused = fusion.fit(base, first, second, train, valid, thumbnail_size=8)
    summed = fusion.fit(base, first, second, train, valid, thumbnail_size=8, bank_tau=0.02)
    assert isinstance(summed.head, export.SumHead) and fusion.cv_row(summed) == "fused + bank"
    assert torch.equal(summed.head.linear.weight, fused.head.weight)  # the same fused head (C on validation)
    with torch.no_grad():
        features = summed.features(test_images)
        assert torch.allclose(summed.head(features), fused.head(features) + named.head(features[:, :2]), atol=1e-5)
        assert summed.temperature == openset.fit_temperature(summed.head(summed.features(vx)), vy)
    assert summed.accuracy(test_images, test_labels) > 0.9
    assert summed.rule(export.OpenSetRule("knn", 2.0, -0.5, bank=base.knn.bank, k=1), valid[0], 0.95).feature_dims == 2
    unlabelled = SimpleNamespace(**{**vars(base), "knn": openset.KNN(features, 1)})
    with pytest.raises(ValueError, match="no labels"):
        fusion.fit(unlabelled, first, None, train, valid, thumbnail_size=8, bank_tau=0.02)


def test_the_refit_names_with_the_refitted_bank_and_keeps_c_and_temperature():
    """fusion.refit over a base refitted on more photos: the fused head's C kept and refitted on the
    pooled photos, the bank now the refitted base's (the one the knn rule reads), temperature kept."""
    first = _Cache(lambda x: torch.stack([x[:, 0] - 128, torch.full_like(x[:, 0], 30.0)], 1))
    top = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
    second = _Cache(lambda x: x.mean((2, 3)) / 255)

    def base_on(images, labels):
        acts = first(torch.cat([images, openset.thumbnails(images, 8)]))
        features = (top(acts.plain) + top(acts.mirror)) / 2
        return SimpleNamespace(top=top, head=nn.Linear(2, 3), temperature=1.0,
                               knn=openset.KNN(features, 1, torch.cat([labels, labels])))

    train, valid = _photos(90, 0), _photos(45, 1)
    pooled = (torch.cat([train[0], valid[0]]), torch.cat([train[1], valid[1]]))
    summed = fusion.fit(base_on(*train), first, second, train, valid, thumbnail_size=8, bank_tau=0.02)
    bigger = base_on(*pooled)
    refit = fusion.refit(summed, bigger, pooled, thumbnail_size=8)
    assert isinstance(refit.head, export.SumHead)
    assert torch.equal(refit.head.bank.bank, bigger.knn.bank.half())  # the bank the refit's knn rule reads
    assert (refit.temperature, refit.note) == (summed.temperature, summed.note)
    px, py = fusion.both(*pooled, 8)
    again = fusion.fit(bigger, first, second, pooled, pooled, thumbnail_size=8, Cs=(summed.note["C"],), bank_tau=0.02)
    assert torch.allclose(refit.head.linear.weight, again.head.linear.weight)  # the kept C, the pooled photos
    assert not torch.allclose(refit.head.linear.weight, summed.head.linear.weight)
    test_images, test_labels = _photos(45, 2)
    assert refit.accuracy(test_images, test_labels) > 0.9
    bank_only = fusion.refit(fusion.fit(base_on(*train), first, None, train, valid, 8, bank_tau=0.02), bigger, pooled, 8)
    assert isinstance(bank_only.head, export.BankHead) and bank_only.head.bank.shape[0] == 2 * 135
    plain = SimpleNamespace(top=top, head=nn.Linear(2, 3), temperature=1.7)
    kept = fusion.refit(fusion.fit(plain, first, None, train, valid, 8), bigger, pooled, 8)
    assert kept.own_head and kept.head is bigger.head and kept.temperature == 1.7


def test_a_file_named_by_the_bank_stores_it_once_and_equals_eager(tiny_dataset, tmp_path):
    toy = toy_classifier()
    torch.manual_seed(3)
    bank = F.normalize(torch.randn(3000, 6), dim=1)
    rule = export.OpenSetRule("knn", 1.5, -0.7, bank=bank, k=1)
    preprocessing = export.Preprocessing(40, 32, (0.5,) * 3, (0.25,) * 3, mirror=True)
    card = export.ModelCard(tiny_dataset.class_names, "toy", {}, tiny_dataset.display_names)
    model = type(toy)(toy.trunk, toy.top, export.BankHead(bank, torch.arange(3000) % 3, 3, 0.02)).eval()
    named = export.export_predictor(model, preprocessing, card, tmp_path / "bank", rule=rule)
    linear = export.export_predictor(toy, preprocessing, card, tmp_path / "linear", rule=rule)
    bank_bytes, labels_bytes = 3000 * 6 * 2, 3000 * 3 * 2  # float16 features, float16 one-hot labels
    for kind in ("onnx_path", "torchscript_path"):  # the labels more, not a second bank
        grew = getattr(named, kind).stat().st_size - getattr(linear, kind).stat().st_size
        assert 0 < grew < labels_bytes + bank_bytes / 4, (kind, grew)
    x = torch.randint(0, 256, (2, 3, 50, 70), dtype=torch.uint8)
    with torch.no_grad():
        probabilities, score = export.ServingModel(model, preprocessing, card.class_names, rule).eval()(x)
    outputs = predictor.load(named.onnx_path).run_all(x.numpy())
    assert np.allclose(outputs["probabilities"], probabilities.numpy(), atol=1e-4)
    assert np.allclose(outputs["known_score"], score.numpy(), atol=1e-3)
    with torch.no_grad():
        scripted = torch.jit.load(str(named.torchscript_path))(x)
    assert np.allclose(scripted[0].numpy(), probabilities.numpy(), atol=1e-4)


def test_cross_validation_holds_each_photo_out_once_and_scores_four_ways_of_naming():
    from landmark_classifier.src.transfer import stratified_folds

    images, labels = _photos(60, 0)
    held = torch.cat([h for _, h in stratified_folds(labels, 3)])
    assert sorted(held.tolist()) == list(range(60))
    for _, h in stratified_folds(labels, 3):  # each fold holds a third of each class (20 photos a class)
        assert set(torch.bincount(labels[h], minlength=3).tolist()) <= {6, 7}
    first = _Cache(lambda x: x[:, 1:2])  # blind to red, which holds the class
    top = nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.Flatten())
    second = _Cache(lambda x: x.mean((2, 3)) / 255)
    tune = FinetuneConfig(epochs=1, lr=1e-3)
    result = fusion.cross_validate(top, first, second, images, labels, tune, 8, folds=3, progress=lambda _: None)
    assert result["photos"] == 60 and len(result["per fold"]) == 3
    assert result["fused"]["photos"]["wrong"] < result["base"]["photos"]["wrong"]  # the second sees red
    assert set(result["per fold"][0]) == {f"{way} {kind}" for way in ("base", "bank", "fused", "fused + bank")
                                          for kind in ("photos", "thumbnails")}
    half = fusion.cross_validate(top, first, second, images, labels, tune, 8, folds=3, share=0.5,
                                 progress=lambda _: None)  # what more photos are worth: the same photos held out
    assert half["photos"] == 60 and half["fitted on (share of each fold's training part)"] == 0.5
    with pytest.raises(ValueError, match="cannot keep every landmark's share"):
        fusion.cross_validate(top, first, second, images, labels, tune, 8, folds=3, share=0.05, progress=lambda _: None)
    with pytest.raises(SystemExit):  # a record named by a rounded percent could overwrite another
        fusion.main(["--share", "0.805"])
