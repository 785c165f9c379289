"""Small Kaggle- and UCI-format bike data written by the tests themselves."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd


def uci_hour(days: int = 31, months: tuple[int, ...] = (1, 2), seed: int = 0) -> pd.DataFrame:
    """A UCI hour.csv-like frame: `days` days of every month in `months` of 2011, 24 hours each."""
    rng = np.random.default_rng(seed)
    stamps = [pd.Timestamp(2011, m, d, h) for m in months for d in range(1, days + 1)
              if d <= pd.Timestamp(2011, m, 1).days_in_month for h in range(24)]
    n = len(stamps)
    hours = np.array([s.hour for s in stamps])
    workday = np.array([int(s.dayofweek < 5) for s in stamps])
    casual = rng.poisson(5 + 20 * (1 - workday) * ((hours > 10) & (hours < 18)))
    registered = rng.poisson(20 + 150 * workday * np.isin(hours, [8, 17, 18]) + 30 * ((hours > 6) & (hours < 22)))
    return pd.DataFrame({
        "instant": np.arange(1, n + 1),
        "dteday": [s.strftime("%Y-%m-%d") for s in stamps],
        "season": [1] * n, "yr": [0] * n, "mnth": [s.month for s in stamps], "hr": hours,
        "holiday": [0] * n, "weekday": [(s.dayofweek + 1) % 7 for s in stamps], "workingday": workday,
        "weathersit": rng.integers(1, 4, n),
        "temp": np.round(rng.uniform(0.02, 1.0, n), 2), "atemp": np.round(rng.uniform(0, 1.0, n), 4),
        "hum": np.round(rng.uniform(0, 1.0, n), 2), "windspeed": np.round(rng.choice([0, 0.0896, 0.3881], n), 4),
        "casual": casual, "registered": registered, "cnt": casual + registered,
    })


def write_kaggle_dir(folder: Path, hour: pd.DataFrame | None = None) -> Path:
    """Kaggle-format train/test/sampleSubmission.csv in `folder/bike_sharing`, from a UCI-like frame."""
    from bike_sharing_autogluon.src.data import kaggle_files_from_uci

    target = folder / "bike_sharing"
    target.mkdir(parents=True, exist_ok=True)
    for name, text in kaggle_files_from_uci(uci_hour() if hour is None else hour).items():
        (target / name).write_text(text)
    return target
