"""One test-set evaluation of a model: accuracy, top-k, confusion matrix, per-class accuracy, and
the misclassified photos, as numbers for metrics.json and as figures for the report."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from common import metrics
from common import plotting
from common.images import load_image


@dataclass
class Evaluation:
    accuracy: float
    top_k: int
    top_k_accuracy: float
    confusion: np.ndarray  # rows: true class, columns: predicted
    per_class: pd.DataFrame  # class, support, accuracy, ...
    wrong: np.ndarray  # indices of the misclassified test images
    predicted: np.ndarray
    probabilities: np.ndarray

    def summary(self, prefix: str) -> dict[str, float]:
        return {f"{prefix} test accuracy": round(self.accuracy, 4),
                f"{prefix} test top-{self.top_k} accuracy": round(self.top_k_accuracy, 4)}


def evaluate(logits: np.ndarray, labels: np.ndarray, display_names: list[str]) -> Evaluation:
    """Everything the report shows about one model on the test set, from its logits."""
    logits, labels = np.asarray(logits, dtype=np.float64), np.asarray(labels)
    shifted = np.exp(logits - logits.max(1, keepdims=True))
    probabilities = shifted / shifted.sum(1, keepdims=True)
    predicted = probabilities.argmax(1)
    k = min(5, len(display_names))
    per_class = metrics.per_class_report(labels, predicted, display_names).reset_index()
    return Evaluation(metrics.accuracy(labels, predicted), k, metrics.top_k_accuracy(labels, logits, k=k),
                      metrics.confusion_matrix(labels, predicted, len(display_names)), per_class,
                      np.flatnonzero(predicted != labels), predicted, probabilities)


def evaluate_served(model, image_paths: list[Path], labels: np.ndarray, display_names: list[str], *,
                    desc: str = "test photos through the ONNX file") -> Evaluation:
    """The test set scored by the artefact that ships: each photo's file decoded and classified by
    `predictor.probabilities` (the CLI's and the app's path) with the exported ONNX `model`.

    The training pipeline decodes with PIL into a uint8 cache; the served graph resizes in float
    inside ONNX. On a borderline photo the two can disagree, so the number users get is this one."""
    from tqdm.auto import tqdm

    from landmark_classifier.src import predictor

    probabilities = np.stack([predictor.probabilities(model, path, name=path.name)
                              for path in tqdm(image_paths, desc=desc, unit="img", leave=False)])
    # evaluate() takes logits: log-probabilities give back the same probabilities and rankings
    return evaluate(np.log(np.clip(probabilities, 1e-12, None)), labels, display_names)


def report_figures(result: Evaluation, display_names: list[str], test_paths: list[Path], labels: np.ndarray,
                   title: str, figures: Path, stem: str) -> list[dict]:
    """Confusion matrix, accuracy per class and the misclassified photos, saved under `figures/`;
    returns the metrics.json figure entries."""
    entries = []
    fig = plotting.confusion_matrix_plot(result.confusion, display_names, title=f"{title}: confusion matrix (test)",
                                         save_to=figures / f"{stem}_confusion_matrix.png")
    plt.close(fig)
    entries.append({"title": f"{title}: confusion matrix (test)", "path": f"figures/{stem}_confusion_matrix.png"})
    accuracy = result.per_class.set_index(result.per_class.columns[0])["accuracy"].reindex(display_names)
    fig = plotting.bar_chart(display_names, accuracy.fillna(0).tolist(), xlabel="test accuracy",
                             title=f"{title}: accuracy per class (test)",
                             save_to=figures / f"{stem}_per_class_accuracy.png")
    plt.close(fig)
    entries.append({"title": f"{title}: accuracy per class (test)", "path": f"figures/{stem}_per_class_accuracy.png"})
    fig = misclassified_grid(result, display_names, test_paths, labels, title=f"{title}: misclassified test photos",
                             save_to=figures / f"{stem}_misclassified.png")
    if fig is not None:
        plt.close(fig)
        entries.append({"title": f"{title}: misclassified test photos",
                        "path": f"figures/{stem}_misclassified.png"})
    return entries


def misclassified_grid(result: Evaluation, display_names: list[str], test_paths: list[Path], labels: np.ndarray,
                       *, limit: int = 24, title: str = "", save_to: Path | None = None) -> Figure | None:
    """The misclassified test photos (the most confident mistakes first), each titled
    "true -> predicted (probability)"; None when there is no mistake."""
    if len(result.wrong) == 0:
        return None
    confidence = result.probabilities[result.wrong, result.predicted[result.wrong]]
    shown = result.wrong[np.argsort(-confidence)][:limit]
    images, titles = [], []
    for i in shown:
        image = load_image(test_paths[i])
        image.thumbnail((160, 160))
        images.append(np.asarray(image))
        titles.append(f"{display_names[labels[i]]}\n-> {display_names[result.predicted[i]]} "
                      f"({result.probabilities[i, result.predicted[i]]:.0%})")
    columns = min(6, len(images), math.ceil(math.sqrt(2 * len(images))))  # a few mistakes: rows, not a strip
    return plotting.image_grid(images, titles, ncols=columns,
                               title=f"{title} ({len(result.wrong)} of {len(labels)}; true -> predicted)",
                               save_to=save_to)
