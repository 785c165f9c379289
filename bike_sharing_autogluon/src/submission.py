"""Kaggle submission files: built, checked, then written (never half-written), and submitted."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

from bike_sharing_autogluon.src.data import COMPETITION, kaggle_credentials_available
from common import s3io
from common.metrics import rmsle

log = logging.getLogger(__name__)
HEADER = ["datetime", "count"]
SUBMISSION_FILE = "submission.csv"  # the selected stage's file, under the name Kaggle users expect


def validate_submission(submission: pd.DataFrame, sample: pd.DataFrame, where: str = "submission") -> None:
    """What Kaggle checks: header `datetime,count`, the sample's rows in its order, counts >= 0."""
    if list(submission.columns) != HEADER:
        raise ValueError(f"{where}: header must be {','.join(HEADER)}, got {','.join(map(str, submission.columns))}")
    if len(submission) != len(sample):
        raise ValueError(f"{where}: {len(submission)} rows, the sample submission has {len(sample)}")
    stamps = pd.to_datetime(submission["datetime"], errors="coerce")
    differs = (stamps.to_numpy() != pd.to_datetime(sample["datetime"]).to_numpy()).nonzero()[0]
    if len(differs):
        i = int(differs[0])
        raise ValueError(f"{where}: column 'datetime' line {i + 2} is {submission['datetime'].iloc[i]!r}, "
                         f"the sample submission has {sample['datetime'].iloc[i]} (rows must follow test.csv)")
    counts = pd.to_numeric(submission["count"], errors="coerce")
    if counts.isna().any():
        i = int(counts.isna().to_numpy().nonzero()[0][0])
        raise ValueError(f"{where}: column 'count' has {int(counts.isna().sum())} missing or non-numeric "
                         f"value(s), first on line {i + 2}")
    if not np.isfinite(counts.to_numpy()).all():
        raise ValueError(f"{where}: column 'count' has infinite values")
    if (counts < 0).any():
        i = int((counts < 0).to_numpy().nonzero()[0][0])
        raise ValueError(f"{where}: column 'count' has {int((counts < 0).sum())} negative value(s), "
                         f"first on line {i + 2}: {counts.iloc[i]}")


def write_submission(prediction, sample: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write predictions (in test.csv order) as a Kaggle submission, after validating them."""
    path = Path(path)
    submission = pd.DataFrame({"datetime": pd.to_datetime(sample["datetime"]).dt.strftime("%Y-%m-%d %H:%M:%S"),
                               "count": np.asarray(prediction, dtype=float)})
    validate_submission(submission, sample, str(path))
    s3io.write_csv(path, submission, float_format="%.4f")
    return path


def kaggle_equivalent_rmsle(prediction, test: pd.DataFrame, truth: pd.Series | None) -> tuple[float | None, int]:
    """RMSLE against the true counts of the test hours we know (all of them with UCI's hour.csv,
    the 2011 ones with ISLP's copy); returns (score, hours scored), (None, 0) without truth."""
    if truth is None:
        return None, 0
    predicted = pd.Series(np.asarray(prediction, dtype=float), index=pd.DatetimeIndex(test["datetime"]))
    known = predicted.index.isin(truth.index)
    if not known.any():
        return None, 0
    return rmsle(truth.loc[predicted.index[known]].to_numpy(), predicted[known].to_numpy()), int(known.sum())


def submit_to_kaggle(path: str | os.PathLike, message: str) -> bool:
    """`kaggle competitions submit -c bike-sharing-demand -f PATH -m MESSAGE`; skipped (False)
    without Kaggle credentials."""
    if not kaggle_credentials_available():
        log.info("no Kaggle credentials: %s not submitted", path)
        return False
    from kaggle.api.kaggle_api_extended import KaggleApi

    api = KaggleApi()
    api.authenticate()
    api.competition_submit(str(path), message, COMPETITION)
    return True
