"""Feature sets, from the seed's raw columns to the time features that matter for demand.

Demand is driven by the clock: commuters (registered riders) peak at 8:00 and 17:00-18:00 on
working days, leisure riders (casual) around midday on weekends, and the system grew from
2011 to 2012. The richer feature set spells those patterns out so trees need fewer splits.
`casual` and `registered` are targets, never inputs: they sum to `count`.
"""
from __future__ import annotations

import pandas as pd

from bike_sharing_autogluon.src.data import FEATURES, TARGETS

FEATURE_SETS = ("raw", "seed", "rich")
CATEGORICAL = ["season", "weather"]


def make_features(frame: pd.DataFrame, feature_set: str) -> pd.DataFrame:
    """Model inputs for one of FEATURE_SETS; the target columns are never included.

    - raw: the competition's columns as they are (the seed's first run).
    - seed: + `hour`, and `season`/`weather` as categories (the seed's second run).
    - rich: + year, month, day of week, a trend in days since the start, rush-hour flags and
      hour-by-working-day interactions; the datetime itself is dropped (its parts remain).
    """
    if feature_set not in FEATURE_SETS:
        raise ValueError(f"unknown feature set {feature_set!r}; choose from {FEATURE_SETS}")
    missing = [c for c in FEATURES if c not in frame.columns]
    if missing:
        raise ValueError(f"missing input column(s) {missing} for feature set {feature_set!r}")
    out = frame[FEATURES].copy()
    if feature_set == "raw":
        return out
    stamp = out["datetime"].dt
    out["hour"] = stamp.hour
    for column in CATEGORICAL:
        out[column] = out[column].astype("category")
    if feature_set == "seed":
        return out
    out["year"] = stamp.year
    out["month"] = stamp.month
    out["dayofweek"] = stamp.dayofweek
    out["days_since_start"] = (out["datetime"] - pd.Timestamp("2011-01-01")).dt.days
    working = out["workingday"].astype(bool)
    out["rush_hour"] = (working & out["hour"].isin([7, 8, 9, 16, 17, 18, 19])).astype(int)
    out["leisure_hour"] = (~working & out["hour"].between(10, 19)).astype(int)
    out["hour_workingday"] = (out["hour"].astype(str).str.zfill(2) + "_" + out["workingday"].astype(int).astype(str)).astype("category")
    out["feels_like_gap"] = out["atemp"] - out["temp"]
    return out.drop(columns="datetime")


def targets(frame: pd.DataFrame) -> pd.DataFrame:
    """The three target columns of the training file."""
    missing = [c for c in TARGETS if c not in frame.columns]
    if missing:
        raise ValueError(f"missing target column(s) {missing}")
    return frame[TARGETS]
