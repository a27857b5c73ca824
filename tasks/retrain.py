"""The retrain decision: the retrain policy applied to one window's drift and performance reports.

It says whether to retrain, which trigger fired, and which rows to train on (the policy's
training window, counted back from the end of the window that triggered it). It emits one
event per decision, so a Prefect server starts one retraining per window, whatever fired.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Literal

from prefect import task
from pydantic import BaseModel, ConfigDict, Field

from prefect_mlops.blocks.mlflow_server import MlflowServer
from prefect_mlops.blocks.retrain_policy import RetrainPolicy
from prefect_mlops.log import run_logger
from prefect_mlops.refs import DatasetRef, Window
from prefect_mlops.tasks.drift import DRIFT_EVENT, DriftReport, model_resource_id
from prefect_mlops.tasks.features import FeatureSpec
from prefect_mlops.tasks.lineage import TAG, Champion
from prefect_mlops.tasks.performance import PERFORMANCE_EVENT, PerformanceReport
from prefect_mlops.workspace import Workspace

if TYPE_CHECKING:
    from mlflow import MlflowClient

STALE_EVENT = "prefect_mlops.model.stale"
RETRAINED_THROUGH = f"{TAG}.retrained_through"
"""Registered-model tag: the data time up to which the last triggered retraining (any outcome) learned."""


class RetrainDecision(BaseModel):
    """Whether one window calls for a retraining, why, and on which rows."""

    model_config = ConfigDict(frozen=True)

    model_name: str
    retrain: bool
    trigger: Literal["drift", "performance", "schedule"] | None = None
    reasons: list[str] = Field(description="Every consideration, in a person's words.")
    training_window: str | None = Field(default=None, description="ISO interval to train on; None: all rows.")
    max_rows: int | None = Field(default=None, description="At most this many latest rows of that window.")
    champion_degraded: str | None = Field(default=None, description="The performance report's reason, if degraded.")
    event_id: str | None = None


def decide_retraining(
    *,
    model_name: str,
    champion: Champion,
    window: Window | str | None,
    policy: RetrainPolicy,
    drift: DriftReport | None = None,
    performance: PerformanceReport | None = None,
    retrained_through: datetime | None = None,
) -> RetrainDecision:
    """Apply `policy` to the reports of one window; the plain function behind `retrain_decision`.

    Example:
        ```python
        from prefect_mlops.blocks import RetrainPolicy
        from prefect_mlops.refs import DatasetRef, ModelRef
        from prefect_mlops.tasks.lineage import Champion
        from prefect_mlops.tasks.retrain import decide_retraining
        champion = Champion(model=ModelRef(name="m", version="1", run_id="r", source="s"), lineage=None)
        decision = decide_retraining(model_name="m", champion=champion, window="2024-03-01/2024-04-01",
                                     policy=RetrainPolicy())
        assert not decision.retrain and decision.trigger is None
        ```
    """
    window = Window.parse(window)
    start, end = (window.start, window.end) if window else (None, None)
    reasons: list[str] = []
    fired: list[str] = []
    if performance is not None:
        reasons.append(f"performance: {performance.reason}")
        if performance.degraded and policy.wants("performance"):
            fired.append("performance")
    if drift is not None:
        reasons.append(f"drift: {getattr(drift, 'reason', None) or _drift_words(drift)}")
        if drift.detected and policy.wants("drift"):
            fired.append("drift")
    trained_end = _data_end(champion)
    if policy.wants("schedule") and policy.max_model_age and end and trained_end \
            and end - trained_end >= policy.max_model_age:
        fired.append("schedule")
        reasons.append(f"schedule: the champion's data ends {trained_end:%Y-%m-%d}, more than "
                       f"{policy.max_model_age} before this window's end {end:%Y-%m-%d}")
    if fired and fired[0] != "schedule":
        held = _cooled_down(policy, start, end, retrained_through)
        if held:
            reasons.append(held)
            fired = [f for f in fired if f == "schedule"]
    span_start, span_end = policy.training_window.span(start, end)
    judged = Window.parse(performance.window) if performance is not None and performance.window else None
    if fired and fired[0] == "performance" and judged is not None and judged.start is not None \
            and policy.change_rows is not None and performance.rows >= policy.change_rows:
        # The concept changed inside the window that shows the decay (the one judged, widened or not):
        # learn from after the change only.
        span_start = max(span_start, judged.start) if span_start else judged.start
        reasons.append(f"training window: the degraded window alone ({performance.rows} labelled rows >= "
                       f"change_rows {policy.change_rows}), so nothing from before the change is learned")
    training = str(Window(start=span_start, end=span_end)) if span_start or span_end else None
    trigger = fired[0] if fired else None
    degraded = performance.reason if performance is not None and performance.degraded else None
    return RetrainDecision(model_name=model_name, retrain=bool(fired), trigger=trigger, reasons=reasons,
                           training_window=training, max_rows=policy.training_window.row_cap(),
                           champion_degraded=degraded)


def monitoring_window(window: Window | str | None, champion: Champion, rows: int, *,
                      policy: RetrainPolicy) -> str | None:
    """A wider window to judge when this one is too small: every row since the champion's data ends.

    A small stream (a few dozen rows a period) would otherwise never reach `min_rows`, and
    never be judged. Returns None when the window is big enough or cannot be widened.

    Example:
        ```python
        from prefect_mlops.blocks import RetrainPolicy
        from prefect_mlops.refs import DatasetRef, ModelRef
        from prefect_mlops.tasks.features import FeatureSpec
        from prefect_mlops.tasks.lineage import Champion, Lineage, TrainerSpec
        from prefect_mlops.tasks.retrain import monitoring_window
        data = DatasetRef(name="m", uri="u", fingerprint="f", rows=9, columns={}, window="2024-01-01/2024-02-01")
        lineage = Lineage(model_name="m", dataset=data, features=FeatureSpec(target="y", numeric=["x"]),
                          trainer=TrainerSpec(), params_digest="d")
        champion = Champion(model=ModelRef(name="m", version="1", run_id="r", source="s"), lineage=lineage)
        wider = monitoring_window("2024-04-01/2024-05-01", champion, 40, policy=RetrainPolicy(min_rows=100))
        assert wider == "2024-02-01T00:00:00/2024-05-01T00:00:00"
        ```
    """
    window = Window.parse(window)
    trained_end = _data_end(champion)
    if rows >= policy.min_rows or window is None or window.start is None or window.end is None \
            or trained_end is None or trained_end >= window.start:
        return None
    return str(Window(start=trained_end, end=window.end))


def why_untrainable(dataset: DatasetRef, features: FeatureSpec, *, min_rows: int) -> str | None:
    """Why a window cannot give a fair challenger (too few rows, one class), or None when it can.

    A reason here ends the run as Skipped, a verdict with the reason, instead of a crash.

    Example:
        ```python
        import tempfile, pandas as pd
        from prefect_mlops.tasks.features import FeatureSpec
        from prefect_mlops.tasks.retrain import why_untrainable
        from prefect_mlops.workspace import Workspace
        ref = Workspace(tempfile.mkdtemp()).write_snapshot(pd.DataFrame({"x": range(9), "y": [1] * 9}), name="w")
        assert "one class" in why_untrainable(ref, FeatureSpec(target="y", numeric=["x"]), min_rows=5)
        ```
    """
    if dataset.rows < min_rows:
        return (f"window of {dataset.short()} holds {dataset.rows} rows, fewer than the retrain policy's "
                f"min_training_rows {min_rows}; widen the training window or wait for more data")
    if features.task != "classification" or features.target not in dataset.columns:
        return None  # a missing target is feature-build's error to name
    import pyarrow.compute as pc

    from prefect_mlops.workspace import read_table

    labels = pc.drop_null(read_table(dataset, columns=[features.target]).column(0))
    classes = pc.count_distinct(labels).as_py()
    if classes < 2:
        return (f"window of {dataset.short()} holds one class of {features.target!r} "
                f"({labels[0].as_py() if len(labels) else 'no labels'!r}): a classifier cannot be trained or "
                "compared on it; widen the training window")
    return None


def _cooled_down(policy: RetrainPolicy, start: datetime | None, end: datetime | None,
                 last: datetime | None) -> str | None:
    """Why the cool-down holds a retraining back, or None."""
    if end is None or last is None:
        return None
    period = end - start if start is not None else None
    # Counted in whole windows (months differ in length), and by the duration when one is set.
    windows = (end - last) / period if period else float("inf")
    if windows < policy.cooldown_periods + 0.5 or end - last <= policy.cooldown:
        return (f"cool-down: the last retraining learned from data up to {last:%Y-%m-%d}, "
                f"{windows:.0f} window(s) before this one ends ({end:%Y-%m-%d}); cooldown_periods "
                f"{policy.cooldown_periods}, cooldown {policy.cooldown}: no retraining yet")
    return None


def _data_end(champion: Champion) -> datetime | None:
    lineage = champion.lineage
    window = Window.parse(lineage.dataset.window) if lineage and lineage.dataset.window else None
    return window.end if window else None


def _drift_words(drift: DriftReport) -> str:
    return (f"drift_share {drift.drift_share:.2f} (threshold {drift.threshold}); drifted columns "
            f"{drift.drifted_columns or 'none'}")


def read_retrained_through(client: MlflowClient, model_name: str) -> datetime | None:
    """The data time the last retraining of `model_name` learned up to (a registered-model tag)."""
    from mlflow.exceptions import MlflowException

    try:
        value = client.get_registered_model(model_name).tags.get(RETRAINED_THROUGH)
    except MlflowException:
        return None
    try:
        return datetime.fromisoformat(value) if value else None
    except ValueError:
        return None


def record_retraining(model_name: str, window: Window | str | None, *, mlflow_server: MlflowServer | None = None,
                      workspace: str | Workspace | None = None) -> None:
    """Remember the end of the data a retraining learned from, whatever the gate then decides."""
    from mlflow.exceptions import MlflowException

    window = Window.parse(window)
    if window is None or window.end is None:
        return
    if not isinstance(workspace, Workspace):
        workspace = Workspace(workspace)
    client = (mlflow_server or MlflowServer()).client(workspace)
    try:
        client.set_registered_model_tag(model_name, RETRAINED_THROUGH, window.end.isoformat())
    except MlflowException as exc:  # no registered model yet (first run rejected): nothing to hold back
        run_logger().info("not recording the retraining of %s: %s", model_name, exc)


def emit_retrain_event(decision: RetrainDecision, *, window: str | None, drift: DriftReport | None,
                       performance: PerformanceReport | None) -> str | None:
    """One event per decision: a server's trigger starts one retraining, whichever signal fired."""
    from prefect.events import emit_event

    name = {"performance": PERFORMANCE_EVENT, "drift": DRIFT_EVENT, "schedule": STALE_EVENT}[decision.trigger]
    event = emit_event(
        event=name,
        resource={"prefect.resource.id": model_resource_id(decision.model_name),
                  "prefect.resource.name": decision.model_name, "prefect-mlops.model": decision.model_name},
        payload={"model_name": decision.model_name, "trigger": decision.trigger, "window": window or "latest",
                 "training_window": decision.training_window or "latest", "max_rows": decision.max_rows,
                 "champion_degraded": decision.champion_degraded or "", "reasons": decision.reasons,
                 "drift_share": drift.drift_share if drift else None,
                 "drifted_columns": drift.drifted_columns if drift else [],
                 "current_fingerprint": drift.current.fingerprint if drift else None,
                 "metric": performance.primary_metric if performance else None,
                 "reference": performance.reference if performance else None,
                 "current": performance.current if performance else None},
    )
    return str(event.id) if event else None


def retrain_details(decision: RetrainDecision, drift: DriftReport | None = None) -> dict[str, object]:
    """What a retraining started in the monitor's own run records as its trigger (see `describe_trigger`).

    On a server the retraining deployment's trigger passes the same facts on from the event.
    """
    from prefect.runtime import flow_run

    event = {"drift": DRIFT_EVENT, "performance": PERFORMANCE_EVENT, "schedule": STALE_EVENT}.get(
        decision.trigger or "")
    return {"event": event, "event_id": decision.event_id, "monitor_flow_run_id": flow_run.id,
            "drift_share": drift.drift_share if drift else None,
            "drifted_columns": drift.drifted_columns[:10] if drift else None,
            "champion_degraded": decision.champion_degraded}


@task(name="retrain-decision", task_run_name="decide-{model_name}")
def retrain_decision(
    model_name: str,
    champion: Champion,
    window: str | None,
    policy: RetrainPolicy,
    drift: DriftReport | None = None,
    performance: PerformanceReport | None = None,
    emit: bool = True,
    mlflow_server: MlflowServer | None = None,
    workspace: str | None = None,
) -> RetrainDecision:
    """Decide (see `decide_retraining`) and, when retraining is called for, emit its one event."""
    client = (mlflow_server or MlflowServer()).client(Workspace(workspace))
    decision = decide_retraining(model_name=model_name, champion=champion, window=window, policy=policy,
                                 drift=drift, performance=performance,
                                 retrained_through=read_retrained_through(client, model_name))
    logger = run_logger()
    if decision.retrain:
        event_id = emit_retrain_event(decision, window=window, drift=drift, performance=performance) if emit \
            else None
        decision = decision.model_copy(update={"event_id": event_id})
        logger.warning("%s: retrain (%s) on %s: %s", model_name, decision.trigger,
                       decision.training_window or "all rows", "; ".join(decision.reasons))
    else:
        logger.info("%s: no retraining: %s", model_name, "; ".join(decision.reasons) or "nothing to judge")
    return decision
