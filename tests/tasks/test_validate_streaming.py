"""validate streams record batches: GX's own table, a suite learned in bounded memory, a GX frame that is bounded."""

from __future__ import annotations

import json
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from prefect_mlops.tasks import _gx_arrow
from prefect_mlops.tasks import validate as v
from prefect_mlops.workspace import iter_batches, read_frame


def data(rows, seed=0):
    rng = np.random.default_rng(seed)
    usage = rng.normal(40, 12, rows)
    usage[rng.random(rows) < 0.03] = np.nan
    frame = pd.DataFrame({
        "when": pd.date_range("2024-01-01", periods=rows, freq="min"),
        "amount": rng.uniform(10, 20, rows), "usage": usage, "calls": rng.poisson(2, rows),
        "plan": rng.choice(["basic", "plus", "pro", "rare"], rows, p=[0.5, 0.3, 0.1999, 0.0001]),
        "flag": rng.random(rows) < 0.3, "label": rng.integers(0, 2, rows),
        "region": pd.Series(rng.choice(["n", "s", None], rows, p=[0.5, 0.495, 0.005]), dtype=object),
        "cat": pd.Categorical(rng.choice(["x", "y"], rows)),
        "n": pd.array(rng.integers(0, 100, rows), dtype="Int64"),
    })
    frame.loc[rows - 3, "n"] = pd.NA  # one null, late: a sample rarely draws it
    frame.loc[11, "plan"] = "a-very-long-plan-name-indeed"
    return frame


def test_a_suite_learned_from_a_sample_and_exact_aggregates_is_the_whole_datas(workspace):
    ref = workspace.write_snapshot(data(20_000), name="d")
    whole = v.learn_suite(read_frame(ref), name="d")
    assert v.learn_suite_from(ref, name="d") == whole  # below the bound: the whole frame, as before
    for limit in (500, 5_000):  # above it: a sample, with missing counts, extremes and categories exact
        assert v.learn_suite_from(ref, name="d", limit=limit) == whole


def test_streamed_validation_is_gx_own_table_across_batches(workspace, monkeypatch):
    # Batches of 2,000 rows: what 65,536-row batches do to a larger snapshot, in a fraction of the time.
    monkeypatch.setattr(v, "iter_batches", lambda ref, columns=None, batch_rows=2_000: iter_batches(
        ref, columns, batch_rows=min(batch_rows, 2_000)))
    base = data(7_000)
    ref = workspace.write_snapshot(base, name="d")
    suite = v.learn_suite_from(ref, name="d")
    broken = base.copy()
    broken.loc[[5, 6_600, 6_900], "amount"] = 1e9  # impossible values in the first and the last batch
    broken.loc[6_650:6_660, "plan"] = "enterprise"
    broken.loc[6_800:, "calls"] = None  # an integer column whose nulls are all in the last batch
    broken["calls"] = broken["calls"].astype("Int64")
    current = workspace.write_snapshot(broken, name="d")
    assert sum(1 for _ in v.iter_batches(current)) >= 2
    streamed = v.run_suite_streamed(current, suite)
    assert streamed == v.run_suite(read_frame(current), suite)
    assert not any(o.sample_rows for o in streamed)
    failed = {(o.column, o.expectation) for o in streamed if not o.passed}
    assert ("amount", "expect_column_values_to_be_between") in failed
    assert ("calls", "expect_column_values_to_not_be_null") in failed


def test_expectations_gx_must_run_use_a_bounded_sample_and_say_so(workspace, monkeypatch):
    ref = workspace.write_snapshot(data(3_000), name="d")
    suite = {"name": "d", "expectations": [
        {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "amount"}},
        {"type": "expect_column_mean_to_be_between", "kwargs": {"column": "amount", "min_value": 0,
                                                                "max_value": 100}, "meta": {"role": "profile"}}]}
    exact = v.run_suite_streamed(ref, suite)
    assert exact == v.run_suite(read_frame(ref), suite) and not any(o.sample_rows for o in exact)
    monkeypatch.setattr(v, "GX_FRAME_ROWS", 1_000)
    sampled = v.run_suite_streamed(ref, suite)
    by_type = {o.expectation: o for o in sampled}
    assert by_type["expect_column_mean_to_be_between"].sample_rows == 1_000
    assert by_type["expect_column_mean_to_be_between"].passed
    assert by_type["expect_column_values_to_not_be_null"].sample_rows is None  # pushed down: every row


def peaks(folder: str, rows: int) -> tuple[int, int]:
    """Validating `rows` rows: the push-down's peak in Arrow's pool above reading alone, and its Python peak."""
    from prefect_mlops.workspace import Workspace

    workspace = Workspace(folder)
    # the column types the push-down handles (categories and nullable Int64 go to GX)
    ref = workspace.write_snapshot(data(rows, seed=rows).drop(columns=["cat", "n"]), name=f"d{rows}")
    suite = v.learn_suite_from(ref, name="d", limit=2_000)
    pool, top = pa.default_memory_pool(), [0]
    start = pool.bytes_allocated()

    def watched():
        for batch in iter_batches(ref):
            top[0] = max(top[0], pool.bytes_allocated() - start)
            yield batch

    def no_frame():
        raise AssertionError("every expectation of a learned suite is pushed down")

    tracemalloc.start()
    try:
        results, by_gx = _gx_arrow.run_suite_on_batches(watched(), suite, load_frame=no_frame)
        python_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert not by_gx and all(r.success for r in results)
    # What reading alone holds in Arrow's pool is the snapshot reader's; the push-down's is above it.
    start, floor = pool.bytes_allocated(), 0
    for _batch in iter_batches(ref):
        floor = max(floor, pool.bytes_allocated() - start)
    return max(top[0] - floor, 0), python_peak


@pytest.mark.parametrize("engine", ["arrow"])
def test_validate_dataset_streams_and_learns_in_bounded_memory(workspace, engine):
    # Measured in a fresh process: tracemalloc counts every thread's allocations, and this session's Prefect
    # log and event workers allocate whenever they flush.
    script = ("import json, sys; from tests.tasks.test_validate_streaming import peaks; "
              "print(json.dumps([peaks(sys.argv[1], 150_000), peaks(sys.argv[1], 1_500_000)]))")
    done = subprocess.run([sys.executable, "-c", script, str(workspace.root)], capture_output=True, text=True,
                          timeout=600, cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 0, done.stderr[-3000:]
    (arrow_small, python_small), (arrow_large, python_large) = json.loads(done.stdout.strip().splitlines()[-1])
    # Both sizes span several stored batches (65,536 rows each), so what a batch leaves behind counts in both.
    assert arrow_large <= 1.5 * arrow_small + (1 << 20), (arrow_small, arrow_large)
    assert python_large <= 1.5 * python_small, (python_small, python_large)


def typed(rows, seed=1):
    """Columns of the Arrow types the push-down does not read natively: GX must still judge every row."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "at": pd.date_range("2024-01-01", periods=rows, freq="min", tz="UTC"),
        "kind": pd.Categorical(rng.choice(["a", "b", "c"], rows)),
        "count32": rng.integers(0, 50, rows).astype("int32"),
        "ratio32": rng.uniform(0, 1, rows).astype("float32"),
        "ok": pd.array(rng.random(rows) < 0.5, dtype="boolean"),
    })


def test_a_large_streamed_validation_judges_every_row_of_every_type(workspace, monkeypatch):
    base = typed(6_000)
    suite = v.learn_suite(base, name="t")
    broken = base.copy()
    rows = [3_000, 3_001, 5_999]  # outside the 1,000-row sample GX_FRAME_ROWS draws (seed 0)
    broken.loc[rows, "at"] = pd.NaT
    broken.loc[rows, "ok"] = pd.NA
    broken.loc[rows, "count32"] = 10**6
    broken.loc[rows, "ratio32"] = np.nan
    broken["kind"] = broken["kind"].cat.add_categories(["zz"])
    broken.loc[rows, "kind"] = "zz"
    current = workspace.write_snapshot(broken, name="t")
    monkeypatch.setattr(v, "GX_FRAME_ROWS", 1_000)
    picked = np.random.default_rng(v.SAMPLE_SEED).choice(current.rows, size=1_000, replace=False)
    assert not set(rows) & set(picked.tolist())
    streamed = v.run_suite_streamed(current, suite)
    whole = v.run_suite(read_frame(current), suite)
    assert [o.model_dump() for o in streamed] == [o.model_dump() for o in whole]
    assert not any(o.sample_rows for o in streamed)
    failed = {o.column for o in streamed if not o.passed and o.role == "contract"}
    assert {"at", "ok", "count32", "ratio32"} <= failed, failed


def test_a_contract_aggregate_is_never_judged_on_a_sample(workspace, monkeypatch):
    ref = workspace.write_snapshot(data(3_000), name="d")
    suite = {"name": "d", "expectations": [
        {"type": "expect_column_mean_to_be_between", "kwargs": {"column": "amount", "min_value": 0,
                                                                "max_value": 100}}]}
    monkeypatch.setattr(v, "GX_FRAME_ROWS", 1_000)
    with pytest.raises(v.ConfigError, match=r"expect_column_mean_to_be_between on column 'amount'.*engine=\"gx\""):
        v.run_suite_streamed(ref, suite)
    report = v.validate_dataset(ref, suite_path=_write(workspace, suite), engine="gx")
    assert report.passed and not report.outcomes[0].sample_rows


def _write(workspace, suite):
    import json

    path = workspace.folder("suites") / "contract-mean.json"
    path.write_text(json.dumps(suite))
    return str(path)


def test_a_gx_error_on_the_sample_keeps_every_other_result_exact(workspace, monkeypatch):
    ref = workspace.write_snapshot(data(3_000), name="d")
    suite = {"name": "d", "expectations": [
        {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "amount"}},
        {"type": "expect_column_mean_to_be_between", "kwargs": {"column": "plan", "min_value": 0, "max_value": 1},
         "meta": {"role": "profile"}}]}  # the mean of strings: GX reports an error
    monkeypatch.setattr(v, "GX_FRAME_ROWS", 1_000)
    by_type = {o.expectation: o for o in v.run_suite_streamed(ref, suite)}
    assert by_type["expect_column_values_to_not_be_null"].passed
    assert by_type["expect_column_values_to_not_be_null"].sample_rows is None
    assert not by_type["expect_column_mean_to_be_between"].passed
    assert by_type["expect_column_mean_to_be_between"].sample_rows == 1_000
