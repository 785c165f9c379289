from __future__ import annotations

import io

import matplotlib.pyplot as plt
import pandas as pd
import pytest

from bike_sharing_autogluon.src import data, eda
from tests.bike_fixtures import uci_hour


@pytest.fixture(scope="module")
def train() -> pd.DataFrame:
    text = data.kaggle_files_from_uci(uci_hour(months=(1, 2)))["train.csv"]
    return data.check_frame(pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False), "train.csv", "fixture")


@pytest.mark.parametrize("plot", [eda.demand_by_hour, eda.demand_by_month_and_weather,
                                  eda.feature_histograms, eda.correlation_heatmap])
def test_each_figure_saves_and_states_its_finding(train, plot, tmp_path):
    fig, finding = plot(train, save_to=tmp_path / "figure.png")
    assert (tmp_path / "figure.png").stat().st_size > 5000
    assert finding.endswith(".") and any(ch.isdigit() for ch in finding)
    plt.close(fig)


def test_hour_finding_comes_from_the_data(train):
    # the fixture's commuters ride at 8:00, 17:00 and 18:00 on working days
    fig, finding = eda.demand_by_hour(train)
    assert finding.startswith("Working days peak at ") and ("17:00" in finding or "18:00" in finding or "8:00" in finding)
    plt.close(fig)
