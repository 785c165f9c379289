from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bike_sharing_autogluon.src import data, submission
from tests.bike_fixtures import write_kaggle_dir


@pytest.fixture()
def kaggle(tmp_path):
    return data.read_kaggle_dir(write_kaggle_dir(tmp_path / "in"))


def test_written_submission_is_what_kaggle_expects(kaggle, tmp_path):
    _, test, sample = kaggle
    path = submission.write_submission(np.arange(len(test), dtype=float), sample, tmp_path / "sub.csv")
    lines = path.read_text().splitlines()
    assert lines[0] == "datetime,count" and len(lines) == len(test) + 1
    assert lines[1] == "2011-01-20 00:00:00,0.0000"
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.parametrize("broken, message", [
    (lambda s: s.rename(columns={"count": "cnt"}), "header must be datetime,count, got datetime,cnt"),
    (lambda s: s.iloc[:-1], r"\d+ rows, the sample submission has \d+"),
    (lambda s: s.iloc[::-1].reset_index(drop=True), r"'datetime' line 2 .*rows must follow test.csv"),
    (lambda s: s.assign(count=s["count"].where(s.index != 3)), r"'count' has 1 missing or non-numeric value\(s\), first on line 5"),
    (lambda s: s.assign(count=s["count"].where(s.index != 0, -1.0)), r"'count' has 1 negative value\(s\), first on line 2"),
    (lambda s: s.assign(count=s["count"].where(s.index != 0, np.inf)), r"'count' has infinite values"),
])
def test_bad_submissions_are_refused(kaggle, broken, message):
    _, _, sample = kaggle
    good = pd.DataFrame({"datetime": sample["datetime"].dt.strftime("%Y-%m-%d %H:%M:%S"), "count": 1.0})
    submission.validate_submission(good, sample)
    with pytest.raises(ValueError, match=message):
        submission.validate_submission(broken(good), sample)


def test_nothing_is_written_when_predictions_are_bad(kaggle, tmp_path):
    _, test, sample = kaggle
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="negative"):
        submission.write_submission(np.full(len(test), -1.0), sample, out / "sub.csv")
    assert not out.exists() or not list(out.iterdir())


def test_kaggle_equivalent_rmsle_scores_known_hours_only(kaggle):
    _, test, _ = kaggle
    truth = pd.Series(10, index=pd.DatetimeIndex(test["datetime"][:48]))
    score, hours = submission.kaggle_equivalent_rmsle(np.full(len(test), 10.0), test, truth)
    assert (score, hours) == (0.0, 48)
    score, _ = submission.kaggle_equivalent_rmsle(np.full(len(test), np.e * 11 - 1), test, truth)
    assert score == pytest.approx(1.0)
    assert submission.kaggle_equivalent_rmsle(np.zeros(len(test)), test, None) == (None, 0)


def test_submit_is_skipped_without_credentials(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("KAGGLE_USERNAME", raising=False)
    monkeypatch.delenv("KAGGLE_KEY", raising=False)
    assert submission.submit_to_kaggle(tmp_path / "sub.csv", "stage") is False
