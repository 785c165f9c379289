from __future__ import annotations

import io

import pandas as pd
import pytest

from bike_sharing_autogluon.src import data
from bike_sharing_autogluon.src.features import FEATURE_SETS, make_features, weather_history
from tests.bike_fixtures import uci_hour


@pytest.fixture(scope="module")
def train() -> pd.DataFrame:
    text = data.kaggle_files_from_uci(uci_hour(months=(1,)))["train.csv"]
    return data.check_frame(pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False), "train.csv", "fixture")


@pytest.mark.parametrize("feature_set", FEATURE_SETS)
def test_targets_are_never_inputs(train, feature_set):
    features = make_features(train, feature_set)
    assert not set(data.TARGETS) & set(features.columns)
    assert len(features) == len(train)


def test_raw_is_the_competition_columns(train):
    assert list(make_features(train, "raw").columns) == data.FEATURES


def test_seed_adds_hour_and_categories(train):
    features = make_features(train, "seed")
    assert features["hour"].tolist()[:3] == [0, 1, 2]
    assert features["season"].dtype == "category" and features["weather"].dtype == "category"


def test_time_features(train):
    features = make_features(train, "time")
    row = features.iloc[8]  # 2011-01-01 08:00, a Saturday
    assert (row["year"], row["month"], row["dayofweek"], row["days_since_start"]) == (2011, 1, 5, 0)
    assert row["rush_hour"] == 0 and row["hour_workingday"] == 8
    monday_8am = features[(features["dayofweek"] == 0) & (features["hour"] == 8)].iloc[0]
    assert monday_8am["rush_hour"] == 1 and monday_8am["hour_workingday"] == 32
    assert features["days_since_start"].max() == 18


def test_weather_history_looks_back_across_train_and_test(train):
    frame = train.copy()
    frame["weather"] = 1
    frame.loc[frame["datetime"] == "2011-01-02 05:00", "weather"] = 3  # one rainy hour
    later = frame[frame["datetime"] > "2011-01-02 05:00"].iloc[:7]
    history = weather_history([frame[frame["datetime"] <= "2011-01-02 05:00"], later])  # two pieces, one timeline
    at = history.loc[pd.Timestamp("2011-01-02 06:00")]
    assert (at["weather_prev_1h"], at["weather_worst_prev_3h"], at["rain_hours_prev_6h"]) == (3, 3, 1)
    assert history.loc[pd.Timestamp("2011-01-02 09:00"), "weather_worst_prev_3h"] == 1
    assert history.loc[pd.Timestamp("2011-01-02 05:00"), "rain_hours_prev_6h"] == 0  # no peeking at the hour itself
    features = make_features(frame, "weather", history=weather_history([frame]))
    assert {"weather_prev_1h", "rain_hours_prev_6h", "temp_change_3h", "humidity_prev_1h"} <= set(features.columns)
    assert "hour_workingday" not in features.columns


def test_errors_name_the_problem(train):
    with pytest.raises(ValueError, match="unknown feature set 'fancy'"):
        make_features(train, "fancy")
    with pytest.raises(ValueError, match=r"missing input column\(s\) \['humidity'\]"):
        make_features(train.drop(columns="humidity"), "raw")
    with pytest.raises(ValueError, match=r"weather history lacks 456 hour\(s\)"):
        make_features(train, "weather", history=weather_history([train]).iloc[:0])
