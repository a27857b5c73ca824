"""Drift monitor: ingest the current window -> drift-check against the champion -> event (-> retrain)."""

from __future__ import annotations

from prefect import flow, get_run_logger
from pydantic import BaseModel

from prefect_mlops.blocks import DataSource, MlflowServer, ModelPolicy
from prefect_mlops.errors import DriftCheckError
from prefect_mlops.flows.continuous_training import CycleReport, continuous_training
from prefect_mlops.refs import Window
from prefect_mlops.tasks.drift import DriftReport, drift_check
from prefect_mlops.tasks.ingest import ingest
from prefect_mlops.tasks.lineage import find_champion


class MonitorReport(BaseModel):
    """What one drift-monitor run found, and the retraining it started, if any."""

    drift: DriftReport
    retrain: CycleReport | None = None


@flow(name="drift-monitor", log_prints=True, validate_parameters=True)
def drift_monitor(
    model_name: str,
    source: DataSource,
    window: str | None = None,
    drift_share: float = 0.5,
    retrain: bool = False,
    policy: ModelPolicy | None = None,
    mlflow_server: MlflowServer | None = None,
    workspace: str | None = None,
) -> MonitorReport:
    """Compare the current window with the champion's training data; on drift emit an event.

    On a Prefect server the `prefect_mlops.drift.detected` event triggers the retrain-on-drift
    deployment. The embedded default evaluates no triggers, so there `retrain=True` starts the
    retraining here, with the champion's recipe, on the current window.

    Args:
        model_name: Registered model whose champion is watched.
        source: Where the current data comes from.
        window: ISO-8601 interval 'start/end' of the current data, or 'latest' for all rows.
        drift_share: Share of drifted columns at which the data counts as drifted (0-1).
        retrain: Start retraining in this run when drift is found (for the embedded default).
        policy: Quality-gate rules for that retraining.
        mlflow_server: Tracking server and registry; the workspace's SQLite store when empty.
        workspace: Folder for snapshots, suites and reports.
    """
    if not 0 < drift_share <= 1:
        raise ValueError(f"drift_share must be in (0, 1], got {drift_share}")
    window = str(Window.parse(window)) if Window.parse(window) else None
    server = mlflow_server or MlflowServer()

    champion = find_champion(model_name, mlflow_server=server, workspace=workspace)
    if champion is None or champion.lineage is None:
        raise DriftCheckError(f"model {model_name!r} has no @champion with lineage to compare against; "
                              "run continuous training first")
    recipe = champion.lineage
    current = ingest(source, name=f"{model_name}-current", window=window, workspace=workspace)
    drift = drift_check(current, recipe.dataset, model_name, columns=recipe.features.feature_columns,
                        drift_share=drift_share, champion_version=champion.model.version, workspace=workspace)
    if not (drift.detected and retrain):
        return MonitorReport(drift=drift)

    get_run_logger().info("retraining %s on window %s with the champion's recipe", model_name, window or "latest")
    cycle = continuous_training(model_name, source, recipe.features, recipe.trainer, policy=policy, window=window,
                                suite_path=recipe.suite_path, mlflow_server=server, workspace=workspace)
    return MonitorReport(drift=drift, retrain=cycle)
