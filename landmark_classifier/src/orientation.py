"""Sideways photos: name a photo stored turned a quarter as if it were upright.

Web photos are often stored turned: the camera wrote an EXIF orientation that a later resize or
upload dropped. `common.images.load_image` applies an EXIF orientation when the file has one; this
module is for the files that lost it. GLDv2 has such photos in every split (three of the ten
photos the shipped recipe got wrong on validation were stored sideways), and so do photo libraries.

The orientation model is RotNet's task (Gidaris et al. 2018) on the backbone's frozen trunk: a
logistic regression on the trunk's activation map pooled to its four quadrants, trained on the training
photos turned by 0, 90, 180 and 270 degrees. The quadrants keep the layout that says which way is up;
the classifier's features cannot (global pooling, and the mirror average maps a 90-degree turn to
a 270-degree one).

The served file outputs the four probabilities (`orientation`, N x 4: the photo as stored is the
upright photo turned by q quarters counter-clockwise, `np.rot90(upright, q)`). Where the upright
probability is below the file's `rerun_below`, the predictor also names the photo turned back by its
most likely turn q (one more run, not three) and mixes the two answers by their probabilities:

    p(landmark) = [p(upright) p(landmark | as stored) + p(q) p(landmark | turned back by q)] / (p(upright) + p(q))

(the known score likewise). On validation this two-way mixture named as many photos right as the
mixture over all four turns (98.19% of the photos; thumbnails 94.88% vs 94.58%; measured 2026-12-06
with this module's functions while choosing the rule) at a third of the extra runs, which matters because photos of no landmark have no "up" and are run again far more
often than landmark photos. `rerun_below` is chosen on validation: the value with the best
validation accuracy, ties to the smaller (fewer photos run again).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import nn

from common.transfer import Activations, fit_logistic_head
from landmark_classifier.src.predictor import two_way  # the served rule's weights, in one place

QUARTERS = (0, 1, 2, 3)  # counter-clockwise quarter turns: torch.rot90 / np.rot90 with k=q over (H, W)
RERUN_BELOW = (0.1, 0.2, 0.3, 0.5)  # the candidates for the file's rerun threshold (validation picks)


def quadrants(maps: torch.Tensor) -> torch.Tensor:
    """N x C x H x W -> N x 4C: the mean of each quadrant (where the sky is, where the ground), as
    `adaptive_avg_pool2d(maps, 2).flatten(1)`. Written with slices: the ONNX exporter cannot
    decompose adaptive pooling to 2 x 2 over the graph's computed map size."""
    height, width = maps.shape[2], maps.shape[3]
    cells = [rows[:, :, :, columns].mean((2, 3))
             for rows in (maps[:, :, :(height + 1) // 2], maps[:, :, height // 2:])
             for columns in (slice(0, (width + 1) // 2), slice(width // 2, width))]
    return torch.stack(cells, 2).flatten(1)


class OrientationHead(nn.Module):
    """The trunk's activation map (N x C x H x W) -> N x 4 logits, one per quarter turn."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.linear = linear

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        return self.linear(quadrants(maps.float()))


def turned(images: torch.Tensor, quarters: int) -> torch.Tensor:
    """uint8 N x 3 x H x W images turned `quarters` times counter-clockwise."""
    return torch.rot90(images, quarters, (2, 3)).contiguous() if quarters % 4 else images


def _pooled(acts: Activations) -> torch.Tensor:
    return torch.cat([quadrants(acts.plain[i:i + 256].float()) for i in range(0, len(acts), 256)])


@dataclass
class Orientation:
    """The fitted orientation model and the file's rerun threshold, with what validation measured."""
    head: OrientationHead
    rerun_below: float
    note: dict = field(default_factory=dict)

    def metadata(self) -> dict:
        return {"output": "orientation: N x 4, p(the photo is the upright photo turned q quarters "
                          "counter-clockwise), q = 0, 1, 2, 3",
                "rerun_below": self.rerun_below,
                "rule": "where p(q = 0) < rerun_below, with q* the most likely q > 0: p = (p(0) * the answer as stored + "
                        "p(q*) * the answer for the photo turned back q* quarters) / (p(0) + p(q*))",
                **self.note}


def fit_head(turned_train: dict[int, Activations], turned_valid: dict[int, Activations],
             Cs: tuple[float, ...] = (0.001, 0.003, 0.01)) -> tuple[OrientationHead, dict]:
    """A logistic regression from the pooled trunk map to the quarter turn, C chosen on validation.
    `turned_*[q]`: the trunk's activations of the photos turned q quarters."""
    def stack(acts: dict[int, Activations]) -> tuple[torch.Tensor, torch.Tensor]:
        return (torch.cat([_pooled(acts[q]) for q in QUARTERS]),
                torch.cat([torch.full((len(acts[q]),), q) for q in QUARTERS]))

    fitted = fit_logistic_head(*stack(turned_train), *stack(turned_valid), Cs)
    head = OrientationHead(fitted.linear).eval()
    with torch.no_grad():
        by_turn = {f"{90 * q} degrees": round(float((head(turned_valid[q].plain).argmax(1) == q).float().mean()), 4)
                   for q in QUARTERS}
    return head, {"C": fitted.C, "validation accuracy": round(fitted.valid_accuracy, 4),
                  "validation accuracy by turn": by_turn}


def mix(weights: np.ndarray, answers: np.ndarray) -> np.ndarray:
    """sum over q of weights[:, q] * answers[:, q]: `answers` N x 4 (x ...), the answer for each photo turned back q."""
    return (weights.reshape(weights.shape + (1,) * (answers.ndim - 2)) * answers).sum(1)


def answers_turned_back(probabilities: Callable[[torch.Tensor], np.ndarray], images: torch.Tensor) -> np.ndarray:
    """N x 4 x classes: `probabilities` (the served answer for uint8 photos) of each photo turned
    back q quarters, q = 0..3 (turned back q = turned 4 - q more)."""
    return np.stack([probabilities(turned(images, (4 - q) % 4)) for q in QUARTERS], 1)


def choose_rerun_below(turn_probabilities: np.ndarray, answers: np.ndarray, labels: np.ndarray,
                       candidates: tuple[float, ...] = RERUN_BELOW) -> tuple[float, dict]:
    """The rerun threshold with the best validation accuracy (ties: the smaller). `answers`: N x 4 x
    classes from `answers_turned_back`; `answers[:, 0]` is the photo as stored."""
    scores = {below: accuracy(turn_probabilities, answers, labels, below) for below in candidates}
    best = max(candidates, key=lambda b: (scores[b][0], -b))
    return best, {"validation accuracy without": round(float((answers[:, 0].argmax(1) == labels).mean()), 4),
                  "validation accuracy with": round(scores[best][0], 4),
                  "validation photos run again": round(scores[best][1], 4),
                  "validation accuracy by rerun_below": {str(b): round(a, 4) for b, (a, _) in scores.items()}}


def accuracy(turn_probabilities: np.ndarray, answers: np.ndarray, labels: np.ndarray,
             rerun_below: float) -> tuple[float, float]:
    """(accuracy, share of photos run again) of the served rule: the two-way mixed answer where
    p(upright) is below `rerun_below`, the answer for the photo as stored elsewhere."""
    rerun = turn_probabilities[:, 0] < rerun_below
    named = np.where(rerun, mix(two_way(turn_probabilities), answers).argmax(1), answers[:, 0].argmax(1))
    return float((named == labels).mean()), float(rerun.mean())


def fit(cache, train: torch.Tensor, valid: torch.Tensor, valid_labels: torch.Tensor,
        probabilities: Callable[[torch.Tensor], np.ndarray], *, thumbnail_size: int | None = None,
        candidates: tuple[float, ...] = RERUN_BELOW) -> Orientation:
    """The orientation head on the training photos turned each way, and its rerun threshold chosen on
    the validation photos (and, with `thumbnail_size`, their thumbnails) named by `probabilities`
    (uint8 photos -> the calibrated probabilities the file serves: `fusion.Fused.probabilities`).

    `cache`: the backbone's `ActivationCache`; `train`, `valid`: uint8 photos at its resize size."""
    from landmark_classifier.src.openset import thumbnails

    def each_way(images: torch.Tensor, desc: str) -> dict[int, Activations]:
        return {q: cache(turned(images, q), desc=f"{desc} turned {90 * q}") for q in QUARTERS}

    head, note = fit_head(each_way(train, "train"), each_way(valid, "valid"))
    sets = [valid] + ([thumbnails(valid, thumbnail_size)] if thumbnail_size else [])
    with torch.no_grad():
        p_turn = np.concatenate([torch.softmax(head(cache(images, desc="as stored").plain), 1).numpy()
                                 for images in sets])
    answers = np.concatenate([answers_turned_back(probabilities, images) for images in sets])
    labels = torch.cat([valid_labels] * len(sets)).numpy()
    rerun_below, choice = choose_rerun_below(p_turn, answers, labels, candidates)
    photos = slice(0, len(valid_labels))  # the photos alone (not their thumbnails), as the report's accuracy
    choice["validation photos (no thumbnails): accuracy without"] = round(
        float((answers[photos, 0].argmax(1) == labels[photos]).mean()), 4)
    choice["validation photos (no thumbnails): accuracy with"] = round(
        accuracy(p_turn[photos], answers[photos], labels[photos], rerun_below)[0], 4)
    return Orientation(head, rerun_below, {"fit": note, "chosen on validation": choice})
