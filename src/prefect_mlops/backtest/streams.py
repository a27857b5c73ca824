"""The backtest's streams: time-ordered tabular data cut into periods, each with its feature spec and trainer.

Synthetic streams come from river's generators with known drift points; real ones are files that
installed packages ship (ISLP's CSVs, river's bundled datasets). Nothing is downloaded: every
loader reads a file inside an installed package, or generates rows from a fixed seed.

Example:
    ```python
    from prefect_mlops.backtest.streams import load_stream
    stream = load_stream("sea_stable", rows_per_period=50, periods=6)
    assert stream.n_periods == 6 and len(stream.rows(0, 6)) == 300
    ```
"""

from __future__ import annotations

import importlib.util
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from prefect_mlops.errors import ConfigError, DataSourceError
from prefect_mlops.tasks.features import FeatureSpec
from prefect_mlops.tasks.lineage import TrainerSpec

TIME = "event_time"
PERIOD = "period"
SYNTHETIC_START = pd.Timestamp("2023-01-01")

Expect = Literal["drift", "stable", "covariate"]


@dataclass(frozen=True)
class Stream:
    """A time-ordered frame cut into periods, with the spec and trainer that model it.

    `frame` holds the time column `event_time`, a `period` column (0-based) and the spec's
    columns; `starts` holds the `n_periods + 1` period boundaries, so period `t` is
    `[starts[t], starts[t + 1])` on the time column.
    """

    name: str
    description: str
    source: str
    frame: pd.DataFrame
    starts: tuple[pd.Timestamp, ...]
    features: FeatureSpec
    trainer: TrainerSpec
    metric: str
    expect: Expect
    drift_periods: tuple[int, ...] = ()
    initial_periods: int = 3
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def n_periods(self) -> int:
        return len(self.starts) - 1

    @property
    def task(self) -> str:
        return self.features.task

    def window(self, first: int, end: int) -> str:
        """The ISO-8601 interval of periods `[first, end)`."""
        return f"{self.starts[first].isoformat()}/{self.starts[end].isoformat()}"

    def rows(self, first: int, end: int) -> pd.DataFrame:
        """The rows of periods `[first, end)`, in time order."""
        periods = self.frame[PERIOD].to_numpy()
        return self.frame.loc[(periods >= first) & (periods < end)].reset_index(drop=True)

    def source_frame(self, end: int) -> pd.DataFrame:
        """What the data source holds once periods `[0, end)` have arrived: no `period` column.

        The period number is the backtest's bookkeeping, not data a user would have; a learned
        suite would pin its range, so it stays out of the file the flows read.
        """
        return self.rows(0, end).drop(columns=[PERIOD])

    def describe(self) -> dict[str, object]:
        """Shape and setup, for tables and the JSON report."""
        sizes = self.frame.groupby(PERIOD).size()
        return {"name": self.name, "source": self.source, "task": self.task, "metric": self.metric,
                "expect": self.expect, "periods": self.n_periods, "rows": len(self.frame),
                "rows_per_period": [int(sizes.min()), int(sizes.max())], "initial_periods": self.initial_periods,
                "drift_periods": list(self.drift_periods), "features": self.features.feature_columns,
                "target": self.features.target, "estimator": self.trainer.estimator,
                "description": self.description}


def _assign_periods(frame: pd.DataFrame, starts: list[pd.Timestamp]) -> pd.DataFrame:
    """Sort by time, keep rows inside the boundaries, number each row's period."""
    frame = frame.sort_values(TIME, kind="stable").reset_index(drop=True)
    edges = pd.DatetimeIndex(starts)
    inside = (frame[TIME] >= edges[0]) & (frame[TIME] < edges[-1])
    frame = frame.loc[inside].reset_index(drop=True)
    frame[PERIOD] = np.searchsorted(edges.to_numpy(), frame[TIME].to_numpy(), side="right") - 1
    empty = sorted(set(range(len(starts) - 1)) - set(frame[PERIOD].unique()))
    if empty:
        raise DataSourceError(f"stream: periods {empty} have no rows; choose wider periods")
    return frame


def _synthetic_times(periods: int, rows: int) -> tuple[pd.Series, list[pd.Timestamp]]:
    """Monthly periods from 2023-01, each with `rows` evenly spaced timestamps."""
    starts = [SYNTHETIC_START + pd.DateOffset(months=p) for p in range(periods + 1)]
    times = []
    for p in range(periods):
        span = (starts[p + 1] - starts[p]).total_seconds()
        times.append(starts[p] + pd.to_timedelta(np.arange(rows) * (span / rows), unit="s"))
    return pd.Series(np.concatenate([t.to_numpy() for t in times])), starts


def _take(dataset: object, count: int) -> tuple[pd.DataFrame, np.ndarray]:
    rows, targets = [], []
    for x, y in itertools.islice(dataset, count):
        rows.append(x)
        targets.append(y)
    return pd.DataFrame(rows), np.asarray(targets)


def _frame(x: pd.DataFrame, y: np.ndarray, target: str, periods: int, rows: int) -> tuple[pd.DataFrame, list]:
    times, starts = _synthetic_times(periods, rows)
    frame = x.rename(columns=lambda c: f"x{c}" if isinstance(c, int) else str(c))
    frame.insert(0, TIME, times)
    frame[target] = y
    return _assign_periods(frame, starts), starts


# ---------------------------------------------------------------------------- synthetic streams

HGB_CLASSIFIER = TrainerSpec(estimator="sklearn.ensemble.HistGradientBoostingClassifier",
                             params={"max_iter": 100, "learning_rate": 0.1})
HGB_REGRESSOR = TrainerSpec(estimator="sklearn.ensemble.HistGradientBoostingRegressor",
                            params={"max_iter": 100, "learning_rate": 0.1})
LOGISTIC = TrainerSpec(estimator="sklearn.linear_model.LogisticRegression", params={"max_iter": 500})
RIDGE = TrainerSpec(estimator="sklearn.linear_model.Ridge", params={"alpha": 1.0})


def agrawal_abrupt(rows_per_period: int = 1000, periods: int = 20, seed: int = 11) -> Stream:
    """Agrawal's loan function 1 switching abruptly to function 2 (other attributes decide) at 40%."""
    from river.datasets import synth

    drift = max(4, round(periods * 0.4))
    total = periods * rows_per_period
    # river's sigmoid overflows (math.exp) when width is below ~4 * rows / 700; a fifth of a period is
    # abrupt at the period scale, centred so that the switch happens inside the drift period.
    width = max(rows_per_period // 5, -(-4 * total // 700))
    stream = synth.ConceptDriftStream(
        stream=synth.Agrawal(classification_function=1, seed=seed, perturbation=0.2),
        drift_stream=synth.Agrawal(classification_function=2, seed=seed + 1, perturbation=0.2),
        position=drift * rows_per_period + width // 2, width=width, seed=seed)
    x, y = _take(stream, periods * rows_per_period)
    for column, prefix in (("elevel", "e"), ("car", "c"), ("zipcode", "z")):
        x[column] = prefix + x[column].astype(str)  # codes, not quantities: one-hot them
    frame, starts = _frame(x, y.astype("int64"), "approved", periods, rows_per_period)
    features = FeatureSpec(target="approved", numeric=["salary", "commission", "age", "hvalue", "hyears", "loan"],
                           categorical=["elevel", "car", "zipcode"], time_column=TIME)
    return Stream("agrawal_abrupt", "abrupt concept drift: Agrawal function 1 -> 2 (ConceptDriftStream)",
                  "river.datasets.synth", frame, tuple(starts), features, HGB_CLASSIFIER, "roc_auc", "drift",
                  drift_periods=(drift,))


def hyperplane_gradual(rows_per_period: int = 1000, periods: int = 20, seed: int = 13) -> Stream:
    """A rotating hyperplane: 5 of 10 weights drift a little with every row (gradual concept drift)."""
    from river.datasets import synth

    # Drift per period, not per row, is what the backtest is about: scale the per-row change.
    magnitude = 0.002 * 1000 / rows_per_period
    x, y = _take(synth.Hyperplane(seed=seed, n_features=10, n_drift_features=5, mag_change=magnitude, sigma=0.1,
                                  noise_percentage=0.05), periods * rows_per_period)
    frame, starts = _frame(x, y.astype("int64"), "label", periods, rows_per_period)
    features = FeatureSpec(target="label", numeric=[f"x{i}" for i in range(10)], time_column=TIME)
    return Stream("hyperplane_gradual", "gradual concept drift: rotating hyperplane, 5 drifting weights, 5% noise",
                  "river.datasets.synth", frame, tuple(starts), features, LOGISTIC, "roc_auc", "drift",
                  drift_periods=(0,), extra={"mag_change": magnitude})


def friedman_drift(rows_per_period: int = 1000, periods: int = 20, seed: int = 17) -> Stream:
    """Friedman's regression with a global abrupt drift at 35% that recurs back at 70%."""
    from river.datasets import synth

    first, second = max(4, round(periods * 0.35)), max(6, round(periods * 0.7))
    x, y = _take(synth.FriedmanDrift(drift_type="gra", position=(first * rows_per_period, second * rows_per_period),
                                     seed=seed), periods * rows_per_period)
    frame, starts = _frame(x, y, "y", periods, rows_per_period)
    features = FeatureSpec(target="y", numeric=[f"x{i}" for i in range(10)], task="regression", time_column=TIME)
    return Stream("friedman_drift", "regression, global recurring abrupt drift (FriedmanDrift 'gra')",
                  "river.datasets.synth", frame, tuple(starts), features, HGB_REGRESSOR, "rmse", "drift",
                  drift_periods=(first, second))


def _sea(rows: int, seed: int, weight: Callable[[pd.DataFrame, int], np.ndarray] | None,
         periods: int) -> tuple[pd.DataFrame, np.ndarray]:
    """SEA concept 0 rows; with `weight`, each period's rows are a weighted resample (covariate shift)."""
    from river.datasets import synth

    if weight is None:
        return _take(synth.SEA(variant=0, noise=0.1, seed=seed), periods * rows)
    pool_x, pool_y = _take(synth.SEA(variant=0, noise=0.1, seed=seed), periods * rows * 4)
    rng = np.random.default_rng(seed)
    parts_x, parts_y = [], []
    for p in range(periods):
        chunk = slice(p * rows * 4, (p + 1) * rows * 4)
        x, y = pool_x.iloc[chunk].reset_index(drop=True), pool_y[chunk]
        w = weight(x, p)
        keep = rng.choice(len(x), size=rows, replace=False, p=w / w.sum())
        keep.sort()
        parts_x.append(x.iloc[keep])
        parts_y.append(y[keep])
    return pd.concat(parts_x, ignore_index=True), np.concatenate(parts_y)


def sea_covariate(rows_per_period: int = 1000, periods: int = 20, seed: int = 19) -> Stream:
    """SEA's labelling function fixed, its inputs shifting from 40% on: retraining should not pay."""
    start = max(4, round(periods * 0.4))

    def weight(x: pd.DataFrame, period: int) -> np.ndarray:
        # Selection bias toward large x0 and small x2, growing after `start`; the support stays the same,
        # so a model of the unchanged concept stays right.
        strength = 0.0 if period < start else min(1.0, (period - start + 1) / 4) * 2.5
        return np.exp(strength * ((x[0] - 5) / 5 - (x[2] - 5) / 5))

    x, y = _sea(rows_per_period, seed, weight, periods)
    frame, starts = _frame(x, y.astype("int64"), "label", periods, rows_per_period)
    features = FeatureSpec(target="label", numeric=["x0", "x1", "x2"], time_column=TIME)
    return Stream("sea_covariate", "covariate shift without concept change: SEA concept 0, inputs reweighted",
                  "river.datasets.synth", frame, tuple(starts), features, LOGISTIC, "roc_auc", "covariate",
                  drift_periods=(start,))


def sea_stable(rows_per_period: int = 1000, periods: int = 20, seed: int = 23) -> Stream:
    """SEA concept 0 with 10% label noise throughout: nothing to react to."""
    x, y = _sea(rows_per_period, seed, None, periods)
    frame, starts = _frame(x, y.astype("int64"), "label", periods, rows_per_period)
    features = FeatureSpec(target="label", numeric=["x0", "x1", "x2"], time_column=TIME)
    return Stream("sea_stable", "stable: SEA concept 0, 10% label noise, no drift", "river.datasets.synth",
                  frame, tuple(starts), features, LOGISTIC, "roc_auc", "stable")


# ---------------------------------------------------------------------------- real streams


def package_file(package: str, *parts: str) -> Path:
    """A data file inside an installed package, found without importing the package.

    ISLP's `__init__` is light, but the package declares torch and lightning as dependencies; the
    backtest installs it without them and reads only its CSVs.
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"package {package!r} is not installed; `make install` installs the backtest's data "
                          "packages (pip install -e '.[backtest]' && pip install --no-deps islp==0.6.0)")
    path = Path(next(iter(spec.submodule_search_locations))).joinpath(*parts)
    if not path.is_file():
        raise DataSourceError(f"package {package!r} has no data file {'/'.join(parts)} (looked at {path})")
    return path


def bikeshare(periods: int | None = None) -> Stream:
    """ISLP's Bikeshare: hourly rentals in Washington DC, 2011, one period a month (regression)."""
    raw = pd.read_csv(package_file("ISLP", "data", "Bikeshare.csv"))
    hour = pd.to_numeric(raw["hr"]).astype("int64")
    frame = pd.DataFrame({
        TIME: pd.Timestamp("2011-01-01") + pd.to_timedelta(raw["day"] - 1, unit="D") + pd.to_timedelta(hour, unit="h"),
        "hour": hour, "weekday": raw["weekday"].astype("int64"), "workingday": raw["workingday"].astype("int64"),
        "holiday": raw["holiday"].astype("int64"), "temp": raw["temp"], "atemp": raw["atemp"], "hum": raw["hum"],
        "windspeed": raw["windspeed"], "weathersit": raw["weathersit"].astype(str), "bikers": raw["bikers"]})
    count = periods or 12
    starts = [pd.Timestamp("2011-01-01") + pd.DateOffset(months=p) for p in range(count + 1)]
    features = FeatureSpec(target="bikers", numeric=["hour", "weekday", "workingday", "holiday", "temp", "atemp",
                                                     "hum", "windspeed"],
                           categorical=["weathersit"], task="regression", time_column=TIME)
    return Stream("bikeshare", "ISLP Bikeshare: hourly bike rentals (DC, 2011), monthly periods; casual and "
                  "registered (parts of the target) left out", "ISLP/data/Bikeshare.csv",
                  _assign_periods(frame, starts), tuple(starts), features, HGB_REGRESSOR, "rmse", "drift")


def nyse(periods: int | None = None) -> Stream:
    """ISLP's NYSE: daily log trading volume from five days of lags, 1963-1986, yearly periods (regression)."""
    raw = pd.read_csv(package_file("ISLP", "data", "NYSE.csv"))
    frame = pd.DataFrame({TIME: pd.to_datetime(raw["date"]), "day_of_week": raw["day_of_week"].astype(str),
                          "log_volume": raw["log_volume"]})
    for lag in range(1, 6):  # what is known before the day starts
        for column in ("DJ_return", "log_volume", "log_volatility"):
            frame[f"{column}_lag{lag}"] = raw[column].shift(lag)
    frame = frame.iloc[5:].reset_index(drop=True)
    count = periods or 24
    starts = [pd.Timestamp("1963-01-01") + pd.DateOffset(years=p) for p in range(count + 1)]
    numeric = [c for c in frame.columns if "_lag" in c]
    features = FeatureSpec(target="log_volume", numeric=numeric, categorical=["day_of_week"], task="regression",
                           time_column=TIME)
    return Stream("nyse", "ISLP NYSE: next-day log trading volume from lagged returns, volume and volatility; "
                  "yearly periods 1963-1986", "ISLP/data/NYSE.csv", _assign_periods(frame, starts), tuple(starts),
                  features, HGB_REGRESSOR, "rmse", "drift")


def weekly(periods: int | None = None) -> Stream:
    """ISLP's Weekly: S&P 500 weekly direction from lagged returns and volume, 1990-2010, yearly periods."""
    raw = pd.read_csv(package_file("ISLP", "data", "Weekly.csv"))
    # The file has a Year per row in time order, one row a week; rebuild each row's week.
    week = raw.groupby("Year").cumcount()
    frame = pd.DataFrame({TIME: pd.to_datetime(raw["Year"].astype(str) + "-01-01") + pd.to_timedelta(week * 7,
                                                                                                   unit="D"),
                          **{f"Lag{i}": raw[f"Lag{i}"] for i in range(1, 6)}, "Volume": raw["Volume"],
                          "up": (raw["Direction"] == "Up").astype("int64")})
    count = periods or 21
    starts = [pd.Timestamp("1990-01-01") + pd.DateOffset(years=p) for p in range(count + 1)]
    features = FeatureSpec(target="up", numeric=[*(f"Lag{i}" for i in range(1, 6)), "Volume"], time_column=TIME)
    return Stream("weekly", "ISLP Weekly: S&P 500 weekly direction from 5 lagged returns and volume; yearly periods "
                  "1990-2010 (~52 rows each). Volume grows tenfold while the direction stays close to "
                  "unpredictable: a real covariate shift that retraining cannot exploit", "ISLP/data/Weekly.csv",
                  _assign_periods(frame, starts), tuple(starts), features, LOGISTIC, "roc_auc", "covariate")


def trump_approval(periods: int | None = None) -> Stream:
    """river's TrumpApproval: daily approval average from five pollsters, 2017-2019, quarterly (regression)."""
    raw = pd.read_csv(package_file("river", "datasets", "trump_approval.csv.gz"))
    pollsters = ["gallup", "ipsos", "morning_consult", "rasmussen", "you_gov"]
    days = pd.to_timedelta(raw["ordinal_date"] - pd.Timestamp("2017-01-01").toordinal(), unit="D")
    frame = pd.DataFrame({TIME: pd.Timestamp("2017-01-01") + days, **{p: raw[p] for p in pollsters},
                          "approval": raw["five_thirty_eight"]})
    count = periods or 11
    starts = [pd.Timestamp("2017-03-01") + pd.DateOffset(months=3 * p) for p in range(count + 1)]
    features = FeatureSpec(target="approval", numeric=pollsters, task="regression", time_column=TIME)
    return Stream("trump_approval", "river TrumpApproval: FiveThirtyEight's approval average from five pollsters' "
                  "latest figures; quarterly periods from March 2017 to November 2019",
                  "river/datasets/trump_approval.csv.gz",
                  _assign_periods(frame, starts), tuple(starts), features, RIDGE, "rmse", "drift")


SYNTHETIC: dict[str, Callable[..., Stream]] = {
    "agrawal_abrupt": agrawal_abrupt, "hyperplane_gradual": hyperplane_gradual, "friedman_drift": friedman_drift,
    "sea_covariate": sea_covariate, "sea_stable": sea_stable,
}
REAL: dict[str, Callable[..., Stream]] = {
    "bikeshare": bikeshare, "nyse": nyse, "weekly": weekly, "trump_approval": trump_approval,
}
STREAMS: dict[str, Callable[..., Stream]] = {**SYNTHETIC, **REAL}


def load_stream(name: str, *, rows_per_period: int | None = None, periods: int | None = None) -> Stream:
    """Build one stream by name; synthetic ones take a size, real ones can be cut to their first `periods`.

    Example:
        ```python
        from prefect_mlops.backtest.streams import load_stream
        bikes = load_stream("bikeshare")
        assert bikes.n_periods == 12 and bikes.metric == "rmse"
        ```
    """
    if name not in STREAMS:
        raise ConfigError(f"backtest stream {name!r} is unknown; choose from {', '.join(STREAMS)}")
    if name in SYNTHETIC:
        sizes = {k: v for k, v in (("rows_per_period", rows_per_period), ("periods", periods)) if v is not None}
        return SYNTHETIC[name](**sizes)
    if rows_per_period is not None:
        raise ConfigError(f"backtest stream {name!r} is real data: its rows per period are what they are")
    return REAL[name](periods)
