"""LightGBM, CatBoost and XGBoost fitted directly on log1p(casual) and log1p(registered), and
their blend.

Each (library, seed) model is fitted once per block of days (`data.block_folds`) to predict that
block out of fold, then once on all 19 days to predict the test hours. Rounds are fixed (no early
stopping on the held-out block, which would leak it into the out-of-fold score). The blend's
weights are non-negative least squares on the out-of-fold log1p(count) predictions: the weights
that best reproduce log1p(count), whose RMSE is the competition's RMSLE. The out-of-fold score
of a blend is cross-fitted (each block predicted with weights fitted on the other blocks' out-of-fold
predictions), so fitting the weights never scores itself.

One thread per model: on these shared cores LightGBM and XGBoost have run 25-40x slower with 2
OpenMP threads than with 1 (`python -m bike_sharing_autogluon.benchmark` compares). `workers`
processes can fit models side by side (on an idle machine); on busy shared cores one is faster.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.optimize import nnls

LIBRARIES = ("lightgbm", "catboost", "xgboost")
TARGETS = ("casual", "registered")


def params(library: str, seed: int, rounds_scale: float = 1.0) -> dict:
    """Hyperparameters, compared on block cross-validation only (never on test counts): these faster
    settings matched 2.5x more trees at a lower learning rate (LightGBM 0.3042 vs 0.3061, CatBoost 0.3013
    vs 0.3007, XGBoost 0.3063 vs 0.3071, their blend 0.2985 vs 0.2992) in half the time.
    `rounds_scale` shrinks the number of trees for quick profiles and tests."""
    rounds = lambda n: max(10, round(n * rounds_scale))  # noqa: E731
    if library == "lightgbm":
        return dict(n_estimators=rounds(600), learning_rate=0.05, num_leaves=31, min_child_samples=10,
                    subsample=0.8, subsample_freq=1, colsample_bytree=0.8, reg_lambda=1.0,
                    random_state=seed, n_jobs=1, verbose=-1)
    if library == "catboost":
        return dict(iterations=rounds(700), learning_rate=0.12, depth=6, l2_leaf_reg=3,
                    random_seed=seed, thread_count=1, verbose=0, allow_writing_files=False)
    if library == "xgboost":
        return dict(n_estimators=rounds(600), learning_rate=0.05, max_depth=6, min_child_weight=3,
                    subsample=0.8, colsample_bytree=0.8, tree_method="hist", random_state=seed, n_jobs=1)
    raise ValueError(f"unknown library {library!r}; choose from {LIBRARIES}")


def make_model(library: str, seed: int, rounds_scale: float = 1.0):
    kwargs = params(library, seed, rounds_scale)
    if library == "lightgbm":
        from lightgbm import LGBMRegressor
        return LGBMRegressor(**kwargs)
    if library == "catboost":
        from catboost import CatBoostRegressor
        return CatBoostRegressor(**kwargs)
    from xgboost import XGBRegressor
    return XGBRegressor(**kwargs)


def as_matrix(features: pd.DataFrame) -> pd.DataFrame:
    """Numeric inputs for the three libraries: the timestamp dropped (the trend, year, month, day of
    week and hour carry it), categories as their codes (season and weather are ordered 1-4)."""
    out = features.drop(columns=["datetime"], errors="ignore").copy()
    for column in out.columns:
        if isinstance(out[column].dtype, pd.CategoricalDtype):
            out[column] = out[column].astype(float)
    return out.astype(float)


@dataclass
class ModelRun:
    library: str
    seed: int
    oof: dict[str, np.ndarray]    # target -> out-of-fold log1p prediction of every training hour
    test: dict[str, np.ndarray]   # target -> log1p prediction of the test hours (fit on all training days)
    seconds: float


def _fit_predict(library: str, seed: int, rounds_scale: float, x_fit, y_fit, x_predict) -> np.ndarray:
    return make_model(library, seed, rounds_scale).fit(x_fit, y_fit).predict(x_predict)


def fit_model(library: str, seed: int, x_train: pd.DataFrame, y_log: dict[str, np.ndarray], folds,
              x_test: pd.DataFrame, *, rounds_scale: float = 1.0, workers: int = 1) -> ModelRun:
    """One library and seed: a fit per fold and target for the out-of-fold predictions, one per
    target on all hours for the test. `workers` processes fit side by side, one thread each."""
    from joblib import Parallel, delayed

    started = time.perf_counter()
    jobs, places = [], []
    for target, y in y_log.items():
        for fit_rows, valid_rows in folds:
            jobs.append((x_train.iloc[fit_rows], y[fit_rows], x_train.iloc[valid_rows]))
            places.append((target, valid_rows))
        jobs.append((x_train, y, x_test))
        places.append((target, None))
    predictions = Parallel(n_jobs=workers)(
        delayed(_fit_predict)(library, seed, rounds_scale, *job) for job in jobs)
    oof = {t: np.full(len(x_train), np.nan) for t in y_log}
    test = {}
    for (target, valid_rows), prediction in zip(places, predictions):
        if valid_rows is None:
            test[target] = prediction
        else:
            oof[target][valid_rows] = prediction
    return ModelRun(library, seed, oof, test, time.perf_counter() - started)


def log_count(log_parts: dict[str, np.ndarray]) -> np.ndarray:
    """log1p(count) from log1p predictions of its parts (each clipped at 0 bikes)."""
    return np.log1p(sum(np.clip(np.expm1(v), 0, None) for v in log_parts.values()))


def seed_average(runs: list[ModelRun]) -> dict[str, dict[str, np.ndarray]]:
    """The mean log1p prediction of one library's seeds, out of fold and on test, per target."""
    return {part: {t: np.mean([getattr(r, part)[t] for r in runs], axis=0) for t in runs[0].oof}
            for part in ("oof", "test")}


def blend_weights(oof_log: np.ndarray, y_log: np.ndarray) -> np.ndarray:
    """Non-negative least-squares weights of the columns of `oof_log` (n hours x m models,
    out-of-fold log1p(count) predictions) that best reproduce `y_log` = log1p(count)."""
    oof_log, y_log = np.asarray(oof_log, dtype=float), np.asarray(y_log, dtype=float)
    if oof_log.ndim != 2 or len(oof_log) != len(y_log):
        raise ValueError(f"oof_log must be hours x models with {len(y_log)} rows, got shape {oof_log.shape}")
    if not np.isfinite(oof_log).all():
        raise ValueError("oof_log has missing or infinite predictions: every hour needs an out-of-fold prediction")
    weights, _ = nnls(oof_log, y_log)
    return weights


def cross_fitted_blend(oof_log: np.ndarray, y_log: np.ndarray, folds) -> np.ndarray:
    """Out-of-fold blend: each fold's hours blended with weights fitted on the other folds' hours."""
    blended = np.full(len(y_log), np.nan)
    for fit_rows, valid_rows in folds:
        blended[valid_rows] = oof_log[valid_rows] @ blend_weights(oof_log[fit_rows], y_log[fit_rows])
    return blended
