"""Batch scoring: the champion (or any alias) scores a dataset to Parquet, row by row."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
from prefect import task
from pydantic import BaseModel, ConfigDict

from prefect_mlops.blocks.data_source import DataSource
from prefect_mlops.blocks.mlflow_server import MlflowServer
from prefect_mlops.errors import ConfigError, FeatureError
from prefect_mlops.log import brief, run_logger
from prefect_mlops.refs import DatasetRef
from prefect_mlops.tasks.features import plain_dtypes
from prefect_mlops.tasks.lineage import find_model
from prefect_mlops.workspace import Workspace, read_frame, write_atomic


class ScoringResult(BaseModel):
    """Where the predictions went and which model made them."""

    model_config = ConfigDict(frozen=True)

    model_name: str
    model_version: str
    rows: int
    output_uri: str
    unseen_categories: dict[str, list[str]]


def unseen_categories(pipeline: Any, frame: Any) -> dict[str, list[str]]:
    """Category values in `frame` that the fitted one-hot encoder never saw (they score as all-zero)."""
    try:
        categorical = pipeline.named_steps["features"].named_transformers_["categorical"]
    except (KeyError, AttributeError):
        return {}
    found: dict[str, list[str]] = {}
    for column, known in zip(categorical.feature_names_in_, categorical[-1].categories_, strict=False):
        if column in frame.columns:
            new = set(frame[column].dropna().astype(str)) - {str(k) for k in known}
            if new:
                found[str(column)] = sorted(new)[:20]
    return found


def score_dataset(
    dataset: DatasetRef,
    *,
    model_name: str,
    output_uri: str,
    alias: str = "champion",
    output: DataSource | None = None,
    mlflow_server: MlflowServer | None = None,
    workspace: Workspace | None = None,
) -> ScoringResult:
    """Score every row of `dataset` with `models:/<model_name>@<alias>` and write Parquet.

    The output has the input's columns plus `prediction`, one `proba_<class>` column per
    class for classifiers, `model_name` and `model_version`.
    """
    server = mlflow_server or MlflowServer()
    workspace = workspace or Workspace()
    found = find_model(model_name, alias, mlflow_server=server, workspace=workspace)
    if found is None:
        raise ConfigError(f"model {model_name!r} has no @{alias} to score with; run continuous training first")
    pipeline = server.load_model(found.model.source, workspace,
                                 what=f"model {model_name!r} v{found.model.version} (@{alias})")
    frame = read_frame(dataset)
    columns = list(getattr(pipeline, "feature_names_in_", []))
    nested = {c: dataset.dropped_columns[c] for c in columns if c in dataset.dropped_columns}
    if nested:
        raise FeatureError(f"dataset {dataset.name!r}: feature columns {brief(nested, 1000)} that {model_name!r} "
                           f"v{found.model.version} needs are nested (struct, list or map); give them as the "
                           "plain columns the model was trained on")
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise FeatureError(f"dataset {dataset.name!r}: feature columns {brief(missing, 1000)} that {model_name!r} "
                           f"v{found.model.version} needs are missing; columns are "
                           f"{brief(sorted(map(str, frame.columns)), 2000)}")
    # pd.NA (string, Int64, boolean, Float64 columns) breaks scikit-learn's imputers: plain NumPy dtypes.
    features = plain_dtypes(frame[columns])
    unseen = unseen_categories(pipeline, features)
    scored = frame.copy()
    scored["prediction"] = pipeline.predict(features)
    if hasattr(pipeline, "predict_proba"):
        proba = np.asarray(pipeline.predict_proba(features))
        for index, label in enumerate(pipeline.classes_):
            scored[f"proba_{label}"] = proba[:, index]
    scored["model_name"] = model_name
    scored["model_version"] = found.model.version
    _write(scored, output_uri, output)
    return ScoringResult(model_name=model_name, model_version=found.model.version, rows=len(scored),
                         output_uri=output_uri, unseen_categories=unseen)


def _write(frame: Any, uri: str, output: DataSource | None) -> None:
    if uri.startswith("s3://"):
        buffer = io.BytesIO()
        frame.to_parquet(buffer, index=False)
        # One PUT of the whole file: S3 keeps all of it or nothing. The Block names every failure.
        (output or DataSource(uri=uri)).write_bytes(buffer.getvalue(), uri, what="batch scoring output")
        return
    if "://" in uri and not uri.startswith("file://"):
        raise ConfigError(f"output {uri}: expected a local path, file:// or s3://")
    path = Path(uri.removeprefix("file://"))
    path.parent.mkdir(parents=True, exist_ok=True)
    # atomic: a half-written output never looks like predictions; a full disk names the path
    write_atomic(path, lambda tmp: frame.to_parquet(tmp, index=False), stage="batch scoring output",
                 advice="free space there or give another output_uri, then retry")


@task(name="batch-score", task_run_name="score-{model_name}")
def batch_score_task(
    dataset: DatasetRef,
    model_name: str,
    output_uri: str,
    alias: str = "champion",
    output: DataSource | None = None,
    mlflow_server: MlflowServer | None = None,
    workspace: str | None = None,
) -> ScoringResult:
    """Score a dataset with an aliased model (see `score_dataset`)."""
    result = score_dataset(dataset, model_name=model_name, output_uri=output_uri, alias=alias, output=output,
                           mlflow_server=mlflow_server, workspace=Workspace(workspace))
    logger = run_logger()
    logger.info("scored %s rows with %s v%s -> %s", result.rows, model_name, result.model_version, output_uri)
    for column, values in result.unseen_categories.items():
        logger.warning("column %r has categories the model never saw, scored as unknown: %s", column,
                       brief(values, 1000))
    return result
