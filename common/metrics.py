"""Evaluation metrics shared by the portfolio projects.

scikit-learn does the arithmetic; this module owns the input validation, so a
bad input fails with a message naming the argument at fault instead of a NaN
score or a shape error from deep inside NumPy.

Classification functions expect integer class indices ``0..C-1`` (the layout
every project's model outputs); ``accuracy`` also accepts any other labels.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from sklearn import metrics as skm

__all__ = [
    "rmsle",
    "accuracy",
    "top_k_accuracy",
    "confusion_matrix",
    "per_class_report",
    "accuracy_interval",
]


# --------------------------------------------------------------------------- #
# Validation helpers
# --------------------------------------------------------------------------- #
def _as_1d(values: ArrayLike, name: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    return arr


def _paired(y_true: ArrayLike, y_pred: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Both inputs as 1-D arrays of equal, non-zero length."""
    t, p = _as_1d(y_true, "y_true"), _as_1d(y_pred, "y_pred")
    if len(t) != len(p):
        raise ValueError(f"length mismatch: y_true has {len(t)} values, y_pred has {len(p)}")
    if len(t) == 0:
        raise ValueError("y_true and y_pred are empty")
    return t, p


def _no_missing(arr: np.ndarray, name: str) -> None:
    missing = int(pd.isna(arr).sum())
    if missing:
        raise ValueError(f"{name} contains {missing} NaN/missing value(s)")


def _labels(y_true: ArrayLike, y_pred: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    t, p = _paired(y_true, y_pred)
    _no_missing(t, "y_true")
    _no_missing(p, "y_pred")
    return t, p


def _class_indices(arr: np.ndarray, name: str) -> np.ndarray:
    """Cast labels to int, accepting integral floats (pandas turns ints into floats easily)."""
    integral = arr.dtype.kind in "iu" or (arr.dtype.kind == "f" and np.all(arr == np.round(arr)))
    if not integral:
        raise ValueError(f"{name} must hold integer class indices 0..C-1, got dtype {arr.dtype}")
    ints = arr.astype(np.int64)
    if ints.min() < 0:
        raise ValueError(f"{name} has negative class index {ints.min()}")
    return ints


def _num_classes(t: np.ndarray, p: np.ndarray, num_classes: int | None, source: str) -> int:
    """``num_classes`` if given (``source`` names where it came from), else the largest label + 1."""
    seen = int(max(t.max(), p.max())) + 1
    if num_classes is None:
        return seen
    if num_classes < 1:
        raise ValueError(f"{source} must give at least 1 class, got {num_classes}")
    if seen > num_classes:
        raise ValueError(f"labels go up to {seen - 1} but {source} allows only {num_classes} classes")
    return num_classes


# --------------------------------------------------------------------------- #
# Regression
# --------------------------------------------------------------------------- #
def rmsle(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Root mean squared log error, ``sqrt(mean((log1p(pred) - log1p(true))**2))``.

    The Kaggle Bike Sharing Demand metric. Negative values are rejected rather
    than clipped: a negative demand forecast is a model bug worth seeing.
    """
    t, p = _paired(y_true, y_pred)
    t, p = _non_negative_floats(t, "y_true"), _non_negative_floats(p, "y_pred")
    return float(np.sqrt(skm.mean_squared_log_error(t, p)))


def _non_negative_floats(arr: np.ndarray, name: str) -> np.ndarray:
    try:
        values = arr.astype(np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be numeric, got dtype {arr.dtype}") from exc
    bad = int((~np.isfinite(values)).sum())
    if bad:
        raise ValueError(f"{name} contains {bad} NaN/inf value(s)")
    negative = values < 0
    if negative.any():
        raise ValueError(
            f"{name} contains {int(negative.sum())} negative value(s) (min {values.min():g}); "
            "RMSLE is defined for non-negative values only"
        )
    return values


# --------------------------------------------------------------------------- #
# Classification
# --------------------------------------------------------------------------- #
def accuracy(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Fraction of predictions equal to the true label."""
    t, p = _labels(y_true, y_pred)
    return float(skm.accuracy_score(t, p))


def top_k_accuracy(y_true: ArrayLike, scores: ArrayLike, k: int = 5) -> float:
    """Fraction of samples whose true class is among the ``k`` highest scores.

    ``scores`` is an ``N x C`` array of logits or probabilities. Implemented in
    NumPy because sklearn's version special-cases two classes and labels absent
    from ``y_true``.
    """
    t = _as_1d(y_true, "y_true")
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 2:
        raise ValueError(f"scores must be 2-D (N x C), got shape {s.shape}")
    if s.shape[0] != len(t):
        raise ValueError(f"length mismatch: y_true has {len(t)} values, scores has {s.shape[0]} rows")
    if len(t) == 0:
        raise ValueError("y_true and scores are empty")
    _no_missing(t, "y_true")
    t = _class_indices(t, "y_true")
    n_nan = int(np.isnan(s).sum())
    if n_nan:
        raise ValueError(f"scores contains {n_nan} NaN value(s)")
    n_classes = s.shape[1]
    if not 1 <= k <= n_classes:
        raise ValueError(f"k must be between 1 and the number of classes ({n_classes}), got {k}")
    if t.max() >= n_classes:
        raise ValueError(f"y_true has class index {t.max()} but scores has only {n_classes} columns")
    top_k = np.argpartition(s, -k, axis=1)[:, -k:]
    return float((top_k == t[:, None]).any(axis=1).mean())


def confusion_matrix(y_true: ArrayLike, y_pred: ArrayLike, num_classes: int | None = None) -> np.ndarray:
    """Counts with rows = true class and columns = predicted class.

    The matrix is always ``num_classes x num_classes`` (inferred from the
    largest label when omitted), so classes absent from a batch keep their row.
    """
    t, p = _labels(y_true, y_pred)
    t, p = _class_indices(t, "y_true"), _class_indices(p, "y_pred")
    n = _num_classes(t, p, num_classes, "num_classes")
    return skm.confusion_matrix(t, p, labels=np.arange(n))


def per_class_report(
    y_true: ArrayLike, y_pred: ArrayLike, class_names: Sequence[str] | None = None
) -> pd.DataFrame:
    """Precision, recall, F1, support and per-class accuracy, one row per class.

    Per-class accuracy equals recall (the share of a class's samples predicted
    correctly); it is repeated under that name because the notebooks report it.
    Every class gets a row, with support 0 when absent from ``y_true``. Metrics
    that are 0/0 (recall of an absent class, precision of a never-predicted one)
    are NaN rather than a misleading 0.
    """
    t, p = _labels(y_true, y_pred)
    t, p = _class_indices(t, "y_true"), _class_indices(p, "y_pred")
    n = _num_classes(t, p, None if class_names is None else len(class_names), "class_names")
    precision, recall, f1, support = skm.precision_recall_fscore_support(
        t, p, labels=np.arange(n), zero_division=np.nan
    )
    index = pd.Index(list(class_names) if class_names is not None else range(n), name="class")
    return pd.DataFrame(
        {"precision": precision, "recall": recall, "f1": f1, "support": support, "accuracy": recall},
        index=index,
    )


def accuracy_interval(correct: int, total: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval (scipy) of an accuracy of `correct` out of `total`: how far the accuracy
    measured on a small evaluation set (150 validation or 200 test images) can be from the true one."""
    from scipy.stats import binomtest

    if int(total) != total or total <= 0:
        raise ValueError(f"total must be a positive whole number of images, got {total!r}")
    if int(correct) != correct or not 0 <= correct <= total:
        raise ValueError(f"correct must be a whole number between 0 and total={total}, got {correct!r}")
    interval = binomtest(int(correct), int(total)).proportion_ci(confidence, method="wilson")
    return float(interval.low), float(interval.high)
