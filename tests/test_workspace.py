"""Snapshots: Arrow IPC round-trips, Parquet snapshots of earlier versions, fingerprints independent of batches."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from prefect_mlops.errors import DataSourceError
from prefect_mlops.refs import DatasetRef
from prefect_mlops.workspace import BATCH_ROWS, fingerprint, iter_batches, read_frame, read_table


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


def _leftovers(workspace, name: str) -> list[str]:
    return sorted(p.name for p in (workspace.root / "datasets" / name).iterdir())


def test_a_failure_on_the_hashing_thread_leaves_no_temp_file_and_names_the_dataset(workspace, monkeypatch):
    from prefect_mlops import workspace as module

    def broken(self, batch, offset) -> None:
        raise RuntimeError("hashing broke")

    monkeypatch.setattr(module._Hasher, "_hash", broken)
    with pytest.raises(DataSourceError, match=r"dataset 'orders': the snapshot could not be written .*hashing broke"):
        workspace.write_snapshot(pd.DataFrame({"x": [1, 2]}), name="orders")
    assert _leftovers(workspace, "orders") == []


def test_a_refused_rename_leaves_no_temp_file(workspace, monkeypatch):
    from prefect_mlops import workspace as module

    def refuse(src, dst) -> None:
        raise PermissionError(13, "Permission denied", str(dst))

    monkeypatch.setattr(module.os, "replace", refuse)
    with pytest.raises(DataSourceError, match=r"dataset 'orders': .*PermissionError.*run ingest again"):
        workspace.write_snapshot(pd.DataFrame({"x": [1, 2]}), name="orders")
    assert _leftovers(workspace, "orders") == []


def test_a_damaged_snapshot_of_the_same_data_is_rewritten(workspace, frame):
    ref = workspace.write_snapshot(frame, name="orders")
    path = workspace.root / ref.uri
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # truncated: a crash, a full disk
    again = workspace.write_snapshot(frame, name="orders")
    assert again.uri == ref.uri
    pd.testing.assert_frame_equal(read_frame(again), read_frame(workspace.write_snapshot(frame, name="copy")))
    assert _leftovers(workspace, "orders") == [path.name]


def test_a_truncated_snapshot_is_named_with_what_to_do(workspace, frame):
    ref = workspace.write_snapshot(frame, name="orders")
    path = workspace.root / ref.uri
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    for read in (read_frame, read_table, lambda r: list(iter_batches(r)), lambda r: list(iter_batches(r, ["x"]))):
        with pytest.raises(DataSourceError, match=rf"dataset 'orders': snapshot {path} is damaged .*Delete that "
                                                  "file and run ingest again"):
            read(ref)


def test_unknown_columns_name_the_dataset_and_the_columns_it_has(workspace, frame):
    ref = workspace.write_snapshot(frame, name="orders")
    folder = workspace.folder("datasets", "old")
    frame.to_parquet(folder / "0123456789abcdef0123456789abcdef.parquet", index=False)
    old = DatasetRef(name="orders", uri=str(folder / "0123456789abcdef0123456789abcdef.parquet"),
                     fingerprint="0" * 64, rows=len(frame), columns={c: str(t) for c, t in frame.dtypes.items()})
    for snapshot in (ref, old):
        for read in (read_frame, read_table, lambda r, c: list(iter_batches(r, c))):
            with pytest.raises(DataSourceError, match=r"dataset 'orders' has no column 'prise' .*its columns are "
                                                      r"\['when', .*Fix the column name"):
                read(snapshot, ["x", "prise"])


def _rss() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmRSS:"))


def test_iter_batches_does_not_keep_what_it_has_read_in_memory(workspace):
    # 96 MB of snapshot in 64k-row batches, as ingest writes them; reading it through a memory map
    # would leave every page read counted in the process's memory until the end.
    rng = np.random.default_rng(0)
    batch = pa.record_batch({f"c{k}": rng.random(65_536) for k in range(4)})
    with workspace.snapshot_writer(batch.schema, name="wide") as writer:
        for _ in range(48):
            writer.write(batch)
    size = (workspace.root / writer.ref.uri).stat().st_size
    del batch
    before = peak = _rss()
    rows = 0
    for piece in iter_batches(writer.ref):
        rows += piece.num_rows
        total = sum(pc.sum(column).as_py() for column in piece.columns)  # every value read, as a stage reads it
        assert total > 0
        peak = max(peak, _rss())
    assert rows == 48 * 65_536 and size > 90e6
    assert peak - before < size / 4, f"memory grew by {(peak - before) / 1e6:.0f} MB over a {size / 1e6:.0f} MB file"


def test_a_frame_written_in_one_piece_is_stored_and_streamed_in_bounded_batches(workspace):
    # pandas gives one record batch for a whole frame; stored as one, a streaming reader would hold it all.
    frame = pd.DataFrame({"x": np.arange(300_000, dtype="float64"), "y": np.arange(300_000) % 7})
    ref = workspace.write_snapshot(frame, name="one-piece")
    stored = pa.ipc.open_file(ref.uri)
    assert stored.num_record_batches == -(-300_000 // BATCH_ROWS)
    assert max(stored.get_batch(i).num_rows for i in range(stored.num_record_batches)) == BATCH_ROWS
    pa.default_memory_pool().release_unused()
    before, peak = pa.total_allocated_bytes(), 0
    for _piece in iter_batches(ref):
        peak = max(peak, pa.total_allocated_bytes() - before)
    assert peak <= 2 * BATCH_ROWS * 16, f"streaming held {peak} bytes of Arrow memory"
    assert read_frame(ref).equals(frame)


def test_remove_partial_writes_takes_only_that_process_s_temp_files(tmp_path):
    from prefect_mlops.workspace import remove_partial_writes, write_atomic

    target = tmp_path / "c[1].png"  # glob characters in the name are taken literally
    mine = tmp_path / "c[1].png.4242.ab12cd34.tmp"
    other = tmp_path / "c[1].png.4343.ab12cd34.tmp"
    for leftover in (mine, other):
        leftover.write_bytes(b"half")
    write_atomic(target, lambda tmp: tmp.write_bytes(b"whole"), stage="test")  # a finished write leaves no temp file
    assert remove_partial_writes(target, 4242) == [mine]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([target.name, other.name])
