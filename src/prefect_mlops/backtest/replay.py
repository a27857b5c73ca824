"""Replay a stream period by period: the policy through the real flows, a static model and an oracle.

- static: the stream's trainer fitted once on the initial periods, scored on every later period.
- oracle: refitted before every period on the `W` periods before it, scored on that period.
- policy: the first champion trained by `continuous_training` on the initial periods; then for
  each later period the model in force (`@champion`) scores the period before its labels are
  shown, the period is appended to the data source, and `drift_monitor(retrain=True)` decides.

Static and oracle are plain scikit-learn (the same transform and estimator the flows build), so
they are deterministic; the policy runs on a fresh workspace and MLflow SQLite store per stream.

Example:
    ```python
    from prefect_mlops.backtest.replay import baselines
    from prefect_mlops.backtest.streams import load_stream
    static, oracle = baselines(load_stream("sea_stable", rows_per_period=60, periods=6), window=3)
    assert len(static) == len(oracle) == 3
    ```
"""

from __future__ import annotations

import inspect
import json
import math
import shutil
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from prefect_mlops.backtest.run import BAD_PROMOTION_DELTA, ORACLE_WINDOW
from prefect_mlops.blocks.model_policy import LOWER_IS_BETTER
from prefect_mlops.console import report as show_progress
from prefect_mlops.errors import ConfigError

if TYPE_CHECKING:
    import pandas as pd

    from prefect_mlops.backtest.streams import Stream
    from prefect_mlops.blocks import MlflowServer, ModelPolicy
    from prefect_mlops.workspace import Workspace



# ---------------------------------------------------------------------------- scoring


def period_metric(model: Any, frame: pd.DataFrame, stream: Stream) -> float:
    """The stream's metric of `model` on `frame` (NaN when it cannot be computed, e.g. one class)."""
    from prefect_mlops.tasks.evaluate import classification_metrics, regression_metrics

    spec = stream.features
    x, y = frame[spec.feature_columns], frame[spec.target].to_numpy()
    if spec.task == "regression":
        return regression_metrics(y, np.asarray(model.predict(x)))[stream.metric]
    proba = np.asarray(model.predict_proba(x)) if hasattr(model, "predict_proba") else None
    labels = np.asarray(model.predict(x))
    return classification_metrics(y, labels, proba, np.asarray(model.classes_))[stream.metric]


def fit(stream: Stream, first: int, end: int) -> Any:
    """The stream's trainer (transform + estimator, as the flows build it) fitted on periods `[first, end)`."""
    from sklearn.pipeline import Pipeline

    from prefect_mlops.tasks.features import make_transform
    from prefect_mlops.tasks.train import build_estimator

    spec = stream.features
    rows = stream.rows(first, end)
    pipeline = Pipeline([("features", make_transform(spec)), ("model", build_estimator(stream.trainer))])
    return pipeline.fit(rows[spec.feature_columns], rows[spec.target])


def baselines(stream: Stream, window: int = ORACLE_WINDOW) -> tuple[list[float], list[float]]:
    """Static and oracle metric for every scored period (`initial_periods` .. the last).

    Example:
        ```python
        from prefect_mlops.backtest.replay import baselines
        from prefect_mlops.backtest.streams import load_stream
        stream = load_stream("friedman_drift", rows_per_period=80, periods=8)
        assert baselines(stream) == baselines(stream)
        ```
    """
    if window < 1:
        raise ConfigError(f"oracle window must be at least one period, got {window}")
    start = stream.initial_periods
    static_model = fit(stream, 0, start)
    static, oracle = [], []
    for t in range(start, stream.n_periods):
        rows = stream.rows(t, t + 1)
        static.append(period_metric(static_model, rows, stream))
        oracle.append(period_metric(fit(stream, max(0, t - window), t), rows, stream))
    return static, oracle


def lower_is_better(metric: str) -> bool:
    return metric in LOWER_IS_BETTER


MIN_SPAN = 0.005  # relative: an oracle less than 0.5% better than static leaves nothing to recover


def gain_recovered(policy: float | None, static: float | None, oracle: float | None, *, lower_better: bool,
                   min_span: float = MIN_SPAN) -> float | None:
    """(policy - static) / (oracle - static), oriented so that a better policy gives a larger share.

    None when the oracle is not better than the static model by at least `min_span` (relative to
    the static figure): the ratio of two differences in the noise means nothing. None too when a
    figure is missing.

    Example:
        ```python
        from prefect_mlops.backtest.replay import gain_recovered
        assert abs(gain_recovered(0.85, 0.80, 0.90, lower_better=False) - 0.5) < 1e-9
        assert abs(gain_recovered(9.0, 10.0, 8.0, lower_better=True) - 0.5) < 1e-9
        assert gain_recovered(0.8, 0.8, 0.8, lower_better=False) is None  # nothing to recover
        ```
    """
    if any(v is None or not math.isfinite(v) for v in (policy, static, oracle)):
        return None
    sign = -1.0 if lower_better else 1.0
    span = sign * (oracle - static)
    if span <= 0 or span < min_span * abs(static):
        return None
    return sign * (policy - static) / span


def nanmean(values: list[float | None]) -> float | None:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(finite)) if finite else None


def worse_by(new: float, old: float, *, lower_better: bool) -> float:
    """How much worse `new` is than `old`, relative to `old` (negative: better)."""
    scale = abs(old) or 1.0
    return ((new - old) if lower_better else (old - new)) / scale


# ---------------------------------------------------------------------------- records


@dataclass
class PeriodResult:
    """One scored period: the three approaches' metric and what the policy did after seeing its labels."""

    period: int
    window: str
    rows: int
    static: float | None
    oracle: float | None
    policy: float | None = None
    champion: str | None = None
    drift: bool | None = None
    trigger: str | None = None
    retrained: bool = False
    promoted: bool = False
    decision: str = ""
    previous_champion_score: float | None = None
    bad_promotion: bool | None = None
    crash: str | None = None
    seconds: float = 0.0


@dataclass
class StreamResult:
    """All figures of one stream's backtest."""

    stream: dict[str, Any]
    metric: str
    lower_is_better: bool
    oracle_window: int
    delta: float
    policy: dict[str, Any]
    periods: list[PeriodResult] = field(default_factory=list)
    first_training: str = ""
    crashes: list[str] = field(default_factory=list)
    wall_seconds: float = 0.0
    baseline_seconds: float = 0.0

    @property
    def name(self) -> str:
        return self.stream["name"]

    def mean(self, approach: str) -> float | None:
        return nanmean([getattr(p, approach) for p in self.periods])

    @property
    def gain(self) -> float | None:
        return gain_recovered(self.mean("policy"), self.mean("static"), self.mean("oracle"),
                              lower_better=self.lower_is_better)

    @property
    def retrains(self) -> int:
        return sum(p.retrained for p in self.periods)

    @property
    def oracle_retrains(self) -> int:
        return len(self.periods)

    @property
    def promotions(self) -> int:
        return sum(p.promoted for p in self.periods)

    @property
    def bad_promotions(self) -> int:
        return sum(bool(p.bad_promotion) for p in self.periods)

    def summary(self) -> dict[str, Any]:
        """The headline figures, for the table and the JSON report."""
        return {"stream": self.name, "task": self.stream["task"], "metric": self.metric,
                "expect": self.stream["expect"], "periods_scored": len(self.periods),
                "static": self.mean("static"), "oracle": self.mean("oracle"), "policy": self.mean("policy"),
                "gain_recovered": self.gain, "retrains": self.retrains, "oracle_retrains": self.oracle_retrains,
                "promotions": self.promotions, "bad_promotions": self.bad_promotions, "crashes": len(self.crashes),
                "wall_seconds": round(self.wall_seconds, 1)}

    def to_dict(self) -> dict[str, Any]:
        return {"summary": self.summary(), "stream": self.stream, "oracle_window": self.oracle_window,
                "bad_promotion_delta": self.delta, "policy": self.policy, "first_training": self.first_training,
                "crashes": self.crashes, "baseline_seconds": round(self.baseline_seconds, 2),
                "periods": [asdict(p) for p in self.periods]}


# ---------------------------------------------------------------------------- the policy replay


def _monitor_accepts(name: str) -> bool:
    from prefect_mlops.flows import drift_monitor

    return name in inspect.signature(drift_monitor.fn).parameters


def describe_monitor(report: Any) -> tuple[bool | None, str | None, str]:
    """Whether drift was found, what triggered a retraining, and the monitor's decision in words.

    Reads whatever the monitor returned: a decision with its reasons where there is one, else the
    drift report and the retraining's outcome.
    """
    drift = getattr(report, "drift", None)
    detected = getattr(drift, "detected", None)
    decision = getattr(report, "decision", None)
    trigger = getattr(decision, "trigger", None) if getattr(decision, "retrain", False) else None
    words = []
    if decision is not None:
        reasons = getattr(decision, "reasons", None)
        words.append("; ".join(map(str, reasons[:3])) if reasons else str(decision))
    cycle = getattr(report, "retrain", None)
    if cycle is not None:
        words.append(f"{cycle.outcome}: {cycle.gate_reason or cycle.message}")
    elif decision is None:
        words.append("drift, retraining not started" if detected else "no drift")
    return detected, trigger, " / ".join(w for w in words if w)[:600]


def _training_runs(server: Any, workspace: Any) -> int:
    """How many training runs the store holds: every flow training logs one, with lineage tags."""
    client = server.client(workspace)
    found = client.get_experiment_by_name(server.experiment)
    if found is None:
        return 0
    runs = client.search_runs([found.experiment_id], filter_string="tags.`prefect_mlops.data.fingerprint` != ''",
                              max_results=5000)
    return len(runs)


def stream_store(home: Path, name: str) -> tuple[MlflowServer, Workspace]:
    """The fresh MLflow SQLite store and workspace of one stream's replay, under `home`."""
    from prefect_mlops.blocks import MlflowServer
    from prefect_mlops.workspace import Workspace

    server = MlflowServer(tracking_uri=f"sqlite:///{home / 'mlflow.db'}",
                          artifact_location=(home / "mlartifacts").as_uri(), experiment=name)
    return server, Workspace(home / "workspace")


def replay_policy(
    stream: Stream,
    home: Path,
    *,
    model_policy: ModelPolicy | None = None,
    retrain_policy: Any | None = None,
    delta: float = BAD_PROMOTION_DELTA,
    oracle_window: int = ORACLE_WINDOW,
    on_period: Callable[[PeriodResult], None] | None = None,
) -> StreamResult:
    """Replay `stream` through the real flows in a fresh store under `home`; static and oracle beside it.

    Each flow exception is caught, counted as a crash with its message, and the replay goes on with
    the champion in force.
    """
    from prefect_mlops.blocks import DataSource, ModelPolicy
    from prefect_mlops.flows import continuous_training, drift_monitor
    from prefect_mlops.tasks.lineage import find_model

    started = time.perf_counter()
    static, oracle = baselines(stream, oracle_window)
    baseline_seconds = time.perf_counter() - started

    if home.exists():
        shutil.rmtree(home)
    data = home / "data" / f"{stream.name}.parquet"
    data.parent.mkdir(parents=True)
    server, workspace = stream_store(home, stream.name)
    source = DataSource(uri=str(data), time_column="event_time")
    gate = model_policy or ModelPolicy()
    common: dict[str, Any] = {"mlflow_server": server, "workspace": str(workspace.root)}
    monitor_extra: dict[str, Any] = {}
    if retrain_policy is not None:
        if not _monitor_accepts("retrain_policy"):
            raise ConfigError("a retrain policy was given but drift_monitor has no `retrain_policy` parameter "
                              "in this version; run the backtest without --policy")
        monitor_extra["retrain_policy"] = retrain_policy
    result = StreamResult(stream=stream.describe(), metric=stream.metric, lower_is_better=lower_is_better(
        stream.metric), oracle_window=oracle_window, delta=delta,
        policy={"model_policy": _policy_dict(gate),
                "retrain_policy": _policy_dict(retrain_policy or _default_retrain())},
        baseline_seconds=baseline_seconds)

    start = stream.initial_periods
    stream.source_frame(start).to_parquet(data, index=False)
    model_name = stream.name.replace("_", "-")
    try:
        first = continuous_training(model_name, source, stream.features, stream.trainer, policy=gate,
                                    window=stream.window(0, start), **common)
        result.first_training = f"{first.outcome}: {first.gate_reason or first.message}"
    except Exception as exc:
        result.first_training = f"crash: {_message(exc)}"
        result.crashes.append(f"first training: {_message(exc)}")

    loaded: dict[str, Any] = {}

    def champion_model() -> tuple[str | None, Any]:
        found = find_model(model_name, mlflow_server=server, workspace=workspace)
        if found is None:
            return None, None
        version = found.model.version
        if version not in loaded:
            loaded[version] = server.load_model(found.model.source, workspace)
        return version, loaded[version]

    runs_before = _training_runs(server, workspace)
    previous: tuple[str | None, Any] = (None, None)  # the champion before the latest promotion
    last: PeriodResult | None = None
    for index, t in enumerate(range(start, stream.n_periods)):
        show_progress("periods", f"backtest {stream.name}", index + 1, stream.n_periods - start)
        tick = time.perf_counter()
        rows = stream.rows(t, t + 1)
        record = PeriodResult(period=t, window=stream.window(t, t + 1), rows=len(rows), static=static[index],
                              oracle=oracle[index])
        version, model = champion_model()
        record.champion = version
        if model is not None:  # scored before its labels are shown to the loop
            record.policy = period_metric(model, rows, stream)
        if last is not None and last.promoted and previous[1] is not None and record.policy is not None:
            record.previous_champion_score = period_metric(previous[1], rows, stream)
            last.bad_promotion = worse_by(record.policy, record.previous_champion_score,
                                          lower_better=result.lower_is_better) > delta
        stream.source_frame(t + 1).to_parquet(data, index=False)
        try:
            report = drift_monitor(model_name, source, window=record.window, retrain=True, policy=gate,
                                   **monitor_extra, **common)
            record.drift, record.trigger, record.decision = describe_monitor(report)
        except Exception as exc:
            record.crash = _message(exc)
            record.decision = f"crash: {record.crash}"
            result.crashes.append(f"period {t}: {record.crash}")
        runs_after = _training_runs(server, workspace)
        record.retrained = runs_after > runs_before
        runs_before = runs_after
        now, _ = champion_model()
        record.promoted = now is not None and now != version
        if record.promoted:
            previous = (version, model)
        record.seconds = time.perf_counter() - tick
        result.periods.append(record)
        last = record
        if on_period is not None:
            on_period(record)
    result.wall_seconds = time.perf_counter() - started
    return result


def _message(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".replace("\n", " ")
    if len(text) > 300:
        text = text[:297] + "..."
    if not str(exc):
        text += " at " + traceback.format_exception(exc)[-2].strip().replace("\n", " ")[:200]
    return text


def _default_retrain() -> Any | None:
    """The retrain policy the monitor applies when given none (None in a version without one)."""
    import prefect_mlops.blocks as blocks

    return blocks.RetrainPolicy() if hasattr(blocks, "RetrainPolicy") else None


def _policy_dict(policy: Any | None) -> dict[str, Any] | None:
    if policy is None:
        return None
    fields = json.loads(policy.model_dump_json(exclude_none=True)) if hasattr(policy, "model_dump_json") else \
        dict(policy)
    # A Block's dump carries its registration (slug, document id); the policy is the rest.
    return {k: v for k, v in fields.items() if not k.startswith(("block_type", "block_document", "_"))}
