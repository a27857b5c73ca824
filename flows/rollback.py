"""Rollback: put the previous champion back, recorded in the registry (a promotion record) and as an artifact."""

from __future__ import annotations

from prefect import flow

from prefect_mlops.blocks import MlflowServer
from prefect_mlops.refs import ModelName, OptionalText
from prefect_mlops.tasks.deploy import Promotion, rollback_champion


@flow(name="rollback", log_prints=True, validate_parameters=True)
def rollback(
    model_name: ModelName, reason: str = "", mlflow_server: MlflowServer | None = None, workspace: OptionalText = None
) -> Promotion:
    """Make @previous-champion the champion again; run it twice to roll forward.

    Holds the model's lock, and first settles any promotion a killed run left half-done (see
    `prefect_mlops.tasks.reconcile`); refuses when @champion and @previous-champion are one version.

    Args:
        model_name: Registered model to roll back.
        reason: Why, recorded with the rollback.
        mlflow_server: Tracking server and registry; the workspace's SQLite store when empty.
        workspace: Folder of the embedded MLflow store.
    """
    return rollback_champion(model_name, reason=reason, mlflow_server=mlflow_server, workspace=workspace)
