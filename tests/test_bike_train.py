"""Tiny AutoGluon fits (seconds) on generated hours, and the notebook end to end in the tiny profile."""
from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest

from bike_sharing_autogluon.src import data, train
from bike_sharing_autogluon.src.config import PROFILES
from tests.bike_fixtures import uci_hour

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def kaggle_frames():
    texts = data.kaggle_files_from_uci(uci_hour(months=(1, 2, 3)))
    frames = {name: data.check_frame(pd.read_csv(io.StringIO(t), dtype=str, keep_default_na=False), name, "fixture")
              for name, t in texts.items()}
    return frames["train.csv"], frames["test.csv"]


@pytest.mark.parametrize("stage_name", ["initial", "weather_history"])
def test_stage_fits_scores_and_predicts_non_negative_counts(kaggle_frames, stage_name, tmp_path):
    fit, test = kaggle_frames
    stage = next(s for s in train.STAGES if s.name == stage_name)
    result = train.fit_stage(stage, fit, test, config=PROFILES["tiny"], models_dir=tmp_path)
    labels = ["casual", "registered"] if stage_name == "weather_history" else ["count"]
    assert list(result.best_models) == labels and set(result.leaderboard["target"]) == set(labels)
    assert result.test_prediction.shape == (len(test),) and (result.test_prediction >= 0).all()
    assert result.oof_prediction.shape == (len(fit),) and np.isfinite(result.oof_prediction).all()
    assert 0 < result.cv_rmsle < 2 and 0 < result.valid_rmsle < 2 and result.fit_seconds > 0
    assert result.valid_rmsle == result.block_rmsle[3]  # days 15-19, the old split
    # bagged over the four day blocks: every base model of the test predictor is four fold models
    # that together saw all 19 days, and the block column is no feature
    for predictor in _predictors(tmp_path / stage_name, labels):
        base = [m for m in predictor.model_names() if "WeightedEnsemble" not in m]
        assert base and all(predictor._trainer.load_model(m).n_children == 4 for m in base)
        assert "block" not in predictor.features()


def _predictors(folder, labels):
    from autogluon.tabular import TabularPredictor

    return [TabularPredictor.load(str(folder / label)) for label in labels]


def test_log_target_beats_raw_count_on_rmsle(kaggle_frames, tmp_path):
    """The point of stage 4: fitting log1p(count) optimises the competition's metric directly."""
    fit, test = kaggle_frames
    stages = {s.name: s for s in train.STAGES}
    raw = train.fit_stage(stages["add_features"], fit, test, config=PROFILES["tiny"], models_dir=tmp_path)
    logged = train.fit_stage(stages["log_target"], fit, test, config=PROFILES["tiny"], models_dir=tmp_path)
    assert logged.cv_rmsle < raw.cv_rmsle
    assert np.isfinite(logged.test_prediction).all()


def test_nested_block_cv_never_fits_on_the_block_it_scores(kaggle_frames, tmp_path, monkeypatch):
    """Each held-out block is predicted by predictors fitted on the other blocks only, bagged over those."""
    fit, test = kaggle_frames
    stage = next(s for s in train.STAGES if s.name == "weather_history")
    seen = []

    class Constant:
        def __init__(self, label, rows):
            self.value = float(np.mean(rows[label]))

        def predict(self, rows):
            return pd.Series(self.value, index=rows.index)

    def fake_fit_one(label, rows, **kwargs):
        seen.append((label, set(rows["block"])))
        return Constant(label, rows), {}

    monkeypatch.setattr(train, "_fit_one", fake_fit_one)
    nested = train.nested_block_cv(stage, fit, test, config=PROFILES["tiny"], models_dir=tmp_path)
    assert [(label, blocks) for label, blocks in seen] == [
        (label, {0, 1, 2, 3} - {held}) for held in range(4) for label in ("casual", "registered")]
    assert nested.stage == "weather_history" and nested.oof_prediction.shape == (len(fit),)
    assert (nested.oof_prediction > 0).all() and len(nested.block_rmsle) == 4 and 0 < nested.cv_rmsle < 3


def test_nested_block_cv_with_autogluon_scores_every_hour(kaggle_frames, tmp_path):
    fit, test = kaggle_frames
    stage = next(s for s in train.STAGES if s.name == "log_target")
    nested = train.nested_block_cv(stage, fit, test, config=PROFILES["tiny"], models_dir=tmp_path)
    assert np.isfinite(nested.oof_prediction).all() and (nested.oof_prediction >= 0).all()
    assert 0 < nested.cv_rmsle < 2 and nested.fit_seconds > 0
    assert not any((tmp_path / "nested").rglob("*.pkl"))  # only the predictions are kept
