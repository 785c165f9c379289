"""Exploratory figures, each with the finding it shows stated from the data (not typed)."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from common.plotting import save_figure

WEATHER = {1: "clear", 2: "mist/cloudy", 3: "light rain/snow", 4: "heavy rain/snow"}
SEASON = {1: "spring", 2: "summer", 3: "fall", 4: "winter"}


def demand_by_hour(train: pd.DataFrame, save_to=None) -> tuple[Figure, str]:
    """Mean hourly rentals, working days vs weekends/holidays."""
    hour = train["datetime"].dt.hour
    table = train.groupby([hour.rename("hour"), train["workingday"].map({1: "working day", 0: "weekend/holiday"})])[
        "count"].mean().unstack()
    fig, ax = plt.subplots(figsize=(8, 4))
    table.plot(ax=ax, marker="o", ms=3)
    ax.set(xlabel="hour of day", ylabel="mean rentals per hour", title="Demand by hour", xticks=range(0, 24, 2))
    ax.grid(alpha=0.3)
    work, rest = table["working day"], table["weekend/holiday"]
    finding = (f"Working days peak at {work.idxmax()}:00 ({work.max():.0f} rentals/hour, commuters) with a second "
               f"peak at {work.loc[:11].idxmax()}:00; weekends peak at {rest.idxmax()}:00 ({rest.max():.0f}/hour) "
               f"in one midday hump. Hour of day, crossed with working day, is the strongest signal.")
    return save_figure(fig, save_to), finding


def demand_by_month_and_weather(train: pd.DataFrame, save_to=None) -> tuple[Figure, str]:
    """Mean rentals by month per year, and by weather situation."""
    stamp = train["datetime"].dt
    monthly = train.groupby([stamp.month.rename("month"), stamp.year.rename("year")])["count"].mean().unstack()
    weather = train.groupby(train["weather"].map(WEATHER))["count"].agg(["mean", "size"])
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4))
    monthly.plot(ax=left, marker="o")
    left.set(xlabel="month", ylabel="mean rentals per hour", title="Demand by month", xticks=range(1, 13))
    left.grid(alpha=0.3)
    order = [w for w in WEATHER.values() if w in weather.index]
    right.bar(order, weather.loc[order, "mean"], color="tab:blue")
    for i, w in enumerate(order):
        right.annotate(f"n={weather.loc[w, 'size']}", (i, weather.loc[w, "mean"]), ha="center", va="bottom", fontsize=8)
    right.set(ylabel="mean rentals per hour", title="Demand by weather")
    fig.tight_layout()
    years = list(monthly.columns)
    growth = ""
    if len(years) > 1:
        growth = (f" Demand grew from {train.loc[stamp.year == years[0], 'count'].mean():.0f} to "
                  f"{train.loc[stamp.year == years[-1], 'count'].mean():.0f} rentals/hour from {years[0]} to "
                  f"{years[-1]}: a trend feature matters.")
    season = train.groupby(train["season"].map(SEASON))["count"].mean()
    finding = (f"Demand is highest in {season.idxmax()} ({season.max():.0f}/hour) and lowest in {season.idxmin()} "
               f"({season.min():.0f}/hour); rain or snow cuts it to {weather['mean'].get('light rain/snow', np.nan):.0f}"
               f"/hour from {weather['mean'].get('clear', np.nan):.0f} in clear weather.{growth}")
    return save_figure(fig, save_to), finding


def feature_histograms(train: pd.DataFrame, save_to=None) -> tuple[Figure, str]:
    columns = ["temp", "atemp", "humidity", "windspeed", "casual", "registered", "count"]
    fig, axes = plt.subplots(2, 4, figsize=(14, 6))
    for ax, column in zip(axes.flat, columns):
        ax.hist(train[column], bins=40, color="tab:blue", alpha=0.8)
        ax.set_title(column)
    axes.flat[-1].hist(np.log1p(train["count"]), bins=40, color="tab:orange")
    axes.flat[-1].set_title("log1p(count)")
    fig.tight_layout()
    zero_wind = (train["windspeed"] == 0).mean()
    finding = (f"`count` is right-skewed (median {train['count'].median():.0f}, max {train['count'].max()}); "
               f"log1p makes it far more symmetric, which is why a log target fits RMSLE. "
               f"{zero_wind:.0%} of hours record windspeed 0, likely missing readings.")
    return save_figure(fig, save_to), finding


def correlation_heatmap(train: pd.DataFrame, save_to=None) -> tuple[Figure, str]:
    numeric = train.drop(columns="datetime").assign(hour=train["datetime"].dt.hour)
    corr = numeric.corr()
    fig, ax = plt.subplots(figsize=(8, 7))
    image = ax.imshow(corr, cmap="coolwarm", vmin=-1, vmax=1)
    ax.set_xticks(range(len(corr)), corr.columns, rotation=45, ha="right")
    ax.set_yticks(range(len(corr)), corr.columns)
    for i in range(len(corr)):
        for j in range(len(corr)):
            ax.text(j, i, f"{corr.iloc[i, j]:.2f}", ha="center", va="center", fontsize=7)
    fig.colorbar(image, ax=ax, shrink=0.8)
    ax.set_title("Correlation (Pearson)")
    fig.tight_layout()
    with_count = corr["count"].drop(["count", "casual", "registered"]).sort_values()
    finding = (f"`registered` ({corr.loc['registered', 'count']:.2f}) and `casual` ({corr.loc['casual', 'count']:.2f}) "
               f"sum to `count`, so they are targets, never inputs. Among inputs, {with_count.index[-1]} "
               f"({with_count.iloc[-1]:.2f}) and {with_count.index[0]} ({with_count.iloc[0]:.2f}) correlate most; "
               f"`temp` and `atemp` are nearly collinear ({corr.loc['temp', 'atemp']:.2f}).")
    return save_figure(fig, save_to), finding
