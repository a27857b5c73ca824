"""drift-check streams record batches: the same numbers as on loaded tables below the bound, bounded memory above."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd
import pytest

from prefect_mlops.tasks import _drift_stats as stats
from prefect_mlops.tasks.drift import (
    _sample,
    check_drift,
    column_statistics,
    drift_report,
    drift_statistics,
)
from prefect_mlops.workspace import read_table

COLUMNS = ["x1", "x2", "n", "c", "d"]


def frame(rows, *, shift=0.0, seed=0):
    rng = np.random.default_rng(seed)
    data = pd.DataFrame({
        "x1": rng.normal(shift, 1, rows),
        "x2": rng.exponential(1 + shift, rows),
        "n": pd.array(rng.integers(0, 5, rows), dtype="Int64"),
        "c": rng.choice(["red", "green", "blue"], rows, p=[0.5, 0.3, 0.2] if shift == 0 else [0.3, 0.3, 0.4]),
        "d": pd.Categorical(rng.choice(["a", "b"], rows)),
    })
    data.loc[data.index[::37], "x1"] = np.nan  # missing values left out and counted, batch by batch
    data.loc[data.index[::41], "n"] = pd.NA
    data.loc[data.index[::43], "c"] = None
    return data


def in_memory(current, reference, columns, sample_rows=None):
    """The statistics as they were computed on whole loaded tables."""
    cur, ref = (_sample(read_table(r, columns), sample_rows) for r in (current, reference))
    return column_statistics(ref, cur, columns)


def same(a: stats.ColumnStats, b: stats.ColumnStats) -> bool:
    def equal(x, y):
        return (isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y)) or x == y
    return all(equal(getattr(a, f.name), getattr(b, f.name)) for f in dataclasses.fields(a))


@pytest.mark.parametrize("sample_rows", [None, 2_000])
def test_streamed_statistics_equal_the_in_memory_ones_exactly(workspace, sample_rows):
    reference = workspace.write_snapshot(frame(90_000, seed=1), name="ref")  # two batches of 65,536 rows
    current = workspace.write_snapshot(frame(80_000, shift=0.2, seed=2), name="cur")
    streamed = drift_statistics(current, reference, COLUMNS, sample_rows=sample_rows)
    loaded = in_memory(current, reference, COLUMNS, sample_rows)
    assert all(same(streamed[c], loaded[c]) for c in COLUMNS)
    report = check_drift(current, reference, model_name="m", columns=COLUMNS, workspace=workspace,
                         sample_rows=sample_rows, report="never")  # the numbers, not Evidently's drawing
    verdict = stats.decide(loaded, reference_rows=min(90_000, sample_rows or 90_000),
                           current_rows=min(80_000, sample_rows or 80_000))
    assert report.decision == verdict.decision and report.reason == verdict.reason
    assert report.drifted_columns == verdict.drifted_columns
    assert report.sampled is (sample_rows is not None) and report.numeric_sample_rows is None


def test_column_subsets_merge_into_the_whole_report(workspace):
    reference = workspace.write_snapshot(frame(3_000, seed=1), name="ref")
    current = workspace.write_snapshot(frame(3_000, shift=0.5, seed=2), name="cur")
    parts = [drift_statistics(current, reference, part) for part in (["x1", "c"], ["x2", "n"], ["d"])]
    merged = {k: v for part in parts for k, v in part.items()}
    whole = check_drift(current, reference, model_name="m", columns=COLUMNS, workspace=workspace)
    split = drift_report(merged, current, reference, model_name="m", columns=COLUMNS, workspace=workspace)
    assert split.columns == whole.columns and split.reason == whole.reason and split.decision == "drifted"
    assert split.report_rows == whole.report_rows == 3_000


def test_above_the_bound_numbers_are_sampled_counts_exact_and_the_report_says_so(workspace):
    reference = workspace.write_snapshot(frame(20_000, seed=1), name="ref")
    current = workspace.write_snapshot(frame(20_000, shift=0.5, seed=2), name="cur")
    report = check_drift(current, reference, model_name="m", columns=COLUMNS, workspace=workspace, exact_rows=5_000)
    by_name = {c.column: c for c in report.columns}
    assert report.sampled and report.numeric_sample_rows == 5_000 and report.sample_rows is None
    assert report.current_rows == report.reference_rows == 20_000
    assert by_name["x1"].reference_count + by_name["x1"].reference_missing == 5_000
    assert by_name["c"].reference_count + by_name["c"].reference_missing == 20_000  # categories: every row
    exact = check_drift(current, reference, model_name="m", columns=COLUMNS, workspace=workspace)
    assert not exact.sampled and exact.numeric_sample_rows is None
    assert report.drifted_columns == exact.drifted_columns
    for column in ("x1", "x2"):  # a 5,000-row sample estimates the effects closely
        assert by_name[column].wasserstein == pytest.approx(
            next(c.wasserstein for c in exact.columns if c.column == column), abs=0.05)


def test_memory_does_not_grow_with_the_rows(workspace):
    import tracemalloc

    def peak(rows):  # numpy's allocations (the values kept and the statistics' work arrays)
        reference = workspace.write_snapshot(frame(rows, seed=1), name=f"ref{rows}")
        current = workspace.write_snapshot(frame(rows, shift=0.5, seed=2), name=f"cur{rows}")
        tracemalloc.start()
        try:
            drift_statistics(current, reference, COLUMNS, exact_rows=20_000)
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    small, large = peak(40_000), peak(400_000)
    assert large < 1.3 * small, (small, large)
