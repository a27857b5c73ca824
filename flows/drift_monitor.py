"""Monitor: ingest the current window -> drift-check and performance-check -> retrain decision (-> retrain)."""

from __future__ import annotations

from prefect import flow, get_run_logger
from pydantic import BaseModel

from prefect_mlops.blocks import DataSource, MlflowServer, ModelPolicy, RetrainPolicy
from prefect_mlops.errors import DriftCheckError
from prefect_mlops.flows.continuous_training import CycleReport, continuous_training
from prefect_mlops.refs import ModelName, OptionalFloat, OptionalText, Window
from prefect_mlops.tasks.drift import DriftReport, ReportMode, drift_check
from prefect_mlops.tasks.ingest import ingest
from prefect_mlops.tasks.lineage import find_champion, read_importance
from prefect_mlops.tasks.performance import PerformanceReport, performance_check
from prefect_mlops.tasks.retrain import RetrainDecision, monitoring_window, retrain_decision, retrain_details


class MonitorReport(BaseModel):
    """What one monitor run found, what the retrain policy decided, and the retraining it started, if any."""

    drift: DriftReport
    performance: PerformanceReport | None = None
    decision: RetrainDecision | None = None
    retrain: CycleReport | None = None


@flow(name="drift-monitor", log_prints=True, validate_parameters=True)
def drift_monitor(
    model_name: ModelName,
    source: DataSource,
    window: OptionalText = None,
    drift_share: OptionalFloat = None,
    retrain: bool = False,
    policy: ModelPolicy | None = None,
    mlflow_server: MlflowServer | None = None,
    workspace: OptionalText = None,
    retrain_policy: RetrainPolicy | None = None,
    report: ReportMode = "drifted",
) -> MonitorReport:
    """Judge the current window against the champion; when the retrain policy says so, emit one event.

    Two signals: data drift against the champion's training data, weighted by the champion's
    permutation importance, and the champion's performance on the window's labelled rows against
    its reference. The retrain policy turns them into one decision, with the rows to train on.
    On a Prefect server the decision's event (`prefect_mlops.performance.degraded`,
    `prefect_mlops.drift.detected` or `prefect_mlops.model.stale`) triggers the retraining
    deployment. The embedded default evaluates no triggers, so there `retrain=True` starts the
    retraining here, with the champion's recipe, on the policy's training window.

    Args:
        model_name: Registered model whose champion is watched.
        source: Where the current data comes from.
        window: ISO-8601 interval 'start/end' of the current data, or 'latest' for all rows.
        drift_share: Importance-weighted share of drifted columns at which the data counts as drifted (0-1);
            empty: the retrain policy's.
        retrain: Start retraining in this run when the policy calls for it (for the embedded default).
        policy: Quality-gate rules for that retraining.
        mlflow_server: Tracking server and registry; the workspace's SQLite store when empty.
        workspace: Folder for snapshots, suites and reports.
        retrain_policy: Triggers, training window, minimum rows and cool-down; the defaults when empty.
        report: When to draw Evidently's HTML drift report (its import costs ~2 s a check): "drifted" (the
            window drifted), "always", "never"; otherwise the report is a plain table of the decision.
    """
    retrain_policy = retrain_policy or RetrainPolicy()
    if drift_share is not None and not 0 < drift_share <= 1:
        raise ValueError(f"drift_share must be in (0, 1], got {drift_share}")
    drift_share = drift_share if drift_share is not None else retrain_policy.drift_share
    parsed = Window.parse(window)
    window = str(parsed) if parsed else None
    server = mlflow_server or MlflowServer()

    champion = find_champion(model_name, mlflow_server=server, workspace=workspace)
    if champion is None or champion.lineage is None:
        raise DriftCheckError(f"model {model_name!r} has no @champion with lineage to compare against; "
                              "run continuous training first")
    recipe = champion.lineage
    current = ingest(source, name=f"{model_name}-current", window=window, workspace=workspace)
    wider = monitoring_window(window, champion, current.rows, policy=retrain_policy)
    if wider:  # too few rows to judge: every row the champion has not seen
        current = ingest(source, name=f"{model_name}-current", window=wider, workspace=workspace)
    importance = read_importance(champion, mlflow_server=server, workspace=workspace)
    drift = drift_check(current, recipe.dataset, model_name, columns=recipe.features.feature_columns,
                        drift_share=drift_share, champion_version=champion.model.version, workspace=workspace,
                        importance=importance, min_rows=retrain_policy.min_rows, alpha=retrain_policy.alpha,
                        emit=False, champion_run_id=champion.model.run_id or None, mlflow_server=server,
                        report=report)
    performance = performance_check(current, champion, policy=policy, retrain_policy=retrain_policy,
                                    mlflow_server=server, workspace=workspace)
    decision = retrain_decision(model_name, champion, window, retrain_policy, drift=drift, performance=performance,
                                emit=not retrain, mlflow_server=server, workspace=workspace)
    report = MonitorReport(drift=drift, performance=performance, decision=decision)
    if not (decision.retrain and retrain):
        return report

    get_run_logger().info("retraining %s (%s) on %s with the champion's recipe", model_name, decision.trigger,
                          decision.training_window or "all rows")
    cycle = continuous_training(model_name, source, recipe.features, recipe.trainer, policy=policy,
                                window=decision.training_window, suite_path=recipe.suite_path,
                                mlflow_server=server, workspace=workspace, retrain_policy=retrain_policy,
                                max_rows=decision.max_rows, champion_degraded=decision.champion_degraded,
                                trigger=decision.trigger, trigger_details=retrain_details(decision, drift))
    return report.model_copy(update={"retrain": cycle})
