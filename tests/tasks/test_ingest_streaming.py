"""ingest streams: batch boundaries change neither the rows kept nor the fingerprint, and memory stays flat."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from prefect_mlops.blocks import DataSource
from prefect_mlops.errors import DataSourceError
from prefect_mlops.refs import Window
from prefect_mlops.tasks import ingest as ingest_module
from prefect_mlops.tasks.features import plain_dtypes
from prefect_mlops.tasks.ingest import cut_window, ingest_dataset, latest_rows
from prefect_mlops.workspace import Workspace, read_frame


@pytest.fixture
def events() -> pd.DataFrame:
    """Times out of order, with ties and a gap (NaT), so the latest rows are not the last lines."""
    rng = np.random.default_rng(4)
    n = 97
    times = pd.Series(pd.Timestamp("2024-01-01") + pd.to_timedelta(rng.integers(0, 40, n), unit="D"))
    times[[5, 50]] = pd.NaT
    return pd.DataFrame({"when": times, "x": rng.normal(size=n), "c": rng.choice(["a", "b", None], n),
                         "n": pd.array(rng.integers(0, 9, n), dtype="Int64")})


def expected(frame: pd.DataFrame, source: DataSource, window: str | None, max_rows: int | None) -> pd.DataFrame:
    """What ingest kept when it read the whole source into pandas: the functions it used, on the whole frame."""
    frame = plain_dtypes(frame)
    if window:
        frame = cut_window(frame, Window.parse(window), source=source)
    if max_rows is not None and len(frame) > max_rows:
        frame = latest_rows(frame, max_rows, source=source)
    return frame.reset_index(drop=True)


@pytest.mark.parametrize(("window", "max_rows", "time_column"), [
    ("2024-01-05/2024-02-01", None, "when"),
    (None, 30, "when"),
    ("2024-01-05/2024-02-01", 25, "when"),
    (None, 1, "when"),
    (None, 500, "when"),
    (None, 30, None),
], ids=["window", "max-rows", "window-and-max-rows", "one-row", "more-than-there-are", "file-order"])
def test_window_and_max_rows_across_batches_keep_the_rows_a_whole_read_kept(tmp_path, workspace, events, monkeypatch,
                                                                           window, max_rows, time_column):
    path = tmp_path / "events.parquet"
    events.to_parquet(path, index=False, row_group_size=10)
    source = DataSource(uri=str(path), time_column=time_column)
    want = expected(events, source, window, max_rows)
    fingerprints = set()
    for rows_per_batch in (7, 64, 65_536):
        monkeypatch.setattr(ingest_module, "BATCH_ROWS", rows_per_batch)
        ref = ingest_dataset(source, window=window, max_rows=max_rows, workspace=workspace)
        got = read_frame(ref)
        # The snapshot's dtypes are the source's made plain (Int64 with no nulls: int64; strings: object).
        assert got.dtypes.to_dict() == want.dtypes.to_dict()
        pd.testing.assert_frame_equal(got, want)
        assert ref.rows == len(want)
        fingerprints.add(ref.fingerprint)
    assert len(fingerprints) == 1


def test_the_fingerprint_does_not_depend_on_row_groups_or_files(tmp_path, workspace, events):
    one = tmp_path / "one.parquet"
    events.to_parquet(one, index=False)
    folder = tmp_path / "parts"
    folder.mkdir()
    for k, start in enumerate(range(0, len(events), 40)):
        events.iloc[start:start + 40].to_parquet(folder / f"part-{k}.parquet", index=False, row_group_size=6)
    whole = ingest_dataset(DataSource(uri=str(one)), name="e", workspace=workspace)
    parts = ingest_dataset(DataSource(uri=str(folder), format="parquet"), name="e", workspace=workspace)
    assert parts.fingerprint == whole.fingerprint and parts.uri == whole.uri


def test_a_csv_folder_is_read_as_one_source(tmp_path, workspace, events):
    folder = tmp_path / "csv"
    folder.mkdir()
    for k, start in enumerate(range(0, len(events), 50)):
        events[["x", "c"]].iloc[start:start + 50].to_csv(folder / f"part-{k}.csv", index=False)
    ref = ingest_dataset(DataSource(uri=str(folder), format="csv"), name="e", workspace=workspace)
    assert ref.rows == len(events)
    assert read_frame(ref)["x"].round(6).tolist() == events["x"].round(6).tolist()


def test_offsets_mixed_across_batches_are_refused_as_within_one(tmp_path, workspace, monkeypatch):
    times = ["2024-01-01T00:00+01:00", "2024-01-02T00:00+01:00", "2024-01-03T00:00", "2024-01-04T00:00"]
    pd.DataFrame({"when": times, "x": range(4)}).to_parquet(tmp_path / "t.parquet", index=False)
    monkeypatch.setattr(ingest_module, "BATCH_ROWS", 2)
    with pytest.raises(DataSourceError, match=r"time column 'when' mixes timestamps with a UTC offset \(row index 0: "
                                              r".*\) and without one \(row index 2: '2024-01-03T00:00'\)"):
        ingest_dataset(DataSource(uri=str(tmp_path / "t.parquet"), time_column="when"),
                       window="2024-01-01/2024-02-01", workspace=workspace)


def test_a_bad_value_in_a_later_batch_is_named_by_its_row_in_the_file(tmp_path, workspace, monkeypatch):
    times = ["2024-01-01", "2024-01-02", "2024-01-03", "not a date"]
    pd.DataFrame({"when": times, "x": range(4)}).to_parquet(tmp_path / "t.parquet", index=False)
    monkeypatch.setattr(ingest_module, "BATCH_ROWS", 2)
    with pytest.raises(DataSourceError, match=r"the first at row index 3: 'not a date'"):
        ingest_dataset(DataSource(uri=str(tmp_path / "t.parquet"), time_column="when"), max_rows=2,
                       workspace=workspace)


def _peaks(path, workspace: Workspace, **options) -> tuple[int, int]:
    """Peak Arrow memory (a fresh pool) and peak Python/NumPy memory (tracemalloc) while ingesting `path`."""
    pool = pa.system_memory_pool() if pa.default_memory_pool().backend_name != "system" else pa.mimalloc_memory_pool()
    previous = pa.default_memory_pool()
    pa.set_memory_pool(pool)
    tracemalloc.start()
    try:
        ingest_dataset(DataSource(uri=str(path), time_column="when"), workspace=workspace, **options)
        return pool.max_memory(), tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        pa.set_memory_pool(previous)


def test_ingest_memory_does_not_grow_with_the_rows(tmp_path, workspace):
    def write(rows: int) -> str:
        rng = np.random.default_rng(rows)
        table = pa.table({"when": pa.array(np.datetime64("2024-01-01") + rng.integers(0, 10**6, rows)
                                           .astype("timedelta64[s]")),
                          "x": rng.normal(size=rows), "c": rng.choice(["alpha", "beta", "gamma"], rows)})
        path = tmp_path / f"{rows}.parquet"
        pq.write_table(table, path, row_group_size=50_000)  # memory is bounded by a row group, whatever the file
        return path

    small, large = write(100_000), write(1_000_000)
    for options in ({}, {"window": "2024-01-02/2024-01-10", "max_rows": 20_000}):
        arrow_small, python_small = _peaks(small, workspace, **options)
        arrow_large, python_large = _peaks(large, workspace, **options)
        # Ten times the rows: the whole data would be ~10x; streamed, the peak stays that of a few batches.
        assert arrow_large < 2.5 * arrow_small + 8 * 2**20, (options, arrow_small, arrow_large)
        assert python_large < 2.5 * python_small + 8 * 2**20, (options, python_small, python_large)
