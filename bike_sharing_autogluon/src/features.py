"""Feature sets, from the seed's raw columns to the time features that matter for demand.

Demand is driven by the clock: commuters (registered riders) peak at 8:00 and 17:00-18:00 on
working days, leisure riders (casual) around midday on weekends, and the system grew from
2011 to 2012. The `time` feature set spells those patterns out.
Weather has a memory the current hour's reading misses: people who got wet an hour ago, or
see rain coming, stay off bikes. `weather_history` reads it from the inputs of neighbouring
hours (train and test interleave within each month, so the whole timeline is known); it never
uses counts.
`casual` and `registered` are targets, never inputs: they sum to `count`.
"""
from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from bike_sharing_autogluon.src.data import FEATURES

FEATURE_SETS = ("raw", "seed", "time", "weather")
CATEGORICAL = ["season", "weather"]


def weather_history(frames: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """Weather of the hours around each hour, indexed by datetime, from the input columns of
    `frames` (pass train and test together so the hours around each day are known)."""
    timeline = pd.concat([f[FEATURES] for f in frames]).drop_duplicates("datetime").set_index("datetime").sort_index()
    hourly = timeline.reindex(pd.date_range(timeline.index.min(), timeline.index.max(), freq="h"))
    rain = (hourly["weather"] >= 3).astype(float).where(hourly["weather"].notna())
    history = pd.DataFrame({
        "weather_prev_1h": hourly["weather"].shift(1),
        "weather_worst_prev_3h": hourly["weather"].shift(1).rolling(3, min_periods=1).max(),
        "rain_hours_prev_6h": rain.shift(1).rolling(6, min_periods=1).sum(),
        "temp_change_3h": hourly["temp"] - hourly["temp"].shift(3),
        "humidity_prev_1h": hourly["humidity"].shift(1),
    }, index=hourly.index)
    return history.loc[timeline.index]


def make_features(frame: pd.DataFrame, feature_set: str, history: pd.DataFrame | None = None) -> pd.DataFrame:
    """Model inputs for one of FEATURE_SETS; the target columns are never included.

    - raw: the competition's columns as they are (the seed's first run).
    - seed: + `hour`, and `season`/`weather` as categories (the seed's second run).
    - time: + year, month, day of week, a trend (days since the start), a rush-hour flag and
      an hour-by-working-day code.
    - weather: seed + year, month, day of week, trend, and the weather history
      (`weather_history`, from `frame` alone unless the whole timeline's `history` is passed).
      The rush-hour and hour-by-working-day features are left out: the `time_features`
      stage shows they do not help the validation score.
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
    if feature_set == "time":
        # one ordered code, 0-23 for weekend/holiday hours and 24-47 for working-day hours
        out["hour_workingday"] = out["hour"] + 24 * out["workingday"].astype(int)
        out["rush_hour"] = (out["workingday"].astype(bool) & out["hour"].isin([7, 8, 17, 18, 19])).astype(int)
        return out
    history = weather_history([frame]) if history is None else history
    missing = ~out["datetime"].isin(history.index)
    if missing.any():
        raise ValueError(f"weather history lacks {int(missing.sum())} hour(s), first {out['datetime'][missing].iloc[0]}")
    return out.join(history, on="datetime")
