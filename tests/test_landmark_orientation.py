"""Sideways photos: the orientation head learns which way is up, the threshold is chosen on
validation, and the exported file's predictor names a photo it thinks is turned as if turned back."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from common.transfer import Activations
from landmark_classifier.src import export, orientation, predictor
from tests.landmark_fixtures import tiny_dataset, toy_classifier  # noqa: F401


def _scenes(count: int, seed: int) -> torch.Tensor:
    """uint8 'photos' with a bright sky above a dark ground, and noise: up is learnable."""
    generator = torch.Generator().manual_seed(seed)
    sky = torch.linspace(230, 40, 32).view(1, 1, 32, 1).expand(count, 3, 32, 32)
    return (sky + 40 * torch.randn(count, 3, 32, 32, generator=generator)).clamp(0, 255).to(torch.uint8)


def _as_trunk(images: torch.Tensor) -> Activations:
    """A stand-in trunk: the images pooled to an 8 x 8 map (its mirror as the mirror)."""
    maps = F.avg_pool2d(images.float(), 4)
    return Activations(maps, maps.flip(3))


def test_quadrants_are_adaptive_pooling_to_two_by_two():
    for height, width in ((8, 8), (9, 9), (7, 10)):
        maps = torch.randn(2, 5, height, width)
        assert torch.allclose(orientation.quadrants(maps), F.adaptive_avg_pool2d(maps, 2).flatten(1), atol=1e-6)


def test_the_head_learns_which_way_is_up():
    train, valid = _scenes(60, 0), _scenes(30, 1)
    head, note = orientation.fit_head({q: _as_trunk(orientation.turned(train, q)) for q in orientation.QUARTERS},
                                      {q: _as_trunk(orientation.turned(valid, q)) for q in orientation.QUARTERS})
    assert note["validation accuracy"] > 0.95
    assert set(note["validation accuracy by turn"]) == {"0 degrees", "90 degrees", "180 degrees", "270 degrees"}
    # the predictor turns its arrays back with numpy: the same turn as training's torch.rot90
    assert np.array_equal(np.rot90(valid[0].numpy(), 1, axes=(1, 2)), orientation.turned(valid[:1], 1)[0].numpy())
    with torch.no_grad():  # a photo turned a quarter counter-clockwise reads as q = 1
        assert int(head(_as_trunk(orientation.turned(valid[:1], 1)).plain).argmax()) == 1


def test_mixing_and_the_rerun_threshold_chosen_on_validation():
    # photo 0 upright and named right as stored; photo 1 stored turned (q = 1), named right only turned back
    answers = np.zeros((2, 4, 2))
    answers[0, :, 0] = 1.0
    answers[1, 0] = [1.0, 0.0]
    answers[1, 1:] = [0.0, 1.0]
    labels = np.array([0, 1])
    turns = np.array([[0.9, 0.05, 0.0, 0.05], [0.25, 0.7, 0.0, 0.05]])
    assert orientation.mix(turns, answers) == pytest.approx(np.array([[1.0, 0.0], [0.25, 0.75]]))
    # the predictor's two-way weights: upright and the most likely other turn, renormalised
    assert predictor.two_way(turns) == pytest.approx(np.array([[0.9 / 0.95, 0.05 / 0.95, 0, 0],
                                                                 [0.25 / 0.95, 0.7 / 0.95, 0, 0]]))
    below, note = orientation.choose_rerun_below(turns, answers, labels, candidates=(0.1, 0.2, 0.3, 0.5))
    assert below == 0.3  # the smallest threshold that runs photo 1 again
    assert note["validation accuracy without"] == 0.5 and note["validation accuracy with"] == 1.0
    assert note["validation photos run again"] == 0.5


def _fixed_head(quarters: int) -> orientation.OrientationHead:
    """An orientation head that always says the photo is turned `quarters`."""
    linear = nn.Linear(4 * 4, 4)
    with torch.no_grad():
        linear.weight.zero_()
        linear.bias.copy_(torch.full((4,), -20.0))
        linear.bias[quarters] = 20.0
    return orientation.OrientationHead(linear)


PREPROCESSING = export.Preprocessing(40, 32, (0.5,) * 3, (0.25,) * 3, mirror=True)
RULE = export.OpenSetRule("msp", 1.5, 0.0)


class Eager:
    """A torch serving model behind the ONNX session's interface (`run_all`, `metadata`, `class_names`):
    the predictor's rerun logic checked without exporting a file per case."""

    def __init__(self, module, class_names: list[str], rerun_below: float | None = None) -> None:
        self.module, self.class_names = module.eval(), class_names
        self.metadata = {"open_set": RULE.metadata(),
                         **({"orientation": {"rerun_below": rerun_below}} if rerun_below is not None else {})}

    def run_all(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        with torch.no_grad():
            outputs = self.module(torch.from_numpy(np.ascontiguousarray(batch)))
        return {name: value.numpy() for name, value in zip(("probabilities", "known_score", "orientation"), outputs)}


def _upright(head: orientation.OrientationHead, class_names: list[str], rerun_below: float = 0.3) -> Eager:
    model = toy_classifier()
    return Eager(export.UprightServingModel(model.trunk, model.top, model.head, head, PREPROCESSING, class_names, RULE),
                 class_names, rerun_below)


@pytest.mark.parametrize("quarters", [0, 1, 2, 3])
def test_a_turned_photo_is_named_as_if_turned_back(quarters, tiny_dataset):
    names = tiny_dataset.class_names
    model = toy_classifier()
    plain = Eager(export.ServingModel(model, PREPROCESSING, names, RULE), names)
    photo = next((tiny_dataset.root / "test").rglob("*.jpg"))
    turned_back = np.ascontiguousarray(np.rot90(predictor.to_array(photo), -quarters, axes=(1, 2)))
    expected = predictor.predict(plain, turned_back.transpose(1, 2, 0), k=3)
    got = predictor.predict(_upright(_fixed_head(quarters), names), photo, k=3)
    assert got.top[0][0] == expected.top[0][0] and got.turned_back == quarters
    assert [p for _, p in got.top] == pytest.approx([p for _, p in expected.top], abs=1e-5)
    assert got.known_score == pytest.approx(expected.known_score, abs=1e-5)


def test_a_doubtful_turn_mixes_the_answers_as_stored_and_turned_back(tiny_dataset):
    names = tiny_dataset.class_names
    plain = Eager(export.ServingModel(toy_classifier(), PREPROCESSING, names, RULE), names)
    photo = next((tiny_dataset.root / "test").rglob("*.jpg"))
    linear = _fixed_head(1).linear
    with torch.no_grad():  # p(upright) 0.15, p(a quarter turn) 0.55: below 0.3, so run again turned back once
        linear.bias.copy_(torch.log(torch.tensor([0.15, 0.55, 0.15, 0.15])))
    got = predictor.predict(_upright(orientation.OrientationHead(linear), names), photo, k=3)
    stored = predictor.predict(plain, photo, k=3)
    back = predictor.predict(plain, np.rot90(predictor.to_array(photo), -1, axes=(1, 2)).transpose(1, 2, 0), k=3)
    weights = np.array([0.15, 0.55]) / 0.7
    expected = {c: weights[0] * p for c, p in stored.top}
    for c, p in back.top:
        expected[c] = expected.get(c, 0.0) + weights[1] * p
    assert dict(got.top) == pytest.approx(expected, abs=1e-5) and got.turned_back == 1
    assert got.known_score == pytest.approx(weights @ [stored.known_score, back.known_score], abs=1e-5)
