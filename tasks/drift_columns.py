"""Drift statistics of column groups: the per-column half of drift-check, one group per task.

For wide data (hundreds of columns) the statistics dominate a drift check and each column's are
independent of the others'. `column_groups` cuts the columns into groups, `drift_statistics_of`
computes one group's (each task streams only its own columns from the snapshots), and
`prefect_mlops.tasks.drift.drift_report` turns the merged statistics into the same `DriftReport`
as `check_drift` (Holm correction, weights and the decision need every column, so they stay in
one place). The `drift-check-columns` flow (prefect_mlops.flows.fleet) runs the groups on Dask.
"""

from __future__ import annotations

from prefect import task

from prefect_mlops.errors import DriftCheckError
from prefect_mlops.refs import DatasetRef
from prefect_mlops.tasks import _drift_stats as stats
from prefect_mlops.tasks.drift import drift_statistics


def column_groups(columns: list[str], per_group: int) -> list[list[str]]:
    """`columns` in consecutive groups of at most `per_group`, in their order.

    Example:
        ```python
        from prefect_mlops.tasks.drift_columns import column_groups
        assert column_groups(["a", "b", "c", "d", "e"], 2) == [["a", "b"], ["c", "d"], ["e"]]
        ```
    """
    if per_group < 1:
        raise DriftCheckError(f"columns_per_task must be at least 1 column, got {per_group}")
    if len(set(columns)) != len(columns):
        twice = sorted({c for c in columns if columns.count(c) > 1})
        raise DriftCheckError(f"columns {twice} are listed more than once; list each column once")
    return [columns[start:start + per_group] for start in range(0, len(columns), per_group)]


def group_statistics(current: DatasetRef, reference: DatasetRef, columns: list[str], *,
                     model_name: str = "model", sample_rows: int | None = None) -> dict[str, stats.ColumnStats]:
    """One group's statistics (see `drift_statistics`); a column the current data lacks is named.

    Example:
        ```python
        import tempfile, numpy as np, pandas as pd
        from prefect_mlops.tasks.drift_columns import group_statistics
        from prefect_mlops.workspace import Workspace
        ws, rng = Workspace(tempfile.mkdtemp()), np.random.default_rng(0)
        ref = ws.write_snapshot(pd.DataFrame({"x": rng.normal(size=500), "y": rng.normal(size=500)}), name="r")
        cur = ws.write_snapshot(pd.DataFrame({"x": rng.normal(2, 1, 500), "y": rng.normal(size=500)}), name="c")
        assert list(group_statistics(cur, ref, ["y"])) == ["y"]
        ```
    """
    missing = [c for c in columns if c not in current.columns or c not in reference.columns]
    if missing:
        raise DriftCheckError(f"drift check of {model_name!r}: columns {missing} are missing from the current data "
                              f"{current.name!r} or the reference {reference.name!r}; fix the source or the column "
                              "list")
    return drift_statistics(current, reference, columns, model_name=model_name, sample_rows=sample_rows)


@task(name="drift-statistics", task_run_name="drift-statistics-{model_name}-{group}")
def drift_statistics_of(current: DatasetRef, reference: DatasetRef, columns: list[str], model_name: str = "model",
                        group: int = 0, sample_rows: int | None = None) -> dict[str, stats.ColumnStats]:
    """One column group's drift statistics (see `group_statistics`); `group` numbers the task run."""
    return group_statistics(current, reference, columns, model_name=model_name, sample_rows=sample_rows)
