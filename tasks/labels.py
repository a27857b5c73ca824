"""Join labels that arrive later to the service's prediction log, by request id or a key.

The result is a dataset of the served rows' features, the label, the prediction, the version and
the alias, written as a workspace snapshot: the performance check (`tasks/performance.py`)
scores the champion on it like any labelled window, and the progressive rollout compares the
canary's error with the champion's on it.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
from prefect import task

from prefect_mlops.blocks.data_source import DataSource
from prefect_mlops.errors import DataSourceError, FeatureError
from prefect_mlops.log import brief, run_logger
from prefect_mlops.refs import DatasetRef
from prefect_mlops.tasks.ingest import read_source
from prefect_mlops.workspace import Workspace

SERVED = "served"  # the log's `role` of the rows that answered a request (the others are shadow scores)


def read_prediction_log(root: str, *, output: DataSource | None = None) -> pd.DataFrame:
    """Every Parquet part under a prediction log folder (or s3://bucket/prefix), as one frame.

    Example:
        ```python
        import tempfile, pandas as pd
        from prefect_mlops.tasks.labels import read_prediction_log
        folder = tempfile.mkdtemp()
        pd.DataFrame({"request_id": ["a"], "prediction": [1]}).to_parquet(f"{folder}/part-1.parquet")
        assert read_prediction_log(folder)["request_id"].tolist() == ["a"]
        ```
    """
    if root.startswith("s3://"):
        store = output or DataSource(uri=root)
        parts = [pd.read_parquet(io.BytesIO(store.read_bytes(uri, what="prediction log")))
                 for uri in store.list_uris(root, what="prediction log") if uri.endswith(".parquet")]
    else:
        folder = Path(root.removeprefix("file://"))
        parts = [pd.read_parquet(p) for p in sorted(folder.rglob("*.parquet"))]  # not *.tmp: half-written
    if not parts:
        raise DataSourceError(f"prediction log {root}: no Parquet files there; is the service writing its log "
                              "to this place, and has it flushed (every few seconds)?")
    return pd.concat(parts, ignore_index=True)


def join_predictions(log: pd.DataFrame, labels: pd.DataFrame, *, on: str = "request_id",
                     label: str | None = None) -> pd.DataFrame:
    """Served predictions with their label: an inner join on `on`; `label` defaults to the labels' other column."""
    if on not in labels.columns:
        raise FeatureError(f"labels: no column {on!r} to join on; columns are {brief(list(labels.columns))}")
    if on not in log.columns:
        raise FeatureError(f"prediction log: no column {on!r} to join on; use 'request_id' or 'key'")
    if label is None:
        others = [c for c in labels.columns if c != on]
        if len(others) != 1:
            raise FeatureError(f"labels: name the label column (label=...); columns besides {on!r} are "
                               f"{brief(others)}")
        label = others[0]
    served = log[log["role"] == SERVED] if "role" in log.columns else log
    served = served.drop(columns=[label], errors="ignore")
    latest = labels[[on, label]].drop_duplicates(subset=on, keep="last")  # a corrected label wins
    return served.merge(latest, on=on, how="inner")


def join_labels(prediction_log: str, labels: DataSource, *, on: str = "request_id", label: str | None = None,
                name: str = "labelled-predictions", workspace: Workspace | None = None) -> DatasetRef:
    """Join `labels` to the prediction log and save the result as a workspace snapshot (the plain function)."""
    joined = join_predictions(read_prediction_log(prediction_log, output=labels if labels.scheme() == "s3"
                                                  else None), read_source(labels), on=on, label=label)
    return (workspace or Workspace()).write_snapshot(joined, name=name, source_uri=prediction_log)


def error_by_alias(prediction_log: str, labels: DataSource, *, on: str = "request_id",
                   label: str | None = None) -> dict[str, tuple[float, int]]:
    """Alias -> (error, labelled rows): misclassification rate, or mean absolute error for numbers."""
    truth_frame = read_source(labels)
    label = label or next((c for c in truth_frame.columns if c != on), None)
    frame = join_predictions(read_prediction_log(prediction_log), truth_frame, on=on, label=label)
    result: dict[str, tuple[float, int]] = {}
    for alias, rows in frame.groupby("alias"):
        truth, predicted = rows[label].to_numpy(), rows["prediction"].to_numpy()
        if np.issubdtype(predicted.dtype, np.floating) and not np.all(np.mod(predicted, 1) == 0):
            error = float(np.mean(np.abs(predicted - truth.astype(float))))
        else:
            error = float(np.mean(predicted.astype(str) != truth.astype(str)))
        result[str(alias)] = (error, len(rows))
    return result


@task(name="join-labels", task_run_name="join-labels-{name}")
def join_labels_task(prediction_log: str, labels: DataSource, on: str = "request_id", label: str | None = None,
                     name: str = "labelled-predictions", workspace: str | None = None) -> DatasetRef:
    """Join later labels to served predictions (see `join_labels`); the result feeds the performance check."""
    ref = join_labels(prediction_log, labels, on=on, label=label, name=name, workspace=Workspace(workspace))
    run_logger().info("joined %d labelled predictions from %s -> %s", ref.rows, prediction_log, ref.uri)
    return ref
