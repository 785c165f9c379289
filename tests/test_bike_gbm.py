"""The direct models and their blend: weights, out-of-fold discipline, a tiny stage fit, the results table."""
from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest

from bike_sharing_autogluon.src import data, gbm, results, submission, train
from bike_sharing_autogluon.src.config import PROFILES
from tests.bike_fixtures import uci_hour


def test_blend_weights_are_non_negative_least_squares():
    rng = np.random.default_rng(0)
    y = rng.normal(5, 1, 500)
    error = rng.normal(0, 0.5, 500)
    # unconstrained least squares would fit y = model - its_error exactly, weighting the second column -1
    weights = gbm.blend_weights(np.column_stack([y + error, error]), y)
    unconstrained = np.linalg.lstsq(np.column_stack([y + error, error]), y, rcond=None)[0]
    assert unconstrained[1] == pytest.approx(-1) and weights[1] == 0 and (weights >= 0).all()
    exact = gbm.blend_weights(np.column_stack([y, y + 1]), 0.3 * y + 0.7 * (y + 1))
    np.testing.assert_allclose(exact, [0.3, 0.7], atol=1e-8)


def test_blend_weights_refuse_missing_out_of_fold_predictions():
    with pytest.raises(ValueError, match="every hour needs an out-of-fold prediction"):
        gbm.blend_weights(np.array([[1.0], [np.nan]]), np.array([1.0, 2.0]))
    with pytest.raises(ValueError, match="hours x models with 3 rows"):
        gbm.blend_weights(np.ones((2, 2)), np.ones(3))


def test_cross_fitted_blend_never_fits_weights_on_the_hours_it_scores():
    """Each fold is blended with weights from the other folds: changing a fold's truth cannot change it."""
    rng = np.random.default_rng(1)
    oof = rng.normal(5, 1, (40, 2))
    y = oof @ [0.2, 0.8]
    folds = [(np.arange(20, 40), np.arange(20)), (np.arange(20), np.arange(20, 40))]
    before = gbm.cross_fitted_blend(oof, y, folds)
    changed = y.copy()
    changed[:20] = oof[:20] @ [0.9, 0.1]
    after = gbm.cross_fitted_blend(oof, changed, folds)
    np.testing.assert_allclose(after[:20], before[:20])  # fold 1 uses weights fitted on fold 2 only
    assert not np.allclose(after[20:], before[20:])
    np.testing.assert_allclose(before, y, atol=1e-8)


def test_log_count_sums_the_parts_in_bike_counts():
    parts = {"casual": np.log1p([3.0, 0.0]), "registered": np.log1p([7.0, -0.5])}
    np.testing.assert_allclose(gbm.log_count(parts), np.log1p([10.0, 0.0]))


def test_models_use_one_thread():
    for library in gbm.LIBRARIES:
        kwargs = gbm.params(library, 0)
        assert kwargs.get("n_jobs", kwargs.get("thread_count")) == 1, library
    with pytest.raises(ValueError, match="unknown library 'gbdt'"):
        gbm.params("gbdt", 0)


@pytest.fixture(scope="module")
def kaggle_frames():
    texts = data.kaggle_files_from_uci(uci_hour(months=(1, 2)))
    frames = {name: data.check_frame(pd.read_csv(io.StringIO(t), dtype=str, keep_default_na=False), name, "fixture")
              for name, t in texts.items()}
    return frames["train.csv"], frames["test.csv"], frames["sampleSubmission.csv"]


def test_direct_stages_score_out_of_fold_blend_and_share_models(kaggle_frames, tmp_path):
    fit, test, sample = kaggle_frames
    stages = {s.name: s for s in train.STAGES}
    cache: dict = {}
    tiny = PROFILES["tiny"]
    blend = train.fit_stage(stages["gbm_blend"], fit, test, config=tiny, models_dir=tmp_path, cache=cache)
    assert set(cache) == {(lib, 0) for lib in gbm.LIBRARIES}
    first_runs = dict(cache)
    averaged = train.fit_stage(stages["seed_average"], fit, test, config=tiny, models_dir=tmp_path, cache=cache)
    assert all(cache[key] is run for key, run in first_runs.items())  # seed 0 reused, not refitted
    assert len(cache) == 2 * len(gbm.LIBRARIES)  # tiny caps seeds at 2
    for result in (blend, averaged):
        assert result.oof_prediction.shape == (len(fit),) and np.isfinite(result.oof_prediction).all()
        assert result.test_prediction.shape == (len(test),) and (result.test_prediction >= 0).all()
        assert (result.leaderboard["blend weight"] >= 0).all()
        assert len(result.block_rmsle) == 4 and result.valid_rmsle == result.block_rmsle[3]
        assert 0 < result.cv_rmsle < 2
    path = submission.write_submission(averaged.test_prediction, sample, tmp_path / submission.SUBMISSION_FILE)
    assert path.name == "submission.csv"
    lines = path.read_text().splitlines()
    assert lines[0] == "datetime,count" and len(lines) == len(test) + 1
    assert [line.split(",")[0] for line in lines[1:]] == list(sample["datetime"].dt.strftime("%Y-%m-%d %H:%M:%S"))


def _table(covered):
    return pd.DataFrame([
        {"stage": "a", "what changed": "x", "settings": "", "best model(s)": "", results.CV: 0.31, results.OLD: 0.28,
         results.kaggle_label(covered): 0.40, "fit seconds": 1.0},
        {"stage": "b", "what changed": "y", "settings": "", "best model(s)": "", results.CV: 0.30, results.OLD: 0.29,
         results.kaggle_label(covered): 0.39, "fit seconds": 2.0},
        {"stage": "c", "what changed": "z", "settings": "", "best model(s)": "", results.CV: 0.32, results.OLD: 0.27,
         results.kaggle_label(covered): 0.38, "fit seconds": 3.0},
    ])


def test_metrics_select_by_block_cv_and_name_the_hours_scored():
    test = pd.DataFrame({"datetime": pd.to_datetime(["2011-01-20", "2011-01-21", "2012-01-20"])})
    truth_2011 = pd.Series([1, 2], index=pd.DatetimeIndex(test["datetime"][:2]))
    covered = results.hours_covered(test, truth_2011)
    assert covered == "2 of 3 test hours: 2011 only"
    assert results.hours_covered(test, pd.Series(1, index=pd.DatetimeIndex(test["datetime"]))) == "all 3 test hours"
    metrics = results.build_metrics(profile="tiny", data=results.DataUsed("src", False, "ISLP", covered),
                                    table=_table(covered), eda_findings={}, figures=[],
                                    submission_file="submission.csv")
    summary = metrics["summary"]
    # "c" has the best Kaggle-equivalent and the best old split, but block CV chooses, and it says "b"
    assert summary["selected stage (lowest block CV RMSLE)"] == "b"
    kaggle_lines = [k for k in summary if "Kaggle-equivalent" in k] + [
        c for c in metrics["tables"][0]["columns"] if "Kaggle-equivalent" in c]
    assert kaggle_lines and all("2 of 3 test hours: 2011 only" in line for line in kaggle_lines)
    assert summary["gap: Kaggle-equivalent minus block CV (2 of 3 test hours: 2011 only)"] == pytest.approx(0.09)
    assert metrics["data"]["note"] == "Kaggle-equivalent RMSLE uses ISLP: 2 of 3 test hours: 2011 only."
    assert [row["stage"] for row in metrics["stages"]] == ["a", "b", "c"]
    assert "settings" not in metrics["tables"][0]["columns"]
    assert metrics["headline"]["value"] == "0.3900 Kaggle-equivalent (2 of 3 test hours: 2011 only); block CV 0.3000 (`b`)"


def test_event_breakdown_splits_the_known_hours_into_ordinary_and_extraordinary_days():
    # Hurricane Irene (2011-08-27) is extraordinary; 2011-08-20 is ordinary; 2012-08-20 has no known count.
    test = pd.DataFrame({"datetime": pd.to_datetime(["2011-08-20 08:00", "2011-08-20 09:00", "2011-08-27 08:00",
                                                     "2012-08-20 08:00"])})
    truth = pd.Series([100.0, 100.0, 10.0], index=pd.DatetimeIndex(test["datetime"][:3]))
    good_on_storm = np.array([np.expm1(np.log1p(100) + 0.1), 100.0, 10.0, 5.0])
    bad_on_storm = np.array([100.0, 100.0, np.expm1(np.log1p(10) + 1.0), 5.0])
    events = results.event_breakdown({"a": good_on_storm, "b": bad_on_storm}, test, truth)
    assert events.attrs["hours"] == (2, 1)
    a, b = events.set_index("stage").to_dict("index").values()
    assert a[results.ORDINARY] == pytest.approx(np.sqrt(0.01 / 2), abs=1e-4) and a[results.EXTRAORDINARY] == 0
    assert b[results.ORDINARY] == 0 and b[results.EXTRAORDINARY] == pytest.approx(1.0, abs=1e-4)
    assert a["extraordinary share of squared error"] == 0 and b["extraordinary share of squared error"] == 1
    assert results.event_breakdown({"a": good_on_storm}, test, None) is None

    covered = results.hours_covered(test, truth)
    table = pd.DataFrame(_table(covered)).assign(stage=["a", "b", "c"])
    metrics = results.build_metrics(profile="tiny", data=results.DataUsed("src", False, "UCI", covered),
                                    table=table, eda_findings={}, figures=[],
                                    submission_file="submission.csv", events=events)
    summary = metrics["summary"]  # "b" is selected: its ordinary days are perfect, the storm is all its error
    assert summary["its RMSLE, ordinary days (2 of the known test hours)"] == 0
    assert summary["share of its squared log error on the extraordinary days"] == 1
    assert summary["gap on ordinary days: their RMSLE minus block CV"] == pytest.approx(-0.30)
    assert metrics["tables"][1]["title"].startswith("Where the test error is")


def test_metrics_without_true_counts_say_so():
    covered = "none of the 3 test hours (no true counts here)"
    table = _table(covered).assign(**{results.kaggle_label(covered): None})
    metrics = results.build_metrics(profile="tiny", data=results.DataUsed("src", True, "", covered),
                                    table=table, eda_findings={}, figures=[], submission_file="submission.csv")
    assert metrics["data"]["note"].startswith("No true test counts here")
    assert not any(k.startswith("gap") for k in metrics["summary"])


def test_parallel_fits_give_the_same_predictions(kaggle_frames):
    """Workers change where models are fitted, not what they predict (one thread each, fixed seeds)."""
    fit, test, _ = kaggle_frames
    x = gbm.as_matrix(fit[data.FEATURES])
    x_test = gbm.as_matrix(test[data.FEATURES])
    y = {"registered": np.log1p(fit["registered"].to_numpy(dtype=float))}
    folds = data.block_folds(fit)
    one, two = (gbm.fit_model("lightgbm", 0, x, y, folds, x_test, rounds_scale=0.02, workers=w) for w in (1, 2))
    np.testing.assert_allclose(one.oof["registered"], two.oof["registered"])
    np.testing.assert_allclose(one.test["registered"], two.test["registered"])
    assert np.isfinite(one.oof["registered"]).all()


def test_selection_uses_honest_scores_only():
    """AutoGluon's own block CV is optimistic: a stage with only that score is never selected; the nested
    score stands in for the stage that has one, and the summary states AutoGluon's optimism."""
    covered = "2 of 3 test hours: 2011 only"
    table = _table(covered)
    table[results.SELECT] = [0.315, None, 0.32]  # "b" (the lowest own block CV) has no honest score
    metrics = results.build_metrics(profile="tiny", data=results.DataUsed("src", False, "ISLP", covered),
                                    table=table, eda_findings={}, figures=[], submission_file="submission.csv",
                                    nested=train_nested("a", 0.315))
    summary = metrics["summary"]
    assert summary["selected stage (lowest block CV RMSLE)"] == "a"
    assert summary[f"its {results.SELECT}"] == 0.315
    assert summary["AutoGluon's optimism: a's own block CV minus its nested one"] == pytest.approx(-0.005)
    assert summary["gap: Kaggle-equivalent minus block CV (2 of 3 test hours: 2011 only)"] == pytest.approx(0.085)


def train_nested(stage, cv):
    from bike_sharing_autogluon.src.train import NestedCV

    return NestedCV(stage, np.zeros(3), cv, [cv] * 4, 1.0)


def test_honest_cv_is_the_direct_models_own_and_autogluons_nested():
    from bike_sharing_autogluon.src import train

    stages = {s.name: s for s in train.STAGES}

    class Result:
        def __init__(self, stage):
            self.stage, self.cv_rmsle = stage, 0.3

    assert results.honest_cv(Result(stages["gbm_blend"])) == 0.3
    assert results.honest_cv(Result(stages["best_quality"])) is None
    assert results.honest_cv(Result(stages["best_quality"]), train_nested("best_quality", 0.31)) == 0.31
    assert results.honest_cv(Result(stages["weather_history"]), train_nested("best_quality", 0.31)) is None


def test_autogluon_blend_weighs_the_nested_predictions_of_the_best_autogluon_stage(kaggle_frames, tmp_path,
                                                                                    monkeypatch):
    """The last stage scores AutoGluon's best stage by nested block CV and blends those predictions in:
    an AutoGluon member that predicts the training hours perfectly out of fold takes the whole weight,
    and its test predictions are what the stage submits."""
    fit, test, _ = kaggle_frames
    stages = {s.name: s for s in train.STAGES}
    truth = fit["count"].to_numpy(dtype=float)

    def fake_result(name, cv, test_value):
        return train.StageResult(stages[name], pd.DataFrame(), {}, {}, truth, cv, [cv] * 4,
                                 np.full(len(test), test_value), 1.0)

    previous = [fake_result("weather_history", 0.30, 50.0), fake_result("best_quality", 0.31, 70.0)]
    calls = []

    def fake_nested(stage, *args, **kwargs):
        calls.append(stage.name)
        return train.NestedCV(stage.name, truth, 0.0, [0.0] * 4, 2.0)

    monkeypatch.setattr(train, "nested_block_cv", fake_nested)
    result = train.fit_stage(stages["autogluon_blend"], fit, test, config=PROFILES["tiny"], models_dir=tmp_path,
                             previous=previous)
    assert calls == ["weather_history"]  # the AutoGluon stage with the lowest own block CV
    assert result.nested.stage == "weather_history"
    board = result.leaderboard.set_index("model")
    assert board.loc["AutoGluon weather_history (nested out of fold)", "blend weight"] == pytest.approx(1, abs=0.02)
    assert np.allclose(result.test_prediction, 50.0, rtol=0.05)
    assert result.cv_rmsle < 0.05 and results.honest_cv(result) == result.cv_rmsle
    with pytest.raises(ValueError, match="autogluon_blend.*AutoGluon"):
        train.fit_stage(stages["autogluon_blend"], fit, test, config=PROFILES["tiny"], models_dir=tmp_path,
                        previous=[])


def test_profiles_are_named_frozen_configs_with_the_budgets_of_record():
    import dataclasses

    from common.profiles import NAMES, choose

    assert tuple(PROFILES) == NAMES and choose(PROFILES, "full") is PROFILES["full"]
    full, quick, tiny = PROFILES["full"], PROFILES["quick"], PROFILES["tiny"]
    assert (full.budget, full.trials, full.min_seconds, full.gbm_rounds, full.max_seeds, full.workers) == (
        360, 10, 30, 1.0, 3, 1)
    stages = {s.name: s for s in train.STAGES}
    # AutoGluon's time limit per fit: the stage's share of the budget per target, at least min_seconds
    assert train._autogluon_targets(stages["best_quality"], full) == (["casual", "registered"], True, 360 * 0.28 / 2)
    assert train._autogluon_targets(stages["initial"], quick) == (["count"], False, 20)  # 150 x 0.08 = 12 < 20
    assert train._autogluon_targets(stages["initial"], tiny)[2] is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        full.budget = 1  # a variant is dataclasses.replace(config, ...), never an edit
    with pytest.raises(ValueError, match="unknown profile 'huge'"):
        choose(PROFILES, "huge")
