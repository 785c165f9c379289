"""Fit time of the direct models with 1 and 2 threads, as medians over repeats and as ratios.

    DATA_DIR=../shared/data python -m bike_sharing_autogluon.benchmark [--repeats 3] [--rounds 0.2]

Each library (gbm.LIBRARIES) fits log1p(registered) on the weather_history features of all training
hours (the Kaggle files in DATA_DIR; generated hours without them), with the stage's parameters
scaled to `--rounds` of their trees. On shared cores OpenMP threads that wait for each other can make
two threads many times slower than one: that is why every model in src/train.py and src/gbm.py runs
with one thread. Shared machines are noisy: compare ratios, not absolutes; run it with the
OMP_WAIT_POLICY the run of record uses.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import pandas as pd

from bike_sharing_autogluon.src import data, gbm
from bike_sharing_autogluon.src.features import make_features, weather_history
from common import paths


def _threads(library: str, threads: int) -> dict:
    return {"thread_count": threads} if library == "catboost" else {"n_jobs": threads}


def benchmark(train: pd.DataFrame, test: pd.DataFrame, repeats: int = 3, rounds: float = 0.2) -> pd.DataFrame:
    history = weather_history([train, test])
    x = gbm.as_matrix(make_features(train, "weather", history))
    y = np.log1p(train["registered"].to_numpy(dtype=float))
    rows = []
    for library in gbm.LIBRARIES:
        seconds = {}
        for threads in (1, 2):
            model = gbm.make_model(library, 0, rounds)
            model.set_params(**_threads(library, threads))
            model.fit(x, y)  # warm-up
            times = []
            for _ in range(repeats):
                started = time.perf_counter()
                model.fit(x, y)
                times.append(time.perf_counter() - started)
            seconds[threads] = statistics.median(times)
        rows.append({"library": library, "rows": len(x), "trees": gbm.params(library, 0, rounds).get(
                         "n_estimators", gbm.params(library, 0, rounds).get("iterations")),
                     "median s, 1 thread": round(seconds[1], 2), "median s, 2 threads": round(seconds[2], 2),
                     "2 threads / 1 thread": round(seconds[2] / seconds[1], 2)})
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rounds", type=float, default=0.2, help="share of each model's trees (default 0.2)")
    parser.add_argument("--data-dir", default=None, help="datasets folder (default: $DATA_DIR, else ./data)")
    args = parser.parse_args(argv)
    bike = data.load(paths.data_dir(args.data_dir), allow_network=False)
    print(f"data: {bike.source}; OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}; "
          f"{os.cpu_count()} cores")
    print(benchmark(bike.train, bike.test, args.repeats, args.rounds).to_string(index=False))


if __name__ == "__main__":
    main()
