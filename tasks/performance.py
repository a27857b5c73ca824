"""Performance check: score the champion on newly labelled rows and compare with its reference.

The reference is what the champion scored on its own hold-out when it was trained (logged on its
MLflow run by evaluate). When the new rows' metric is worse by more than the retrain policy's
`max_decay` and a one-sided test that counts the noise of both estimates agrees, the champion counts as degraded and
`prefect_mlops.performance.degraded` is emitted; a deployment trigger on a Prefect server turns
that event into one retraining run. The target's own distribution is compared as well (label drift).
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
from prefect import task
from prefect.artifacts import create_markdown_artifact
from pydantic import BaseModel, ConfigDict, Field

from prefect_mlops.blocks.mlflow_server import MlflowServer
from prefect_mlops.blocks.model_policy import LOWER_IS_BETTER, ModelPolicy
from prefect_mlops.blocks.retrain_policy import RetrainPolicy
from prefect_mlops.log import run_logger
from prefect_mlops.refs import DatasetRef, artifact_key
from prefect_mlops.tasks.drift import model_resource_id
from prefect_mlops.tasks.evaluate import BOOTSTRAP_MAX_ROWS, _Outputs
from prefect_mlops.tasks.lineage import Champion
from prefect_mlops.workspace import Workspace, read_frame

PERFORMANCE_EVENT = "prefect_mlops.performance.degraded"


class PerformanceReport(BaseModel):
    """How the champion did on the newly labelled rows of one window, against its reference."""

    model_config = ConfigDict(frozen=True, ser_json_inf_nan="constants")

    model_name: str
    champion_version: str
    window: str | None
    decision: Literal["degraded", "ok", "not-enough-data", "no-labels", "no-reference"]
    reason: str = Field(description="The decision in one sentence, with the numbers.")
    primary_metric: str
    reference: float | None = Field(default=None, description="The champion's metric on its own hold-out.")
    reference_rows: int | None = None
    current: float | None = Field(default=None, description="The champion's metric on the new labelled rows.")
    bound: float | None = Field(
        default=None, description="One-sided bootstrap bound of `current` on its better side, at the policy's alpha.")
    p_value: float | None = Field(
        default=None, description="One-sided p-value of 'worse than the reference', counting both estimates' noise.")
    rows: int = Field(description="Labelled rows scored.")
    label_drift: dict[str, float | str | bool | None] | None = Field(
        default=None, description="The target's distribution against the champion's training data.")

    @property
    def degraded(self) -> bool:
        """Whether the champion measurably degraded."""
        return self.decision == "degraded"


def check_performance(
    current: DatasetRef,
    champion: Champion,
    *,
    policy: ModelPolicy | None = None,
    retrain_policy: RetrainPolicy | None = None,
    mlflow_server: MlflowServer | None = None,
    workspace: Workspace | None = None,
    bootstrap_samples: int = 200,
    record_live: bool = True,
) -> PerformanceReport:
    """Score `champion` on the labelled rows of `current` and judge the decay; the plain function.

    The reference is the better of the champion's hold-out metric and its metric on the first
    labelled window it served (recorded on the model version by the first check, `record_live`).

    Rows whose target is empty are not labelled yet and are left out. Too few labelled rows, no
    target column, or a champion without a logged reference give a decision, never an error.
    """
    server = mlflow_server or MlflowServer()
    workspace = workspace or Workspace()
    policy, retrain_policy = policy or ModelPolicy(), retrain_policy or RetrainPolicy()
    if champion.lineage is None:
        raise ValueError(f"model {champion.model.name!r} v{champion.model.version} has no lineage to score against")
    spec = champion.lineage.features
    metric = policy.primary(spec.task)
    base = {"model_name": champion.model.name, "champion_version": champion.model.version,
            "window": current.window, "primary_metric": metric}
    if spec.target not in current.columns:
        return PerformanceReport(**base, decision="no-labels", rows=0,
                                 reason=f"{current.name!r} has no target column {spec.target!r}: no labels yet")
    frame = read_frame(current, columns=[*spec.feature_columns, spec.target])
    frame = frame[frame[spec.target].notna()]
    rows = len(frame)
    label_drift = _label_drift(champion, frame[spec.target], spec.task, retrain_policy)
    base["label_drift"] = label_drift
    if rows < retrain_policy.min_rows:
        return PerformanceReport(**base, decision="not-enough-data", rows=rows,
                                 reason=f"{rows} labelled rows, fewer than the retrain policy's min_rows "
                                        f"{retrain_policy.min_rows}: no decision on performance")
    reference, reference_rows = _reference(champion, metric, server, workspace)
    live = _live_reference(champion, metric, server, workspace)
    source = "its hold-out"
    reference_se = None
    if reference is not None and live is not None and _better(metric, live[0], reference):
        # The hold-out can understate a model: judged against the best it showed, a decline is seen sooner.
        reference, reference_rows, reference_se = live[0], live[1], live[3]
        source = f"its first labelled window ({live[2]})"
    if reference is None:
        return PerformanceReport(**base, decision="no-reference", rows=rows,
                                 reason=f"champion v{champion.model.version} has no logged holdout_{metric} to "
                                        "compare with (trained before it was recorded); retrain to record one")
    model = server.load_model(champion.model.source, workspace,
                              what=f"champion {champion.model.name!r} v{champion.model.version} (@champion)")
    y = frame[spec.target].to_numpy()
    outputs = _Outputs(model, frame[spec.feature_columns], spec.task)
    value = outputs.metrics(y, spec.task)[metric]
    samples = _bootstrap(outputs, y, spec.task, metric, samples=bootstrap_samples, seed=spec.seed)
    quantile = retrain_policy.alpha if metric in LOWER_IS_BETTER else 1 - retrain_policy.alpha
    bound = float(np.quantile(samples, quantile)) if len(samples) else math.nan
    current_se = float(np.std(samples, ddof=1)) if len(samples) > 1 else math.nan
    if reference_se is None:  # the hold-out's noise, scaled from this window's by the rows each had
        reference_se = current_se * math.sqrt(rows / reference_rows) if reference_rows else 0.0
    sign = 1 if metric in LOWER_IS_BETTER else -1
    decay = sign * (value - reference) / max(abs(reference), 1e-12) if math.isfinite(value) else math.nan
    p_value = _one_sided_p(sign * (value - reference), math.hypot(current_se, reference_se))
    degraded = math.isfinite(decay) and decay > retrain_policy.max_decay and p_value < retrain_policy.alpha
    allowed = retrain_policy.max_decay
    if live is None and math.isfinite(value) and record_live:
        _record_live_reference(champion, metric, value, rows, current_se, current.window, server, workspace)
    words = (f"{metric} {value:.4f} on {rows} new labelled rows vs reference {reference:.4f} from {source} "
             f"({'worse' if decay > 0 else 'better'} by {abs(decay):.1%}; allowed decay {allowed:.1%}; "
             f"one-sided p {p_value:.2g} with both estimates' noise)") if math.isfinite(decay) else \
        f"{metric} could not be computed on the {rows} new labelled rows"
    return PerformanceReport(**base, decision="degraded" if degraded else "ok", rows=rows, reference=reference,
                             reference_rows=reference_rows, current=value, bound=bound, p_value=p_value,
                             reason=words + (": degraded" if degraded else ": within tolerance or within noise"))


def _reference(champion: Champion, metric: str, server: MlflowServer,
               workspace: Workspace) -> tuple[float | None, int | None]:
    """The champion's hold-out metric and hold-out size, as evaluate logged them on its run."""
    metrics = server.client(workspace).get_run(champion.model.run_id).data.metrics
    value = metrics.get(f"holdout_{metric}")
    rows = metrics.get("holdout_rows")
    return (float(value) if value is not None and math.isfinite(value) else None,
            int(rows) if rows is not None else None)


LIVE_TAG = "prefect_mlops.live_reference"


def _better(metric: str, value: float, than: float) -> bool:
    return value < than if metric in LOWER_IS_BETTER else value > than


def _one_sided_p(worse_by: float, se: float) -> float:
    """P(a drop this large or larger | no real drop), normal approximation of the difference of two estimates."""
    from scipy.stats import norm

    if not math.isfinite(worse_by) or not math.isfinite(se):
        return math.nan
    if se <= 0:
        return 0.0 if worse_by > 0 else 1.0
    return float(norm.sf(worse_by / se))


def _live_reference(champion: Champion, metric: str, server: MlflowServer,
                    workspace: Workspace) -> tuple[float, int, str, float] | None:
    """The champion's metric on the first labelled window it served, if a check recorded it."""
    import json

    tags = server.client(workspace).get_model_version(champion.model.name, champion.model.version).tags or {}
    try:
        found = json.loads(tags.get(LIVE_TAG, "null"))
    except json.JSONDecodeError:
        return None
    if not isinstance(found, dict) or found.get("metric") != metric or not math.isfinite(found.get("value", math.nan)):
        return None
    return (float(found["value"]), int(found.get("rows", 0)), str(found.get("window") or "latest"),
            float(found.get("se") or 0.0))


def _record_live_reference(champion: Champion, metric: str, value: float, rows: int, se: float, window: str | None,
                           server: MlflowServer, workspace: Workspace) -> None:
    import json

    record = {"metric": metric, "value": value, "rows": rows, "se": se if math.isfinite(se) else None,
              "window": window}
    server.client(workspace).set_model_version_tag(champion.model.name, champion.model.version, LIVE_TAG,
                                                   json.dumps(record))


def _bootstrap(outputs: _Outputs, y: np.ndarray, task: str, metric: str, *, samples: int, seed: int) -> np.ndarray:
    """The metric on bootstrap resamples of the rows (finite values only)."""
    rng = np.random.default_rng(seed)
    rows = len(y)
    base = rng.choice(rows, size=BOOTSTRAP_MAX_ROWS, replace=False) if rows > BOOTSTRAP_MAX_ROWS \
        else np.arange(rows)
    # Only the judged metric: the others would be computed `samples` times for nothing.
    values = [outputs.metrics(y, task, base[rng.integers(0, len(base), len(base))], (metric,))[metric]
              for _ in range(samples)]
    return np.asarray([v for v in values if math.isfinite(v)], dtype=float)


def _label_drift(champion: Champion, labels: object, task: str,
                 policy: RetrainPolicy) -> dict[str, float | str | bool | None] | None:
    """The target's distribution on the new rows against the champion's training data."""
    from prefect_mlops.tasks._drift_stats import label_drift

    spec = champion.lineage.features
    reference = champion.lineage.dataset
    if spec.target not in reference.columns or len(labels) == 0:
        return None
    try:
        before = read_frame(reference, columns=[spec.target])[spec.target]
    except FileNotFoundError:  # the champion's snapshot was cleaned away: no label drift, not an error
        return None
    verdict = label_drift(before.dropna().to_numpy(), np.asarray(labels), task, min_rows=policy.min_rows,
                          alpha=policy.alpha, column=spec.target)
    return {"column": spec.target, "decision": verdict.decision, "drifted": verdict.drifted,
            "method": verdict.method, "effect": verdict.effect, "threshold": verdict.threshold,
            "psi": verdict.stats.psi, "jensen_shannon": verdict.stats.jensen_shannon,
            "p_value": verdict.stats.p_value}


def emit_performance_event(report: PerformanceReport, *, training_window: str | None = None,
                           max_rows: int | None = None) -> str | None:
    """Emit `prefect_mlops.performance.degraded` for the report's model; returns the event id."""
    from prefect.events import emit_event

    event = emit_event(
        event=PERFORMANCE_EVENT,
        resource={"prefect.resource.id": model_resource_id(report.model_name),
                  "prefect.resource.name": report.model_name, "prefect-mlops.model": report.model_name},
        payload={"model_name": report.model_name, "champion_version": report.champion_version,
                 "window": report.window or "latest", "training_window": training_window or "latest",
                 "max_rows": max_rows, "metric": report.primary_metric, "reference": report.reference,
                 "current": report.current, "reason": report.reason},
    )
    return str(event.id) if event else None


def render_performance(report: PerformanceReport) -> str:
    """Markdown for a person: the decision, the numbers and the label drift."""
    lines = [f"# Performance of {report.model_name} v{report.champion_version}: {report.decision.upper()}", "",
             report.reason, ""]
    if report.label_drift:
        lines += ["| label drift | value |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in report.label_drift.items()]
    return "\n".join(lines)


@task(name="performance-check", task_run_name="performance-{champion.model.name}")
def performance_check(
    current: DatasetRef,
    champion: Champion,
    policy: ModelPolicy | None = None,
    retrain_policy: RetrainPolicy | None = None,
    mlflow_server: MlflowServer | None = None,
    workspace: str | None = None,
) -> PerformanceReport:
    """Judge the champion on newly labelled rows (see `check_performance`) and publish the result."""
    report = check_performance(current, champion, policy=policy, retrain_policy=retrain_policy,
                               mlflow_server=mlflow_server, workspace=Workspace(workspace))
    create_markdown_artifact(render_performance(report), key=artifact_key("performance", report.model_name),
                             description="The champion on newly labelled rows")
    (run_logger().warning if report.degraded else run_logger().info)("performance of %s: %s",
                                                                     report.model_name, report.reason)
    return report
