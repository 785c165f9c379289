"""Figures shared by the portfolio notebooks, one function per figure kind.

Every function returns its ``matplotlib.figure.Figure`` (the notebook displays
it) and never calls ``plt.show()``, so the same code runs headless in CI. Pass
``save_to`` to also write a PNG, e.g. into a project's ``reports/`` folder.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence, Sized
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from numpy.typing import ArrayLike

__all__ = [
    "save_figure",
    "score_per_stage",
    "loss_curves",
    "confusion_matrix_plot",
    "image_grid",
    "confidence_over_time",
    "confidence_histogram",
    "bar_chart",
    "accuracy_bars",
]

SAVE_DPI = 120


def save_figure(fig: Figure, save_to: str | Path | None) -> Figure:
    """Write `fig` as a PNG at `save_to` (parent folders created); no-op for None."""
    if save_to is not None:
        path = Path(save_to)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=SAVE_DPI, bbox_inches="tight", format="png")
    return fig


def _finish(fig: Figure, title: str, save_to: str | Path | None) -> Figure:
    if title:
        fig.suptitle(title)
    return save_figure(fig, save_to)


def _check_length(values: Sized, expected: int, name: str, reference: str) -> None:
    if len(values) != expected:
        raise ValueError(f"{name} has {len(values)} values but {reference} has {expected}")


def _confidences(confidences: ArrayLike) -> np.ndarray:
    conf = np.asarray(confidences, dtype=np.float64)
    if conf.ndim != 1 or conf.size == 0:
        raise ValueError(f"confidences must be a non-empty 1-D array, got shape {conf.shape}")
    outside = ~((conf >= 0) & (conf <= 1))  # also catches NaN
    if outside.any():
        raise ValueError(f"confidences must lie in [0, 1]; {int(outside.sum())} value(s) do not")
    return conf


# --------------------------------------------------------------------------- #
# Scores and training curves
# --------------------------------------------------------------------------- #
def score_per_stage(
    stages: Sequence[str],
    scores: Mapping[str, Sequence[float | None]] | Sequence[float | None],
    *,
    title: str,
    ylabel: str,
    lower_is_better: bool = True,
    save_to: str | Path | None = None,
) -> Figure:
    """Line plot of one or more scores across stages (training runs, submissions).

    A plain sequence is one series named after ``ylabel``. ``None`` marks a
    stage without a score (e.g. a run never submitted to Kaggle) and is skipped,
    as is NaN (what ``None`` becomes in a pandas column).
    Each point is annotated with its value; each series' best point gets a star.
    """
    series = dict(scores) if isinstance(scores, Mapping) else {ylabel: scores}
    points: dict[str, list[tuple[int, float]]] = {}
    for name, values in series.items():
        _check_length(values, len(stages), f"series {name!r}", "stages")
        kept = [(x, float(v)) for x, v in enumerate(values) if pd.notna(v)]
        if kept:
            points[name] = kept
    if not points:
        raise ValueError("scores holds no values to plot (all None)")

    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(stages) + 2), 4.5), layout="constrained")
    pick_best = np.argmin if lower_is_better else np.argmax
    for name, kept in points.items():
        xs, ys = zip(*kept)
        (line,) = ax.plot(xs, ys, marker="o", label=name)
        for x, y in kept:
            ax.annotate(f"{y:.3f}", (x, y), textcoords="offset points", xytext=(0, 7), ha="center", fontsize=8)
        best = int(pick_best(ys))
        ax.scatter(xs[best], ys[best], marker="*", s=250, color=line.get_color(), zorder=3, label=f"best {name}")
    ax.set_xticks(range(len(stages)), stages, rotation=20, ha="right")
    ax.set_xlabel("stage")
    ax.set_ylabel(f"{ylabel} ({'lower' if lower_is_better else 'higher'} is better)")
    ax.grid(alpha=0.3)
    ax.legend()
    return _finish(fig, title, save_to)


def _history_columns(history: Mapping[str, Sequence[float]] | pd.DataFrame) -> dict[str, list[float]]:
    if isinstance(history, pd.DataFrame):
        return {str(col): history[col].tolist() for col in history.columns}
    return {str(key): list(values) for key, values in history.items()}


def loss_curves(
    history: Mapping[str, Sequence[float]] | pd.DataFrame,
    *,
    lr: Sequence[float] | None = None,
    title: str = "",
    save_to: str | Path | None = None,
) -> Figure:
    """Loss per epoch for every history key containing "loss", plus accuracy if logged.

    ``lr`` may hold one value per epoch or per batch; either way it is spread
    evenly over the epoch axis and drawn on a twin y axis, log-scaled when it
    spans more than a factor of 10 (typical of warm-up/decay schedules).
    """
    columns = _history_columns(history)
    losses = {k: v for k, v in columns.items() if "loss" in k.lower()}
    accuracies = {k: v for k, v in columns.items() if "acc" in k.lower()}
    if not losses:
        raise ValueError(f"history has no key containing 'loss' (keys: {sorted(columns)})")

    ncols = 2 if accuracies else 1
    fig, axes = plt.subplots(1, ncols, figsize=(6 * ncols, 4.5), layout="constrained", squeeze=False)
    loss_ax = axes[0, 0]
    _plot_per_epoch(loss_ax, losses, "loss")
    n_epochs = max(len(v) for v in losses.values())

    if lr is not None:
        rates = np.asarray(lr, dtype=np.float64)
        lr_ax = loss_ax.twinx()
        lr_ax.plot(np.linspace(1, n_epochs, len(rates)), rates, color="gray", linestyle="--", label="learning rate")
        lr_ax.set_ylabel("learning rate")
        if rates.min() > 0 and rates.max() / rates.min() > 10:
            lr_ax.set_yscale("log")
        handles, names = loss_ax.get_legend_handles_labels()
        lr_handles, lr_names = lr_ax.get_legend_handles_labels()
        loss_ax.legend(handles + lr_handles, names + lr_names)

    if accuracies:
        _plot_per_epoch(axes[0, 1], accuracies, "accuracy")
    return _finish(fig, title, save_to)


def _plot_per_epoch(ax: Axes, curves: Mapping[str, Sequence[float]], ylabel: str) -> None:
    for name, values in curves.items():
        ax.plot(range(1, len(values) + 1), values, marker="o", markersize=3, label=name)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))  # epochs are whole: no 0.96, 1.04 ticks on a short run
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend()


# --------------------------------------------------------------------------- #
# Classification results
# --------------------------------------------------------------------------- #
MAX_ANNOTATED_CLASSES = 20


def confusion_matrix_plot(
    cm: ArrayLike,
    class_names: Sequence[str],
    *,
    normalize: bool = True,
    title: str = "",
    save_to: str | Path | None = None,
) -> Figure:
    """Heatmap of a confusion matrix (rows = true class, columns = predicted).

    With ``normalize`` each row is divided by its total, so cells read as
    "share of class i predicted as j" (rows with no samples stay 0). Values are
    written in the cells only up to 20 classes; beyond that they are unreadable,
    and the figure instead grows with the class count so the tick labels fit.
    """
    matrix = np.asarray(cm, dtype=np.float64)
    n = len(class_names)
    if matrix.shape != (n, n):
        raise ValueError(f"cm must be {n} x {n} to match class_names, got shape {matrix.shape}")
    if normalize:
        totals = matrix.sum(axis=1, keepdims=True)
        matrix = np.divide(matrix, totals, out=np.zeros_like(matrix), where=totals > 0)

    annotate = n <= MAX_ANNOTATED_CLASSES
    side = max(5.0, 0.35 * n + 3)
    fig, ax = plt.subplots(figsize=(side + 1.5, side), layout="constrained")  # + room for the colorbar
    image = ax.imshow(matrix, cmap="Blues", vmin=0, vmax=1 if normalize else None)
    fig.colorbar(image, ax=ax, shrink=0.8, label="share of true class" if normalize else "count")
    tick_size = 9 if annotate else 7
    ax.set_xticks(
        range(n), class_names, rotation=45 if annotate else 90, ha="right", rotation_mode="anchor", fontsize=tick_size
    )
    ax.set_yticks(range(n), class_names, fontsize=tick_size)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")

    if annotate:
        dark = matrix.max() / 2
        for i, j in np.ndindex(n, n):
            value = matrix[i, j]
            text = f"{value:.2f}" if normalize else f"{value:.0f}"
            ax.text(j, i, text, ha="center", va="center", fontsize=9, color="white" if value > dark else "black")
    return _finish(fig, title, save_to)


def bar_chart(
    names: Sequence[str],
    values: Sequence[float],
    *,
    title: str = "",
    xlabel: str = "",
    save_to: str | Path | None = None,
) -> Figure:
    """Horizontal bars, first name on top (e.g. top-5 probabilities, per-class accuracy)."""
    _check_length(values, len(names), "values", "names")
    fig, ax = plt.subplots(figsize=(6, max(2.0, 0.35 * len(names) + 1)), layout="constrained")
    bars = ax.barh(range(len(names)), values)
    ax.bar_label(bars, fmt="%.3f", padding=3, fontsize=8)
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()
    ax.set_xlabel(xlabel)
    ax.margins(x=0.15)  # room for the value labels
    return _finish(fig, title, save_to)


def accuracy_bars(
    accuracies: Mapping[str, float],
    *,
    title: str = "",
    xlabel: str = "accuracy",
    save_to: str | Path | None = None,
) -> Figure:
    """Horizontal bars of accuracies in [0, 1] (name -> accuracy), in percent, first on top, each labelled.

    The axis follows the values, whatever run made them: it starts at 0 when they spread widely (a
    tiny run's 30-70%), and just below the lowest when all are high (97-99.6% on full MNIST), so the
    differences show; the xlabel says where a zoomed axis starts. It ends past the highest bar with
    room for its label, so every bar and label lies inside the axes and the figure keeps its size.
    """
    names = [str(name) for name in accuracies]
    percent = np.asarray(list(accuracies.values()), dtype=np.float64) * 100
    if percent.size == 0 or not ((percent >= 0) & (percent <= 100)).all():  # also catches NaN
        raise ValueError("accuracies must be a non-empty sequence of values in [0, 1]")
    low, high = float(percent.min()), float(percent.max())
    spread = max(high - low, 1.0)
    start = 0.0 if low - 2 * spread <= 0 else float(np.floor(low - spread))
    end = high + 0.18 * (high - start) + 0.5  # room for the value labels

    fig, ax = plt.subplots(figsize=(7, max(2.5, 0.4 * len(names) + 1.2)), layout="constrained")
    bars = ax.barh(range(len(names)), percent - start, left=start)
    ax.bar_label(bars, labels=[f"{v:.2f}" for v in percent], padding=3, fontsize=8)
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()
    ax.set_xlim(start, end)
    ax.set_xticks([t for t in ax.get_xticks() if start <= t <= 100])  # the room past 100% gets no tick
    ax.set_xlabel(f"{xlabel} (%)" + (f"; the axis starts at {start:g}%" if start > 0 else ""))
    ax.grid(axis="x", alpha=0.3)
    return _finish(fig, title, save_to)


# --------------------------------------------------------------------------- #
# Images
# --------------------------------------------------------------------------- #
def _to_displayable(image: ArrayLike) -> np.ndarray:
    """HxW, HxWx3/4, or channels-first CxHxW (C = 1 or 3, as torch tensors are) -> HxW[xC]."""
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[-1] not in (1, 3):
        arr = arr.transpose(1, 2, 0)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (3, 4)):
        raise ValueError(f"unsupported image shape {np.asarray(image).shape}")
    return arr


def image_grid(
    images: Sequence[ArrayLike] | np.ndarray,
    labels: Sequence[object] | None = None,
    *,
    ncols: int = 5,
    title: str = "",
    save_to: str | Path | None = None,
) -> Figure:
    """Show images in a grid, ``ncols`` per row, with optional labels as titles.

    Accepts a list of images or one batch array (N x ...). Images may be float
    in [0, 1] or uint8; grayscale ones are drawn on a fixed 0..1 / 0..255 scale
    so a faint digit is not contrast-stretched into a bold one.
    """
    shown = [_to_displayable(img) for img in images]
    if not shown:
        raise ValueError("images is empty")
    if labels is not None:
        _check_length(labels, len(shown), "labels", "images")

    ncols = min(ncols, len(shown))
    nrows = math.ceil(len(shown) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.2 * ncols, 2.4 * nrows), squeeze=False, layout="constrained")
    for ax in axes.flat[len(shown):]:
        fig.delaxes(ax)
    for i, (ax, img) in enumerate(zip(axes.flat, shown)):
        if img.ndim == 2:
            ax.imshow(img, cmap="gray", vmin=0, vmax=255 if img.dtype == np.uint8 else 1)
        else:
            ax.imshow(img)
        ax.axis("off")
        if labels is not None:
            ax.set_title(str(labels[i]), fontsize=9)
    return _finish(fig, title, save_to)


# --------------------------------------------------------------------------- #
# Monitoring (inference confidence)
# --------------------------------------------------------------------------- #
def confidence_over_time(
    timestamps: ArrayLike,
    confidences: ArrayLike,
    *,
    threshold: float | None = None,
    labels: Sequence[object] | None = None,
    title: str = "",
    save_to: str | Path | None = None,
) -> Figure:
    """Scatter of inference confidence against time, one colour per predicted label."""
    times = pd.to_datetime(pd.Series(timestamps)).to_numpy()
    conf = _confidences(confidences)
    _check_length(conf, len(times), "confidences", "timestamps")
    if labels is not None:
        _check_length(labels, len(times), "labels", "timestamps")

    fig, ax = plt.subplots(figsize=(9, 4.5), layout="constrained")
    if labels is None:
        ax.scatter(times, conf, s=18)
    else:
        label_arr = np.asarray(labels, dtype=object)
        for label in pd.unique(label_arr):
            mask = label_arr == label
            ax.scatter(times[mask], conf[mask], s=18, label=str(label))
    if threshold is not None:
        ax.axhline(threshold, color="red", linestyle="--", label=f"threshold {threshold:g}")
    if labels is not None or threshold is not None:
        ax.legend()
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("time")
    ax.set_ylabel("confidence")
    ax.tick_params(axis="x", labelrotation=30)
    ax.grid(alpha=0.3)
    return _finish(fig, title, save_to)


def confidence_histogram(
    confidences: ArrayLike,
    *,
    threshold: float | None = None,
    bins: int = 20,
    title: str = "",
    save_to: str | Path | None = None,
) -> Figure:
    """Histogram of confidences over [0, 1], with the count below/at-or-above ``threshold``."""
    conf = _confidences(confidences)
    fig, ax = plt.subplots(figsize=(7, 4.5), layout="constrained")
    ax.hist(conf, bins=bins, range=(0, 1), edgecolor="white")
    if threshold is not None:
        below = int((conf < threshold).sum())
        ax.axvline(threshold, color="red", linestyle="--")
        ax.text(
            0.02, 0.95, f"{below} below / {len(conf) - below} at or above {threshold:g}",
            transform=ax.transAxes, va="top", bbox={"facecolor": "white", "alpha": 0.8},
        )
    ax.set_xlabel("confidence")
    ax.set_ylabel("count")
    return _finish(fig, title, save_to)


def reliability_diagram(
    curves: Mapping[str, Sequence[Mapping[str, float]]],
    *,
    title: str = "",
    save_to: str | Path | None = None,
) -> Figure:
    """Accuracy against mean confidence per confidence bin, one line per model (e.g. before and
    after temperature scaling), the diagonal for perfect calibration; each bin's dot sized by its
    count. `curves`: name -> bins as {"confidence", "accuracy", "photos"}."""
    fig, ax = plt.subplots(figsize=(5.5, 5), layout="constrained")
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfectly calibrated")
    for name, bins in curves.items():
        conf = [b["confidence"] for b in bins]
        acc = [b["accuracy"] for b in bins]
        counts = np.array([b["photos"] for b in bins], dtype=float)
        line, = ax.plot(conf, acc, marker="", label=name)
        ax.scatter(conf, acc, s=20 + 200 * counts / max(1.0, counts.max()), color=line.get_color(), alpha=0.7)
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("confidence (mean in the bin)")
    ax.set_ylabel("accuracy in the bin")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    return _finish(fig, title, save_to)
