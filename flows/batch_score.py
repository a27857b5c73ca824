"""Batch scoring: ingest -> score with @champion -> Parquet with predictions and the model version."""

from __future__ import annotations

from prefect import flow

from prefect_mlops.blocks import DataSource, MlflowServer
from prefect_mlops.errors import ConfigError
from prefect_mlops.refs import ModelAlias, ModelName, OptionalText, Window
from prefect_mlops.tasks.ingest import ingest
from prefect_mlops.tasks.score import ScoringResult, batch_score_task


@flow(name="batch-score", log_prints=True, validate_parameters=True)
def batch_score(
    model_name: ModelName,
    source: DataSource,
    output_uri: str,
    window: OptionalText = None,
    alias: ModelAlias = "champion",
    mlflow_server: MlflowServer | None = None,
    workspace: OptionalText = None,
) -> ScoringResult:
    """Score a dataset with the champion and write the predictions to Parquet.

    Args:
        model_name: Registered model to score with.
        source: Rows to score.
        output_uri: Parquet file to write (a local path or s3://, with the source's credentials).
        window: ISO-8601 interval 'start/end' on the source's time column, or 'latest'.
        alias: Model alias to score with.
        mlflow_server: Tracking server and registry; the workspace's SQLite store when empty.
        workspace: Folder for snapshots.
    """
    Window.parse(window)  # a malformed window fails here, naming the parameter, before any data is read
    if not output_uri.strip():
        raise ConfigError("output_uri is empty; give a Parquet path or s3://bucket/key for the predictions")
    if "://" in output_uri and not output_uri.startswith(("file://", "s3://")):
        raise ConfigError(f"output_uri {output_uri!r}: expected a local path, file:// or s3://bucket/key")
    dataset = ingest(source, name=f"{model_name}-scoring", window=window, workspace=workspace)
    return batch_score_task(dataset, model_name, output_uri, alias=alias, output=source,
                            mlflow_server=mlflow_server, workspace=workspace)
