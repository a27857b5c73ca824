"""Drift-check: compare a current window with the champion's training data using Evidently.

On drift it emits the Prefect event `prefect_mlops.drift.detected` with the model as its
resource; a deployment trigger on a Prefect server turns that event into one retraining run.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from prefect import task
from prefect.artifacts import create_link_artifact, create_markdown_artifact
from pydantic import BaseModel, ConfigDict, Field

from prefect_mlops.errors import DriftCheckError
from prefect_mlops.log import run_logger
from prefect_mlops.refs import DatasetRef, artifact_key
from prefect_mlops.workspace import Workspace, read_frame, read_table

if TYPE_CHECKING:
    import pandas as pd

DRIFT_EVENT = "prefect_mlops.drift.detected"


class ColumnDrift(BaseModel):
    """One column's drift test."""

    model_config = ConfigDict(frozen=True, ser_json_inf_nan="constants")

    column: str
    method: str = Field(description="Evidently's test, e.g. 'K-S p_value' or 'Wasserstein distance (normed)'.")
    threshold: float
    score: float
    drifted: bool


class DriftReport(BaseModel):
    """Drift of a current window against the reference data."""

    model_config = ConfigDict(frozen=True, ser_json_inf_nan="constants")

    model_name: str
    drift_share: float = Field(description="Share of checked columns that drifted.")
    threshold: float = Field(description="Drift share at which the dataset counts as drifted.")
    detected: bool
    drifted_columns: list[str]
    columns: list[ColumnDrift]
    window: str | None
    current: DatasetRef
    reference: DatasetRef
    report_path: str
    sample_rows: int | None = Field(
        default=None, description="Rows each side was sampled down to before the tests; None: every row."
    )


def model_resource_id(model_name: str) -> str:
    """The Prefect event resource id for a model: `prefect-mlops.model.<name>`."""
    return f"prefect-mlops.model.{model_name}"


def check_drift(
    current: DatasetRef,
    reference: DatasetRef,
    *,
    model_name: str,
    columns: list[str],
    drift_share: float = 0.5,
    workspace: Workspace | None = None,
    sample_rows: int | None = None,
) -> DriftReport:
    """Run Evidently's data-drift preset on `columns` and save its HTML report.

    The dataset counts as drifted when at least `drift_share` of the columns drifted.

    `sample_rows` (off by default) compares a uniform random sample of at most that many rows
    of each side (seeded: the same data gives the same sample). Evidently's preset grows
    linearly with the rows (about a minute for 1M x 18 columns a side on one core); the scores
    are then those of the sample, and `DriftReport.sample_rows` (and the task's artifact) say so.
    Evidently picks p-value tests up to 1,000 rows and distances above, so a sample that small
    changes the tests themselves.
    """
    from evidently import Report
    from evidently.presets import DataDriftPreset

    workspace = workspace or Workspace()
    missing = [c for c in columns if c not in current.columns]
    if missing:
        raise DriftCheckError(f"drift check of {model_name!r}: current data {current.name!r} lacks columns "
                              f"{missing} that the champion was trained on; fix the source")
    if not columns:
        raise DriftCheckError(f"drift check of {model_name!r}: no columns to compare")
    if sample_rows is not None and sample_rows < 1:
        raise DriftCheckError(f"drift check of {model_name!r}: sample_rows must be a positive number of rows "
                              f"or None (no sampling), got {sample_rows}")
    current_frame, reference_frame = (_read_sample(ref, columns, sample_rows) for ref in (current, reference))
    sampled = sample_rows if sample_rows is not None and max(current.rows, reference.rows) > sample_rows else None
    snapshot = Report([DataDriftPreset(columns=columns, drift_share=drift_share)]).run(
        current_data=current_frame, reference_data=reference_frame)
    del current_frame, reference_frame
    per_column, share = [], math.nan
    for metric in snapshot.dict()["metrics"]:
        config, value = metric["config"], metric["value"]
        if config.get("type", "").endswith("DriftedColumnsCount"):
            share = float(value["share"])
        elif config.get("type", "").endswith("ValueDrift"):
            method, threshold, score = config["method"], float(config["threshold"]), float(value)
            # p-values drift when small; distances drift when large.
            drifted = score < threshold if "p_value" in method else score >= threshold
            per_column.append(ColumnDrift(column=config["column"], method=method, threshold=threshold,
                                          score=score, drifted=drifted))
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%f")
    path = workspace.folder("reports", model_name) / f"drift-{stamp}.html"
    snapshot.save_html(str(path))
    drifted = [c.column for c in per_column if c.drifted]
    return DriftReport(model_name=model_name, drift_share=share, threshold=drift_share,
                       detected=math.isfinite(share) and share >= drift_share, drifted_columns=drifted,
                       columns=per_column, window=current.window, current=current, reference=reference,
                       report_path=str(path), sample_rows=sampled)


def _read_sample(ref: DatasetRef, columns: list[str], sample_rows: int | None) -> pd.DataFrame:
    """The snapshot's `columns`; with `sample_rows`, at most that many rows drawn without replacement.

    Rows are picked in Arrow before the pandas conversion, so a sample never holds the whole frame.
    """
    if sample_rows is None:
        return read_frame(ref, columns)
    import numpy as np

    table = read_table(ref, columns)
    if table.num_rows <= sample_rows:
        return table.to_pandas()
    rows = np.sort(np.random.default_rng(0).choice(table.num_rows, size=sample_rows, replace=False))
    return table.take(rows).to_pandas()


def emit_drift_event(report: DriftReport, champion_version: str | None = None) -> str | None:
    """Emit `prefect_mlops.drift.detected` for the report's model; returns the event id."""
    from prefect.events import emit_event

    event = emit_event(
        event=DRIFT_EVENT,
        resource={"prefect.resource.id": model_resource_id(report.model_name),
                  "prefect.resource.name": report.model_name, "prefect-mlops.model": report.model_name},
        payload={"model_name": report.model_name, "drift_share": report.drift_share,
                 "threshold": report.threshold, "drifted_columns": report.drifted_columns,
                 "window": report.window or "latest", "champion_version": champion_version,
                 "current_fingerprint": report.current.fingerprint, "report": report.report_path},
    )
    return str(event.id) if event else None


@task(name="drift-check", task_run_name="drift-{model_name}")
def drift_check(
    current: DatasetRef,
    reference: DatasetRef,
    model_name: str,
    columns: list[str],
    drift_share: float = 0.5,
    champion_version: str | None = None,
    workspace: str | None = None,
    sample_rows: int | None = None,
) -> DriftReport:
    """Check drift (see `check_drift`), link the HTML report, and emit the drift event when drifted.

    `sample_rows`: compare at most that many sampled rows a side (see `check_drift`); None, the
    default, compares every row.
    """
    report = check_drift(current, reference, model_name=model_name, columns=columns, drift_share=drift_share,
                         workspace=Workspace(workspace), sample_rows=sample_rows)
    logger = run_logger()
    create_link_artifact(key=artifact_key("drift-report", model_name), link=f"file://{report.report_path}",
                         link_text=f"Evidently drift report ({report.drift_share:.0%} of columns drifted)",
                         description=f"Drift of {current.short()} against {reference.short()}")
    create_markdown_artifact(
        f"# Drift of {model_name}: {'DETECTED' if report.detected else 'none'}\n\n"
        f"drift_share {report.drift_share:.3f} (threshold {report.threshold}); window {report.window or 'latest'}"
        + (f"; tests on a sample of {report.sample_rows} rows a side" if report.sample_rows else "")
        + "\n\n| column | test | score | threshold | drifted |\n|---|---|---|---|---|\n"
        + "\n".join(f"| {c.column} | {c.method} | {c.score:.4g} | {c.threshold} | {'yes' if c.drifted else ''} |"
                    for c in report.columns)
        + f"\n\nReport: {report.report_path}",
        key=artifact_key("drift", model_name), description="Per-column drift tests")
    if report.detected:
        event_id = emit_drift_event(report, champion_version)
        logger.warning("drift detected for %s: drift_share=%.2f, columns %s; emitted %s (%s)", model_name,
                       report.drift_share, report.drifted_columns, DRIFT_EVENT, event_id)
    else:
        logger.info("no drift for %s: drift_share=%.2f", model_name, report.drift_share)
    return report
