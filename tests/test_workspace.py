"""Snapshots: Arrow IPC round-trips, Parquet snapshots of earlier versions, fingerprints independent of batches."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from prefect_mlops.errors import DataSourceError
from prefect_mlops.refs import DatasetRef
from prefect_mlops.workspace import fingerprint, iter_batches, read_frame, read_table


@pytest.fixture
def frame() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    n = 50
    return pd.DataFrame({
        "when": pd.date_range("2024-01-01", periods=n, freq="h"),
        "aware": pd.date_range("2024-01-01", periods=n, freq="h", tz="Europe/Paris"),
        "x": rng.normal(size=n),
        "i": np.arange(n),
        "gappy": pd.array([None if k % 7 == 0 else k for k in range(n)], dtype="Int64"),
        "flag": rng.integers(0, 2, n).astype(bool),
        "text": [None if k % 5 == 0 else f"v{k % 3}" for k in range(n)],
        "cat": pd.Categorical(rng.choice(["a", "b", "c"], n)),
        "day": [dt.date(2024, 1, 1 + k % 28) for k in range(n)],
    })


def test_a_snapshot_is_an_arrow_ipc_file_that_reads_back_as_the_frame(workspace, frame):
    ref = workspace.write_snapshot(frame, name="orders")
    assert ref.uri.endswith(".arrow") and ref.rows == len(frame)
    with pa.memory_map(ref.uri) as source:
        assert pa.ipc.open_file(source).schema.names == list(frame.columns)  # Feather v2 = the IPC file format
    back = read_frame(ref)
    # Pandas' nullable dtypes come back as NumPy ones (what ingest's plain types are); the rest as written.
    expected = frame.assign(gappy=frame["gappy"].astype("float64"))
    pd.testing.assert_frame_equal(back, expected)
    assert ref.columns == {c: str(t) for c, t in back.dtypes.items()}
    assert read_table(ref, ["x", "cat"]).column_names == ["x", "cat"]
    assert read_frame(ref, ["text"])["text"].tolist() == frame["text"].tolist()


def test_read_table_memory_maps_the_snapshot_instead_of_copying_it(workspace, frame):
    ref = workspace.write_snapshot(frame, name="orders")
    before = pa.total_allocated_bytes()
    table = read_table(ref)
    assert table.num_rows == len(frame)
    assert pa.total_allocated_bytes() - before < 1024  # the buffers are the file's pages, not allocations


def test_the_same_data_is_one_file_and_one_fingerprint(workspace, frame):
    first = workspace.write_snapshot(frame, name="orders")
    second = workspace.write_snapshot(frame.copy(), name="orders")
    assert first.uri == second.uri and first.fingerprint == second.fingerprint == fingerprint(frame)
    changed = workspace.write_snapshot(frame.assign(x=frame["x"] + 1), name="orders")
    assert changed.fingerprint != first.fingerprint
    assert sorted(p.name for p in (workspace.root / "datasets" / "orders").iterdir()) == sorted(
        {first.uri.rsplit("/", 1)[1], changed.uri.rsplit("/", 1)[1]})


@pytest.mark.parametrize("rows_per_batch", [1, 3, 16, 49])
def test_the_fingerprint_does_not_depend_on_the_batches(workspace, frame, rows_per_batch):
    whole = workspace.write_snapshot(frame, name="orders")
    table = pa.Table.from_pandas(frame, preserve_index=False)
    with workspace.snapshot_writer(table.schema, name="orders") as writer:
        for batch in table.to_batches(max_chunksize=rows_per_batch):
            writer.write(batch)
    assert writer.ref.fingerprint == whole.fingerprint and writer.ref.uri == whole.uri
    pd.testing.assert_frame_equal(read_frame(writer.ref), read_frame(whole))


def test_category_dictionaries_that_differ_between_batches_become_one(workspace):
    first = pa.record_batch({"c": pa.array(["a", "b"]).dictionary_encode()})
    second = pa.record_batch({"c": pa.array(["c", "a", None]).dictionary_encode()})
    with workspace.snapshot_writer(first.schema, name="d") as writer:
        writer.write(first)
        writer.write(second)
    back = read_frame(writer.ref)["c"]
    assert str(back.dtype) == "category" and back.tolist()[:4] == ["a", "b", "c", "a"] and pd.isna(back[4])


def test_a_failed_write_leaves_no_file(workspace):
    batch = pa.record_batch({"x": [1, 2]})

    def write_then_fail() -> None:
        with workspace.snapshot_writer(batch.schema, name="d") as writer:
            writer.write(batch)
            raise RuntimeError("stop")

    with pytest.raises(RuntimeError, match="stop"):
        write_then_fail()
    assert list((workspace.root / "datasets" / "d").iterdir()) == []


def test_a_parquet_snapshot_of_an_earlier_version_still_reads(workspace, frame):
    folder = workspace.folder("datasets", "old")
    path = folder / "0123456789abcdef0123456789abcdef.parquet"
    frame.to_parquet(path, index=False)
    ref = DatasetRef(name="old", uri=str(path), fingerprint="0" * 64, rows=len(frame),
                     columns={c: str(t) for c, t in frame.dtypes.items()})
    pd.testing.assert_frame_equal(read_frame(ref), frame)
    assert read_table(ref, ["x"]).column("x").to_pylist() == frame["x"].tolist()
    assert [b.num_rows for b in iter_batches(ref, ["x"], batch_rows=20)] == [20, 20, 10]


def test_iter_batches_streams_at_most_batch_rows(workspace, frame):
    ref = workspace.write_snapshot(frame, name="orders")
    batches = list(iter_batches(ref, ["i"], batch_rows=8))
    assert all(b.num_rows <= 8 for b in batches) and sum(b.num_rows for b in batches) == len(frame)
    assert pa.Table.from_batches(batches).column("i").to_pylist() == list(range(len(frame)))


def test_a_snapshot_that_is_gone_is_named(workspace, frame):
    ref = workspace.write_snapshot(frame, name="orders")
    workspace.root.joinpath(ref.uri).unlink()
    for read in (read_frame, read_table, lambda r: list(iter_batches(r))):
        with pytest.raises(DataSourceError, match=r"dataset 'orders': snapshot .* is gone.*Run ingest again"):
            read(ref)
