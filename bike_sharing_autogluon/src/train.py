"""Training stages: each one AutoGluon TabularPredictor fit (two for the casual/registered split).

Every stage is fitted on the training days 1-14 of each month with days 15-19 as AutoGluon's
tuning data (`data.validation_split`), scored by RMSLE on those validation days (the one
number that compares all stages), then refit on all 19 days (`refit_full`) to predict the
test days for its submission. The test set's true counts are never seen here.
"""
from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from bike_sharing_autogluon.src.features import make_features, weather_history
from common.metrics import rmsle


@dataclass(frozen=True)
class Stage:
    name: str
    change: str            # what this stage changes, for the results table
    features: str          # a features.FEATURE_SETS name
    target: str            # "count", "log_count" (log1p) or "casual_registered" (log1p each, summed)
    time_share: float      # share of the profile's time budget
    presets: str = "medium_quality"
    tune: bool = False     # hyperparameter search over GBM / CatBoost / XGBoost + bagging, as the seed


STAGES = [
    Stage("initial", "raw features, RMSE on count (the seed's first run)", "raw", "count", 0.08),
    Stage("add_features", "+ hour, season/weather as categories (the seed)", "seed", "count", 0.08),
    Stage("hpo", "+ hyperparameter search and bagging (the seed)", "seed", "count", 0.14, tune=True),
    Stage("log_target", "log1p target: its RMSE is the competition's RMSLE", "seed", "log_count", 0.10),
    Stage("split_targets", "casual and registered modelled separately (log1p each), summed", "seed",
          "casual_registered", 0.10),
    Stage("time_features", "+ year, month, day of week, trend, rush hour, hour x working day", "time",
          "casual_registered", 0.10),
    Stage("weather_history", "time features without the two interactions, + weather of the hours before",
          "weather", "casual_registered", 0.12),
    Stage("best_quality", "best_quality preset (bagged, stacked) on the weather_history setup", "weather",
          "casual_registered", 0.28, presets="best_quality"),
]

# `bag_folds` applies to the bagged stages (hpo, best_quality).
PROFILES = {
    "tiny": {"budget": 120, "hyperparameters": {"GBM": {"num_boost_round": 60}}, "trials": 2, "bag_folds": 2},
    # quick: the three boosting libraries only; the neural net and k-NN cost minutes in refits
    "quick": {"budget": 150, "hyperparameters": {"GBM": {}, "CAT": {}, "XGB": {}}, "trials": 4, "bag_folds": 5},
    "full": {"budget": 480, "hyperparameters": None, "trials": 10, "bag_folds": 8},
}


@dataclass
class StageResult:
    stage: Stage
    leaderboard: pd.DataFrame       # AutoGluon's, on the validation days (one per target model)
    best_models: dict[str, str]     # target -> AutoGluon's best model
    autogluon_score: dict[str, float]  # target -> best model's score_val in AutoGluon's metric
    valid_rmsle: float              # RMSLE of `count` on the validation days
    test_prediction: np.ndarray     # predicted `count` for test.csv's rows, from the refit model
    fit_seconds: float
    settings: dict = field(default_factory=dict)  # AutoGluon fit() arguments (search spaces omitted)


def search_space(trials: int) -> tuple[dict, dict]:
    """Hyperparameter search as the seed's third run: a few trials per model family."""
    from autogluon.common import space

    hyperparameters = {
        "GBM": {"num_leaves": space.Int(16, 128, default=31),
                "learning_rate": space.Real(0.01, 0.2, default=0.05, log=True)},
        "CAT": {"depth": space.Int(4, 10, default=6)},
        "XGB": {"max_depth": space.Int(3, 10, default=6),
                "learning_rate": space.Real(0.01, 0.2, default=0.1, log=True)},
    }
    return hyperparameters, {"num_trials": trials, "scheduler": "local", "searcher": "random"}


def _fit_one(label: str, train: pd.DataFrame, tuning: pd.DataFrame, *, path: Path, time_limit: float,
             stage: Stage, profile: dict, verbosity: int):
    from autogluon.tabular import TabularPredictor

    # FASTAI is not installed: autogluon's fastai extra pins torch < 2.14 (see requirements.txt).
    kwargs: dict = {"time_limit": time_limit, "presets": stage.presets, "verbosity": verbosity,
                    "excluded_model_types": ["FASTAI"]}
    if profile["hyperparameters"] is not None:
        kwargs["hyperparameters"] = profile["hyperparameters"]
    if stage.tune:
        hyperparameters, tune_kwargs = search_space(profile["trials"])
        kwargs.update(hyperparameters=hyperparameters, hyperparameter_tune_kwargs=tune_kwargs,
                      num_bag_sets=1)
    if stage.tune or stage.presets == "best_quality":
        # bagging, with our validation days as the holdout that scores the ensemble
        kwargs.update(num_bag_folds=profile["bag_folds"], use_bag_holdout=True)
    if stage.presets == "best_quality":
        kwargs.update(dynamic_stacking=False)  # its extra sub-fit would eat a quarter of the budget
    shutil.rmtree(path, ignore_errors=True)
    # RMSE: on counts for the seed's stages, on log1p counts (= RMSLE) for the later ones
    predictor = TabularPredictor(label=label, eval_metric="root_mean_squared_error", path=str(path),
                                 verbosity=verbosity)
    predictor.fit(train, tuning_data=tuning, **kwargs)
    return predictor, kwargs


def fit_stage(stage: Stage, train: pd.DataFrame, valid: pd.DataFrame, test: pd.DataFrame, *,
              profile: str, models_dir: Path, verbosity: int = 0) -> StageResult:
    """Fit one stage; see the module docstring for the protocol."""
    config = PROFILES[profile]
    history = weather_history([train, valid, test])  # inputs only: weather of every hour
    x_train, x_valid, x_test = (make_features(f, stage.features, history) for f in (train, valid, test))
    labels = ["casual", "registered"] if stage.target == "casual_registered" else ["count"]
    log_space = stage.target != "count"
    time_limit = config["budget"] * stage.time_share / len(labels)

    started = time.perf_counter()
    valid_pred = np.zeros(len(valid))
    test_pred = np.zeros(len(test))
    boards, best, scores, settings = [], {}, {}, {}
    for label in labels:
        def with_target(x, frame):
            y = frame[label].astype(float)
            return x.assign(**{label: np.log1p(y) if log_space else y})

        predictor, settings = _fit_one(label, with_target(x_train, train), with_target(x_valid, valid),
                                       path=models_dir / stage.name / label, time_limit=time_limit,
                                       stage=stage, profile=config, verbosity=verbosity)
        board = predictor.leaderboard(silent=True)
        boards.append(board.assign(target=label))
        best[label] = predictor.model_best
        scores[label] = float(-board.loc[board["model"] == predictor.model_best, "score_val"].iloc[0])
        valid_pred += _to_counts(predictor.predict(x_valid), log_space)
        predictor.refit_full(model="best")  # all 19 days for the submission; sets model_best to the refit
        test_pred += _to_counts(predictor.predict(x_test), log_space)
    seconds = time.perf_counter() - started
    settings = {k: v for k, v in settings.items() if k not in ("verbosity", "hyperparameters")}
    return StageResult(stage, pd.concat(boards, ignore_index=True), best, scores,
                       rmsle(valid["count"], valid_pred), test_pred, seconds, settings)


def _to_counts(prediction: pd.Series, log_space: bool) -> np.ndarray:
    """Back to bike counts; negative predictions are clipped to 0 (as the seed did)."""
    values = prediction.to_numpy(dtype=float)
    return np.clip(np.expm1(values) if log_space else values, 0, None)
