"""Training stages: AutoGluon TabularPredictor fits (two for the casual/registered split), then
LightGBM, CatBoost and XGBoost fitted directly and blended (`gbm.py`).

Validation is block cross-validation over the days of each month (`data.block_folds`: days 1-5,
6-10, 11-14, 15-19). Kaggle's test is days 20 to month end, the days after the known ones; a block
held out of every month imitates it, and of the schemes compared on 39 finished models it ranked
them most like the test did. Every stage gets an out-of-fold prediction for every training hour:
AutoGluon bags its models over the same blocks (`groups`), the direct models are fitted per block.
The pooled out-of-fold RMSLE ("block CV") compares stages; the days 15-19 block alone (fit on
days 1-14) is the project's first validation split, reported next to it.
AutoGluon's out-of-fold predictions can be optimistic: each fold model early-stops (and keeps its
best iteration) on the very block it then predicts. So AutoGluon stages compare fairly with each
other, not with the direct models, whose rounds are fixed. `nested_block_cv` scores an AutoGluon stage
honestly: the whole stage, its own bagging included, is fitted without a block and predicts it.
The last stage does that for the AutoGluon stage with the best own block CV and blends it with the
direct models. The selection compares honest scores only: the direct stages' block CV and the
AutoGluon stage's nested one (`results.select_stage`).
Test predictions come from models that saw all 19 days: AutoGluon's bagged models average their
four fold models, the direct models are refit on all days. The test counts are never seen here.

Why validation and the test disagree, measured on the 2011 test hours after the run of record (diagnosis,
never a choice): block CV ranks AutoGluon's weather_history (nested 0.2955) above the direct blends
(0.2968-0.2985), the 2011 hours rank it below them (0.3945 vs 0.3753-0.3808). 12 of those days are unlike
any training day (hurricane Irene, the October snowstorm, the Christmas holidays: `results.EXTRAORDINARY_DAYS`);
they are 8 % of the hours and 33-40 % of each stage's squared log error, and the direct GBMs fall off less
there (RMSLE 0.74-0.80 vs AutoGluon's 0.86). On the other 2,951 hours the order is block CV's (autogluon_blend
0.3166, weather_history 0.3182, seed_average 0.3197, gbm_blend 0.3212; Spearman 0.96 across the stages,
0.75 on all hours). Ruled out before that: AutoGluon's optimism (0.0014); the day of the month AutoGluon
derives from the timestamp; the gap length (10-day held-out blocks rank the same); refitting on all days vs
averaging fold models. The notebook reports this split for every run with true counts (`event_breakdown`).
"""
from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from bike_sharing_autogluon.src import gbm
from bike_sharing_autogluon.src.config import Config
from bike_sharing_autogluon.src.data import DAY_BLOCKS, block_folds, day_blocks
from bike_sharing_autogluon.src.features import make_features, weather_history
from common.metrics import rmsle


@dataclass(frozen=True)
class Stage:
    name: str
    change: str            # what this stage changes, for the results table
    features: str          # a features.FEATURE_SETS name
    target: str            # "count", "log_count" (log1p) or "casual_registered" (log1p each, summed)
    time_share: float      # share of the profile's AutoGluon time budget (0 for the direct models)
    presets: str = "medium_quality"
    tune: bool = False     # hyperparameter search over GBM / CatBoost / XGBoost, as the seed
    libraries: tuple[str, ...] = ()  # direct models (gbm.LIBRARIES) instead of AutoGluon; blended when several
    seeds: int = 1         # direct models: seeds averaged per library
    with_autogluon: bool = False  # direct models: AutoGluon's best stage so far joins the blend (nested OOF)


STAGES = [
    Stage("initial", "raw features, RMSE on count (the seed's first run)", "raw", "count", 0.08),
    Stage("add_features", "+ hour, season/weather as categories (the seed)", "seed", "count", 0.08),
    Stage("hpo", "+ hyperparameter search (the seed; every stage is now bagged over the day blocks)", "seed",
          "count", 0.14, tune=True),
    Stage("log_target", "log1p target: its RMSE is the competition's RMSLE", "seed", "log_count", 0.10),
    Stage("split_targets", "casual and registered modelled separately (log1p each), summed", "seed",
          "casual_registered", 0.10),
    Stage("time_features", "+ year, month, day of week, trend, rush hour, hour x working day", "time",
          "casual_registered", 0.10),
    Stage("weather_history", "time features without the two interactions, + weather of the hours before",
          "weather", "casual_registered", 0.12),
    Stage("best_quality", "best_quality preset (bagged, stacked) on the weather_history setup", "weather",
          "casual_registered", 0.28, presets="best_quality"),
    Stage("lightgbm", "LightGBM alone, fitted directly (fixed rounds, 1 thread) on the weather_history setup",
          "weather", "casual_registered", 0.0, libraries=("lightgbm",)),
    Stage("gbm_blend", "+ CatBoost and XGBoost, blended with non-negative least-squares weights fitted on "
          "out-of-fold block predictions", "weather", "casual_registered", 0.0, libraries=gbm.LIBRARIES),
    Stage("seed_average", "+ each library averaged over 3 seeds before blending", "weather", "casual_registered",
          0.0, libraries=gbm.LIBRARIES, seeds=3),
    Stage("autogluon_blend", "+ AutoGluon's best stage as a fourth blend member (weights fitted on its nested "
          "out-of-fold predictions)", "weather", "casual_registered", 0.0, libraries=gbm.LIBRARIES, seeds=3,
          with_autogluon=True),
]

OLD_SPLIT_BLOCK = len(DAY_BLOCKS) - 1  # days 15-19: the project's first validation split


@dataclass
class StageResult:
    stage: Stage
    leaderboard: pd.DataFrame       # AutoGluon's (scores on out-of-fold predictions), or one row per direct model
    best_models: dict[str, str]     # target -> AutoGluon's best model; for blends, the weights
    autogluon_score: dict[str, float]  # target -> best model's score_val in AutoGluon's metric (AutoGluon only)
    oof_prediction: np.ndarray      # out-of-fold `count` of every training hour
    cv_rmsle: float                 # RMSLE of `count` over all training hours, out of fold (block CV)
    block_rmsle: list[float]        # the same, block by block
    test_prediction: np.ndarray     # predicted `count` for test.csv's rows, from models that saw all 19 days
    fit_seconds: float
    settings: dict = field(default_factory=dict)  # fit() arguments or model parameters (search spaces omitted)
    nested: NestedCV | None = None  # the nested block CV of the AutoGluon stage this stage blends in

    @property
    def valid_rmsle(self) -> float:
        """The days 15-19 block alone: the project's first validation split (fit on days 1-14)."""
        return self.block_rmsle[OLD_SPLIT_BLOCK]


def block_scores(train: pd.DataFrame, oof_counts: np.ndarray) -> tuple[float, list[float]]:
    """Pooled out-of-fold RMSLE, and RMSLE per block of days (NaN for a block without hours)."""
    blocks = day_blocks(train["datetime"])
    truth = train["count"].to_numpy(dtype=float)
    per_block = [rmsle(truth[blocks == b], oof_counts[blocks == b]) if (blocks == b).any() else float("nan")
                 for b in range(len(DAY_BLOCKS))]
    return rmsle(truth, oof_counts), per_block


def search_space(trials: int, families: dict | None = None) -> tuple[dict, dict]:
    """Hyperparameter search as the seed's third run: a few trials per model family; with a profile's
    `families` (its Config.hyperparameters), only those, with their settings kept (tiny: small GBMs)."""
    from autogluon.common import space

    hyperparameters = {
        "GBM": {"num_leaves": space.Int(16, 128, default=31),
                "learning_rate": space.Real(0.01, 0.2, default=0.05, log=True)},
        "CAT": {"depth": space.Int(4, 10, default=6)},
        "XGB": {"max_depth": space.Int(3, 10, default=6),
                "learning_rate": space.Real(0.01, 0.2, default=0.1, log=True)},
    }
    if families is not None:
        hyperparameters = {name: {**families[name], **hyperparameters[name]}
                           for name in hyperparameters if name in families}
    return hyperparameters, {"num_trials": trials, "scheduler": "local", "searcher": "random"}


def _fit_one(label: str, train: pd.DataFrame, *, path: Path, time_limit: float, stage: Stage, config: Config,
             verbosity: int):
    """One TabularPredictor, bagged with one fold per block of days in `train["block"]`."""
    from autogluon.tabular import TabularPredictor

    # FASTAI is not installed: autogluon's fastai extra pins torch < 2.14 (see requirements.txt).
    # Bagging over the day blocks (`groups`: one fold per block) gives out-of-fold predictions.
    # One CPU per model and folds one after another: two OpenMP threads on these shared cores made
    # LightGBM and XGBoost 25-40x slower (`python -m bike_sharing_autogluon.benchmark`).
    kwargs: dict = {"time_limit": time_limit, "presets": stage.presets, "verbosity": verbosity,
                    "excluded_model_types": ["FASTAI"], "num_bag_folds": int(train["block"].nunique()),
                    "num_bag_sets": 1,
                    "ag_args_fit": {"num_cpus": 1},
                    "ag_args_ensemble": {"fold_fitting_strategy": "sequential_local"}}
    if config.hyperparameters is not None:
        kwargs["hyperparameters"] = config.hyperparameters
    if stage.tune:
        hyperparameters, tune_kwargs = search_space(config.trials, config.hyperparameters)
        kwargs.update(hyperparameters=hyperparameters, hyperparameter_tune_kwargs=tune_kwargs)
    if stage.presets == "best_quality":
        kwargs.update(dynamic_stacking=False)  # its extra sub-fit would eat a quarter of the budget
    shutil.rmtree(path, ignore_errors=True)
    # RMSE: on counts for the seed's stages, on log1p counts (= RMSLE) for the later ones
    init = {"label": label, "eval_metric": "root_mean_squared_error", "groups": "block"}
    if config.cloud is not None and stage.tune:
        print(f"{stage.name}: trains here: its search spaces cannot be sent through autogluon.cloud (ag_args.json)")
    elif config.cloud is not None:  # TRAIN_ON="sagemaker": the same fit as a training job
        from bike_sharing_autogluon.src.cloud import fit_on_sagemaker

        predictor, job = fit_on_sagemaker(train, init, kwargs, path=path, cloud=config.cloud)
        return predictor, {**kwargs, "sagemaker_job": job}
    predictor = TabularPredictor(**init, path=str(path), verbosity=verbosity)
    predictor.fit(train, **kwargs)
    return predictor, kwargs


def fit_stage(stage: Stage, train: pd.DataFrame, test: pd.DataFrame, *, config: Config, models_dir: Path,
              verbosity: int = 0, cache: dict | None = None, previous: list[StageResult] = ()) -> StageResult:
    """Fit one stage on all training days (block CV inside) with the budgets of `config` (one of
    `src/config.py`'s PROFILES); see the module docstring.

    `cache` ((library, seed) -> gbm.ModelRun) lets the direct-model stages share the models they
    have in common (seed_average reuses gbm_blend's first seed). `previous`: the stages fitted so
    far, where a `with_autogluon` stage finds the AutoGluon stage to blend in."""
    if stage.with_autogluon:
        candidate = autogluon_candidate(list(previous))
        if candidate is None:
            raise ValueError(f"stage {stage.name!r} blends in an AutoGluon stage, but none was fitted before it")
        nested = nested_block_cv(candidate.stage, train, test, config=config, models_dir=models_dir,
                                 verbosity=verbosity)
        return fit_direct_stage(stage, train, test, config=config, cache=cache,
                                autogluon=(candidate, nested))
    if stage.libraries:
        return fit_direct_stage(stage, train, test, config=config, cache=cache)
    x_train, x_test = _autogluon_inputs(stage, train, test)
    labels, log_space, time_limit = _autogluon_targets(stage, config)

    started = time.perf_counter()
    oof_pred = np.zeros(len(train))
    test_pred = np.zeros(len(test))
    boards, best, scores, settings, jobs = [], {}, {}, {}, []
    for label in labels:
        y = train[label].astype(float)
        predictor, settings = _fit_one(label, x_train.assign(**{label: np.log1p(y) if log_space else y}),
                                       path=models_dir / stage.name / label, time_limit=time_limit,
                                       stage=stage, config=config, verbosity=verbosity)
        jobs += [settings.pop("sagemaker_job")] if "sagemaker_job" in settings else []
        board = predictor.leaderboard(silent=True)
        boards.append(board.assign(target=label))
        best[label] = predictor.model_best
        scores[label] = float(-board.loc[board["model"] == predictor.model_best, "score_val"].iloc[0])
        oof_pred += _to_counts(predictor.predict_oof(), log_space)
        test_pred += _to_counts(predictor.predict(x_test), log_space)
    seconds = time.perf_counter() - started
    settings = {k: v for k, v in settings.items() if k not in ("verbosity", "hyperparameters")}
    if jobs:  # trained on SageMaker: the jobs' names, instance, training and billable seconds
        settings["sagemaker_jobs"] = jobs
    cv, per_block = block_scores(train, oof_pred)
    return StageResult(stage, pd.concat(boards, ignore_index=True), best, scores, oof_pred, cv, per_block,
                       test_pred, seconds, settings)


def _autogluon_inputs(stage: Stage, train: pd.DataFrame, test: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    history = weather_history([train, test])  # inputs only: weather of every hour
    x_train, x_test = (make_features(f, stage.features, history) for f in (train, test))
    x_train["block"] = day_blocks(train["datetime"])
    return x_train, x_test


def _autogluon_targets(stage: Stage, config: Config) -> tuple[list[str], bool, float | None]:
    """The labels fitted (one predictor each), whether in log1p space, and each fit's time limit."""
    labels = ["casual", "registered"] if stage.target == "casual_registered" else ["count"]
    time_limit = None if config.budget is None else max(config.budget * stage.time_share / len(labels),
                                                        config.min_seconds)
    return labels, stage.target != "count", time_limit


@dataclass
class NestedCV:
    stage: str
    oof_prediction: np.ndarray  # `count` of every training hour, from a fit that never saw its block
    cv_rmsle: float
    block_rmsle: list[float]
    fit_seconds: float


def nested_block_cv(stage: Stage, train: pd.DataFrame, test: pd.DataFrame, *, config: Config, models_dir: Path,
                    verbosity: int = 0) -> NestedCV:
    """An honest block CV for an AutoGluon stage: for each block of days, the stage is fitted as it is
    for the test (same settings and time limit per fit, bagged over the remaining blocks) on the other
    blocks and predicts the held-out one, which no model, early stopping or ensemble weight has seen.
    Costs one stage fit per block; the run spends it on the AutoGluon stage that would be chosen."""
    x_train, _ = _autogluon_inputs(stage, train, test)
    labels, log_space, time_limit = _autogluon_targets(stage, config)
    blocks = x_train["block"].to_numpy()
    oof = np.zeros(len(train))
    started = time.perf_counter()
    for block in np.unique(blocks):
        held = blocks == block
        for label in labels:
            y = train.loc[~held, label].astype(float)
            path = models_dir / "nested" / stage.name / f"without_block_{block}" / label
            predictor, _ = _fit_one(label, x_train[~held].assign(**{label: np.log1p(y) if log_space else y}),
                                    path=path, time_limit=time_limit, stage=stage, config=config,
                                    verbosity=verbosity)
            oof[held] += _to_counts(predictor.predict(x_train[held]), log_space)
            shutil.rmtree(path, ignore_errors=True)  # only its predictions are kept
    cv, per_block = block_scores(train, oof)
    return NestedCV(stage.name, oof, cv, per_block, time.perf_counter() - started)


def autogluon_candidate(stage_results: list[StageResult]) -> StageResult | None:
    """The AutoGluon stage with the lowest (optimistic) block CV among AutoGluon stages: the one
    `nested_block_cv` scores honestly. None without one."""
    scored = [r for r in stage_results if not r.stage.libraries]
    return min(scored, key=lambda r: r.cv_rmsle) if scored else None


def fit_direct_stage(stage: Stage, train: pd.DataFrame, test: pd.DataFrame, *, config: Config,
                     cache: dict | None = None,
                     autogluon: tuple[StageResult, NestedCV] | None = None) -> StageResult:
    """LightGBM / CatBoost / XGBoost on log1p(casual) and log1p(registered), fitted per day block
    for out-of-fold predictions and on all days for the test; several libraries are blended with
    non-negative least-squares weights fitted on the out-of-fold predictions (`gbm.py`).
    `autogluon` (an AutoGluon stage and its nested block CV) adds a blend member: its nested
    out-of-fold predictions for the weights, its test predictions for the submission."""
    cache = {} if cache is None else cache
    history = weather_history([train, test])
    x_train, x_test = (gbm.as_matrix(make_features(f, stage.features, history)) for f in (train, test))
    y_log = {t: np.log1p(train[t].to_numpy(dtype=float)) for t in gbm.TARGETS}
    folds = block_folds(train)
    seeds = list(range(min(stage.seeds, config.max_seeds)))

    seconds, per_library, rows = 0.0, {}, []
    for library in stage.libraries:
        runs = []
        for seed in seeds:
            if (library, seed) not in cache:
                cache[library, seed] = gbm.fit_model(library, seed, x_train, y_log, folds, x_test,
                                                     rounds_scale=config.gbm_rounds, workers=config.workers)
            runs.append(cache[library, seed])
        seconds += sum(r.seconds for r in runs)
        per_library[library] = gbm.seed_average(runs)
    y_count = np.log1p(train["count"].to_numpy(dtype=float))
    oof_log = np.column_stack([gbm.log_count(p["oof"]) for p in per_library.values()])
    test_log = np.column_stack([gbm.log_count(p["test"]) for p in per_library.values()])
    members = list(stage.libraries)
    if autogluon is not None:
        ag_result, nested = autogluon
        members.append(f"AutoGluon {ag_result.stage.name}")
        oof_log = np.column_stack([oof_log, np.log1p(nested.oof_prediction)])
        test_log = np.column_stack([test_log, np.log1p(ag_result.test_prediction)])
        seconds += nested.fit_seconds
    if len(members) > 1:
        weights = gbm.blend_weights(oof_log, y_count)
        oof_blend = gbm.cross_fitted_blend(oof_log, y_count, folds)
    else:
        weights, oof_blend = np.ones(1), oof_log[:, 0]
    for i, library in enumerate(stage.libraries):
        oof_counts = np.expm1(oof_log[:, i])
        rows.append({"model": library, "seeds": len(seeds), "block CV RMSLE": rmsle(train["count"], oof_counts),
                     "blend weight": float(weights[i]),
                     "fit seconds": sum(cache[library, s].seconds for s in seeds)})
    if autogluon is not None:
        rows.append({"model": f"{members[-1]} (nested out of fold)", "seeds": 1, "block CV RMSLE": nested.cv_rmsle,
                     "blend weight": float(weights[-1]), "fit seconds": nested.fit_seconds})
    oof_pred = np.clip(np.expm1(oof_blend), 0, None)
    test_pred = np.clip(np.expm1(test_log @ weights), 0, None)
    cv, per_block = block_scores(train, oof_pred)
    blend = " + ".join(f"{w:.2f} {lib}" for lib, w in zip(members, weights))
    settings = {lib: {k: v for k, v in gbm.params(lib, 0, config.gbm_rounds).items()
                      if k not in ("random_state", "random_seed", "verbose", "allow_writing_files")}
                for lib in stage.libraries}
    settings["seeds"] = seeds
    return StageResult(stage, pd.DataFrame(rows), {"count": blend}, {}, oof_pred, cv, per_block, test_pred,
                       seconds, settings, nested=None if autogluon is None else autogluon[1])


def _to_counts(prediction: pd.Series, log_space: bool) -> np.ndarray:
    """Back to bike counts; negative predictions are clipped to 0 (as the seed did)."""
    values = prediction.to_numpy(dtype=float)
    return np.clip(np.expm1(values) if log_space else values, 0, None)
