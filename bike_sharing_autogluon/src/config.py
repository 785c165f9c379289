"""What a run spends: one frozen `Config`, its profiles `tiny`, `quick` and `full` as named instances.

The notebook picks one with `common.profiles.choose(PROFILES, PROFILE)` and hands it to
`train.fit_stage` (and through it to every fit); no function takes the budgets one by one.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Config:
    # seconds of AutoGluon fitting over all its stages (split by each stage's time_share, then per
    # target); None: no time limit (tiny: the models are small, and a limit could starve them on a busy machine)
    budget: float | None
    hyperparameters: dict[str, dict[str, Any]] | None  # AutoGluon's model families and their settings
    trials: int              # hyperparameter search trials per family (the hpo stage)
    gbm_rounds: float        # scales the direct models' trees (gbm.params' rounds_scale)
    max_seeds: int           # caps the seeds of seed_average
    # processes fitting direct models side by side (one thread each). 1: on the busy shared cores of the
    # run of record, two workers were slower than one (XGBoost, 10 fits: 27-43 s vs 24 s).
    workers: int = 1
    min_seconds: float = 0   # the least time limit of one AutoGluon fit (when there is a budget)
    # TRAIN_ON="sagemaker": a cloud.CloudFit, and each AutoGluon fit runs as a SageMaker training job
    # (the notebook sets it with dataclasses.replace); None: every fit in this process
    cloud: Any = None


TINY = Config(budget=None, hyperparameters={"GBM": {"num_boost_round": 60}}, trials=2, gbm_rounds=0.03,
              max_seeds=2, workers=1)
# quick: the three boosting libraries only; the neural net and k-NN cost minutes
QUICK = Config(budget=150, hyperparameters={"GBM": {}, "CAT": {}, "XGB": {}}, trials=4, gbm_rounds=0.4,
               max_seeds=2, workers=1, min_seconds=20)
# full: the boosting libraries too. With every stage bagged over four blocks, AutoGluon's default
# zoo (k-NN, random forests, the neural net) overran its time limits on busy shared cores, and a
# limit too short for one bagged model fails the stage ("No models were trained"): hence min_seconds.
FULL = Config(budget=360, hyperparameters={"GBM": {}, "CAT": {}, "XGB": {}}, trials=10, gbm_rounds=1.0,
              max_seeds=3, workers=1, min_seconds=30)

PROFILES = {"tiny": TINY, "quick": QUICK, "full": FULL}
