"""ingest: local and S3 sources, windows, fingerprints, and a clear error for every bad source."""

from __future__ import annotations

import boto3
import pandas as pd
import pytest

from prefect_mlops.blocks import DataSource
from prefect_mlops.errors import ConfigError, DataSourceError
from prefect_mlops.tasks.ingest import ingest, ingest_dataset
from prefect_mlops.workspace import read_frame
from tests.conftest import start_moto


@pytest.fixture
def frame() -> pd.DataFrame:
    return pd.DataFrame({"when": pd.date_range("2024-01-01", periods=6, freq="D"), "x": [1.0, 2, 3, 4, 5, 6],
                         "c": list("abcabc")})


def test_parquet_and_csv_of_the_same_data_snapshot_to_the_same_fingerprint(tmp_path, workspace, frame):
    frame.to_parquet(tmp_path / "d.parquet", index=False)
    frame.to_csv(tmp_path / "d.csv", index=False)
    from_parquet = ingest_dataset(DataSource(uri=str(tmp_path / "d.parquet")), workspace=workspace)
    from_csv = ingest_dataset(DataSource(uri=str(tmp_path / "d.csv")), workspace=workspace)
    assert from_parquet.rows == from_csv.rows == 6
    assert from_parquet.columns["x"] == "float64"
    assert read_frame(from_parquet).equals(frame)


def test_fingerprint_is_stable_when_the_same_data_is_rewritten(tmp_path, workspace, frame):
    path = tmp_path / "d.parquet"
    frame.to_parquet(path, index=False, compression="snappy")
    first = ingest_dataset(DataSource(uri=str(path)), workspace=workspace)
    frame.to_parquet(path, index=False, compression="gzip", row_group_size=2)
    second = ingest_dataset(DataSource(uri=f"file://{path}"), workspace=workspace)
    assert first.fingerprint == second.fingerprint and first.uri == second.uri
    frame.assign(x=frame.x + 1).to_parquet(path, index=False)
    assert ingest_dataset(DataSource(uri=str(path)), workspace=workspace).fingerprint != first.fingerprint


def test_window_keeps_rows_in_the_half_open_interval(tmp_path, workspace, frame):
    frame.to_parquet(tmp_path / "d.parquet", index=False)
    source = DataSource(uri=str(tmp_path / "d.parquet"), time_column="when")
    ref = ingest_dataset(source, window="2024-01-02/2024-01-04", workspace=workspace)
    assert ref.rows == 2 and ref.window == "2024-01-02T00:00:00/2024-01-04T00:00:00"
    assert read_frame(ref)["x"].tolist() == [2.0, 3.0]


def test_window_without_time_column_is_a_config_error(tmp_path, workspace, frame):
    frame.to_parquet(tmp_path / "d.parquet", index=False)
    with pytest.raises(ConfigError, match="time_column"):
        ingest_dataset(DataSource(uri=str(tmp_path / "d.parquet")), window="2024-01-01/2024-02-01",
                       workspace=workspace)


def test_empty_window_names_the_dataset_and_window(tmp_path, workspace, frame):
    frame.to_parquet(tmp_path / "d.parquet", index=False)
    source = DataSource(uri=str(tmp_path / "d.parquet"), time_column="when")
    with pytest.raises(DataSourceError, match=r"no rows inside window 2030-01-01"):
        ingest_dataset(source, window="2030-01-01/2030-02-01", workspace=workspace)


def test_bad_window_text_is_rejected_with_an_example():
    with pytest.raises(ConfigError, match="ISO-8601 interval"):
        ingest_dataset(DataSource(uri="x.parquet"), window="last tuesday")


@pytest.mark.parametrize(("setup", "uri_of", "message"), [
    (lambda p: None, lambda p: str(p / "missing.parquet"), "no such file"),
    (lambda p: (p / "empty.csv").write_bytes(b""), lambda p: str(p / "empty.csv"), "empty"),
    (lambda p: (p / "bad.parquet").write_bytes(b"PAR1 this is not parquet"), lambda p: str(p / "bad.parquet"),
     "not a readable Parquet file"),
    (lambda p: (p / "bad.csv").write_text('a,b\n1,2\n3,4,5,6\n"x'), lambda p: str(p / "bad.csv"),
     "not parseable CSV"),
    (lambda p: None, lambda p: "ftp://host/data.csv", "unknown URI scheme 'ftp'"),
    (lambda p: (p / "data.xlsx").write_bytes(b"x"), lambda p: str(p / "data.xlsx"), "cannot tell the format"),
])
def test_bad_sources_name_the_uri_and_say_what_to_do(tmp_path, workspace, setup, uri_of, message):
    setup(tmp_path)
    uri = uri_of(tmp_path)
    with pytest.raises(DataSourceError, match=message) as caught:
        ingest_dataset(DataSource(uri=uri), workspace=workspace)
    assert uri in str(caught.value)
    snapshots = workspace.root / "datasets"
    assert not snapshots.exists() or not any(p.is_file() for p in snapshots.rglob("*"))


@pytest.fixture
def bucket(s3_endpoint, frame):
    client = boto3.client("s3", endpoint_url=s3_endpoint, aws_access_key_id="test", aws_secret_access_key="test",
                          region_name="us-east-1")
    client.create_bucket(Bucket="lake")
    client.put_object(Bucket="lake", Key="sales/d.parquet", Body=frame.to_parquet(index=False))
    client.put_object(Bucket="lake", Key="sales/d.csv", Body=frame.to_csv(index=False).encode())
    return s3_endpoint


def s3_source(endpoint: str, uri: str, **kw) -> DataSource:
    return DataSource(uri=uri, s3_endpoint_url=endpoint, aws_access_key_id=kw.get("key", "test"),
                      aws_secret_access_key=kw.get("secret", "test"), region_name="us-east-1")


def test_s3_parquet_and_csv_read_through_boto3(bucket, workspace, frame):
    parquet = ingest_dataset(s3_source(bucket, "s3://lake/sales/d.parquet"), workspace=workspace)
    csv = ingest_dataset(s3_source(bucket, "s3://lake/sales/d.csv"), workspace=workspace)
    assert parquet.rows == csv.rows == len(frame)
    assert parquet.source_uri == "s3://lake/sales/d.parquet" and parquet.name == "d"


def test_s3_task_inside_a_flow_returns_a_reference(bucket, workspace):
    from prefect import flow

    @flow
    def wrapper():
        return ingest(s3_source(bucket, "s3://lake/sales/d.parquet"), name="sales", workspace=str(workspace.root))

    ref = wrapper()
    assert ref.name == "sales" and ref.rows == 6 and ref.uri.startswith(str(workspace.root))


def test_a_large_s3_object_is_spooled_in_chunks_not_held_in_memory(bucket, workspace, tmp_path):
    import tracemalloc

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    # 16 MB of incompressible values: holding the object as bytes shows as a 16 MB peak of Python memory.
    values = np.random.default_rng(0).random(2_000_000)
    pq.write_table(pa.table({"x": values}), tmp_path / "big.parquet", compression="none")
    size = (tmp_path / "big.parquet").stat().st_size
    boto3.client("s3", endpoint_url=bucket, aws_access_key_id="test", aws_secret_access_key="test",
                 region_name="us-east-1").upload_file(str(tmp_path / "big.parquet"), "lake", "big/d.parquet")
    tracemalloc.start()
    try:
        ref = ingest_dataset(s3_source(bucket, "s3://lake/big/d.parquet"), workspace=workspace)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert ref.rows == len(values) and size > 15_000_000
    assert peak < size / 4, f"Python memory peaked at {peak / 1e6:.1f} MB for a {size / 1e6:.1f} MB object"
    assert not any((workspace.root / "tmp").iterdir())  # the spooled copy is gone


@pytest.mark.parametrize(("uri", "message"), [
    ("s3://no-such-bucket/d.parquet", "bucket 'no-such-bucket' does not exist"),
    ("s3://lake/sales/missing.parquet", "no object 'sales/missing.parquet' in bucket 'lake'"),
    ("s3://lake", "expected s3://<bucket>/<key>"),
])
def test_missing_s3_bucket_or_key_is_named(bucket, workspace, uri, message):
    with pytest.raises(DataSourceError, match=message):
        ingest_dataset(s3_source(bucket, uri), workspace=workspace)


def test_wrong_s3_credentials_are_reported_as_such(workspace):
    # A second moto server that checks credentials from its first request on.
    proc, endpoint = start_moto({"INITIAL_NO_AUTH_ACTION_COUNT": "0"})
    try:
        with pytest.raises(DataSourceError, match="access key id is not known|credentials") as caught:
            ingest_dataset(s3_source(endpoint, "s3://lake/d.parquet", key="AKIAWRONG", secret="wrong"),
                           workspace=workspace)
        assert "s3://lake/d.parquet" in str(caught.value)
    finally:
        proc.terminate()
        proc.wait(10)


def test_unreachable_s3_endpoint_names_the_endpoint(workspace):
    from tests.conftest import free_port

    endpoint = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(DataSourceError, match=f"cannot reach the S3 store at {endpoint}"):
        ingest_dataset(s3_source(endpoint, "s3://lake/d.parquet"), workspace=workspace)


def test_nested_columns_are_left_out_of_the_snapshot_and_listed(tmp_path, workspace):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"x": [1.0, 2.0, 3.0], "meta": pa.array([{"a": 1}, None, {"a": 2}]),
                      "tags": pa.array([[1], None, [2, 3]]),
                      "attrs": pa.array([[("k", 1)], None, []], pa.map_(pa.string(), pa.int64()))})
    pq.write_table(table, tmp_path / "nested.parquet")
    ref = ingest_dataset(DataSource(uri=str(tmp_path / "nested.parquet")), workspace=workspace)
    assert ref.columns == {"x": "float64"}
    assert set(ref.dropped_columns) == {"meta", "tags", "attrs"}
    assert ref.dropped_columns["meta"].startswith("struct<")


def test_nullable_extension_dtypes_are_snapshotted_as_numpy(tmp_path, workspace):
    frame = pd.DataFrame({"s": pd.array(["a", None, "b"], dtype="string"),
                          "i": pd.array([1, None, 3], dtype="Int64"),
                          "b": pd.array([True, None, False], dtype="boolean"),
                          "f": pd.array([1.5, None, 2.5], dtype="Float64")})
    frame.to_parquet(tmp_path / "nullable.parquet", index=False)
    ref = ingest_dataset(DataSource(uri=str(tmp_path / "nullable.parquet")), workspace=workspace)
    assert ref.columns == {"s": "object", "i": "float64", "b": "object", "f": "float64"}


def test_a_ragged_csv_row_is_named_by_its_line(tmp_path, workspace):
    (tmp_path / "ragged.csv").write_text("a,b\n1,2\n3,4\n5,6,7\n8,9\n")
    with pytest.raises(DataSourceError, match=r"ragged.csv: .*line 4 has 3 fields where the header has 2: '5,6,7'"):
        ingest_dataset(DataSource(uri=str(tmp_path / "ragged.csv")), workspace=workspace)


@pytest.mark.parametrize(("times", "message"), [
    (["2024-01-01", "not a date", "2024-01-03"], r"time column 'when': 1 of 3 values are not timestamps, the first "
                                                 r"at row index 1: 'not a date'"),
    (["2024-01-01T00:00+01:00", "2024-01-02T00:00", "2024-01-03T00:00+01:00"],
     r"time column 'when' mixes timestamps with a UTC offset \(row index 0: .*\) and without one \(row index 1"),
    ([1704067200, 1704153600, 1704240000], r"time column 'when' holds numbers \(int64, e.g. 1704067200\), not "
                                           r"timestamps. Epoch numbers"),
    (["1704067200", "1704153600", "1704240000"], r"time column 'when' holds numbers"),
    (["2024-01-01", "2500-01-01", "2024-01-02"], r"the first at row index 1: '2500-01-01'"),
], ids=["unparseable", "mixed-offsets", "epoch-numbers", "epoch-text", "out-of-range"])
def test_time_column_problems_name_the_column_and_the_problem(tmp_path, workspace, times, message):
    pd.DataFrame({"when": times, "x": [1, 2, 3]}).to_parquet(tmp_path / "t.parquet", index=False)
    with pytest.raises(DataSourceError, match=message):
        ingest_dataset(DataSource(uri=str(tmp_path / "t.parquet"), time_column="when"),
                       window="2024-01-01/2024-02-01", workspace=workspace)


def test_offsets_that_differ_are_read_as_utc_and_aware_window_bounds_work(tmp_path, workspace):
    times = ["2024-03-30T12:00+01:00", "2024-04-01T12:00+02:00", "2024-04-02T12:00+02:00"]
    pd.DataFrame({"when": times, "x": [1, 2, 3]}).to_parquet(tmp_path / "dst.parquet", index=False)
    ref = ingest_dataset(DataSource(uri=str(tmp_path / "dst.parquet"), time_column="when"),
                         window="2024-04-01T11:00+01:00/2024-04-02", workspace=workspace)
    assert ref.rows == 1


@pytest.mark.parametrize("uri", ["", "   ", "s3://"])
def test_an_empty_uri_is_refused_naming_the_field(uri):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=r"DataSource.uri (is empty|'s3://' names no file)"):
        DataSource(uri=uri)


def test_repeated_column_names_are_named(tmp_path, workspace):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "dup.csv").write_text("a,a,b\n1,2,3\n")
    with pytest.raises(DataSourceError, match=r"dup.csv: column names \['a'\] appear more than once"):
        ingest_dataset(DataSource(uri=str(tmp_path / "dup.csv")), workspace=workspace)
    pq.write_table(pa.Table.from_arrays([pa.array([1]), pa.array([2])], names=["x", "x"]), tmp_path / "dup.parquet")
    with pytest.raises(DataSourceError, match=r"dup.parquet: .*column names \['x'\] appear more than once"):
        ingest_dataset(DataSource(uri=str(tmp_path / "dup.parquet")), workspace=workspace)


def test_a_nested_time_column_is_named(tmp_path, workspace):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"when": pa.array([{"day": 1}, {"day": 2}]), "x": [1, 2]}), tmp_path / "t.parquet")
    with pytest.raises(DataSourceError, match=r"time column 'when' is nested \(struct<day: int64>\)"):
        ingest_dataset(DataSource(uri=str(tmp_path / "t.parquet"), time_column="when"), workspace=workspace)


def test_a_parquet_folder_whose_files_disagree_on_a_type_names_the_column_and_the_files(tmp_path, workspace):
    folder = tmp_path / "sales"
    folder.mkdir()
    pd.DataFrame({"x": [1, 2], "y": ["a", "b"]}).to_parquet(folder / "a.parquet", index=False)
    pd.DataFrame({"x": ["u", "v"], "y": ["a", "b"]}).to_parquet(folder / "b.parquet", index=False)
    with pytest.raises(DataSourceError, match=r"data source .*sales: the files disagree on a column's type: column "
                                              r"'x' is int64 in a.parquet but string in b.parquet.*same type"):
        ingest_dataset(DataSource(uri=str(folder)), workspace=workspace)


def test_a_whole_read_of_a_compressed_s3_csv_is_spooled_and_decompressed(bucket, frame):
    import gzip

    from prefect_mlops.tasks.ingest import read_source

    boto3.client("s3", endpoint_url=bucket, aws_access_key_id="test", aws_secret_access_key="test",
                 region_name="us-east-1").put_object(Bucket="lake", Key="labels/d.csv.gz",
                                                     Body=gzip.compress(frame.to_csv(index=False).encode()))
    got = read_source(s3_source(bucket, "s3://lake/labels/d.csv.gz"))
    assert got["x"].tolist() == frame["x"].tolist() and got["c"].tolist() == frame["c"].tolist()
