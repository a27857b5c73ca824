"""Ingest: read Parquet or CSV from a path or S3, cut a time window, snapshot it into the workspace."""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING

from prefect import task

from prefect_mlops.blocks.data_source import DataSource
from prefect_mlops.errors import ConfigError, DataSourceError
from prefect_mlops.log import run_logger
from prefect_mlops.refs import DatasetRef, Window
from prefect_mlops.workspace import Workspace

if TYPE_CHECKING:
    import pandas as pd

_PARQUET_SUFFIXES = (".parquet", ".pq", ".parq")
_CSV_SUFFIXES = (".csv", ".csv.gz", ".csv.bz2", ".csv.zst")


def ingest_dataset(
    source: DataSource,
    *,
    name: str | None = None,
    window: Window | str | None = None,
    workspace: Workspace | None = None,
) -> DatasetRef:
    """Read `source`, keep the rows inside `window`, and snapshot them as Parquet.

    Example:
        ```python
        import tempfile, pandas as pd
        from prefect_mlops.blocks import DataSource
        from prefect_mlops.tasks.ingest import ingest_dataset
        from prefect_mlops.workspace import Workspace
        folder = tempfile.mkdtemp()
        pd.DataFrame({"x": [1, 2, 3]}).to_csv(f"{folder}/data.csv", index=False)
        ref = ingest_dataset(DataSource(uri=f"{folder}/data.csv"), workspace=Workspace(folder))
        assert ref.rows == 3
        ```
    """
    workspace = workspace or Workspace()
    window = Window.parse(window)
    name = name or _stem(source.uri)
    frame = read_source(source)
    if window is not None:
        frame = cut_window(frame, window, source=source)
    if frame.empty:
        where = f" inside window {window}" if window else ""
        raise DataSourceError(
            f"dataset {name!r} ({source.uri}) has no rows{where}; check the source or the window"
        )
    return workspace.write_snapshot(
        frame, name=name, source_uri=source.uri, window=str(window) if window else None
    )


def read_source(source: DataSource) -> pd.DataFrame:
    """Read a whole source into pandas, turning every failure into a `DataSourceError` naming the URI."""
    scheme = source.scheme()
    fmt = _format(source)
    if scheme == "file":
        path = Path(source.uri.removeprefix("file://")).expanduser()
        if not path.exists():
            raise DataSourceError(f"data source {source.uri}: no such file or folder; check the path")
        if path.is_file() and path.stat().st_size == 0:
            raise DataSourceError(f"data source {source.uri}: the file is empty (0 bytes); re-export it")
        return _parse(path, fmt, source.uri)
    if scheme == "s3":
        return _parse(io.BytesIO(_read_s3(source)), fmt, source.uri)
    raise DataSourceError(
        f"data source {source.uri}: unknown URI scheme {scheme!r}; expected a local path, file:// or s3://"
    )


def cut_window(frame: pd.DataFrame, window: Window, *, source: DataSource) -> pd.DataFrame:
    """Rows whose time column lies in `[window.start, window.end)`."""
    import pandas as pd

    column = source.time_column
    if not column:
        raise ConfigError(
            f"data source {source.uri}: a window ({window}) was asked for but the source has no "
            "time_column; set DataSource.time_column"
        )
    if column not in frame.columns:
        raise DataSourceError(
            f"data source {source.uri}: time column {column!r} is missing; columns are {list(frame.columns)}"
        )
    times = frame[column]
    if not pd.api.types.is_datetime64_any_dtype(times):
        try:
            times = pd.to_datetime(times)
        except (ValueError, TypeError) as exc:
            raise DataSourceError(
                f"data source {source.uri}: time column {column!r} does not hold timestamps ({exc})"
            ) from exc
    if getattr(times.dt, "tz", None) is not None:
        times = times.dt.tz_convert("UTC").dt.tz_localize(None)
    mask = pd.Series(True, index=frame.index)
    if window.start is not None:
        mask &= times >= pd.Timestamp(window.start).tz_localize(None)
    if window.end is not None:
        mask &= times < pd.Timestamp(window.end).tz_localize(None)
    return frame.loc[mask].reset_index(drop=True)


def _format(source: DataSource) -> str:
    if source.format != "auto":
        return source.format
    lower = source.uri.lower().rstrip("/")
    if lower.endswith(_CSV_SUFFIXES):
        return "csv"
    if lower.endswith(_PARQUET_SUFFIXES) or "." not in lower.rsplit("/", 1)[-1]:
        return "parquet"  # a suffix-less path is a Parquet folder
    raise DataSourceError(
        f"data source {source.uri}: cannot tell the format from the file name; set DataSource.format "
        "to 'parquet' or 'csv'"
    )


def _parse(where: Path | io.BytesIO, fmt: str, uri: str) -> pd.DataFrame:
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    try:
        if fmt == "parquet":
            table = pq.read_table(where)
        else:
            table = pacsv.read_csv(where)
    except (pa.ArrowInvalid, pa.ArrowException, OSError) as exc:
        kind = "a readable Parquet file" if fmt == "parquet" else "parseable CSV"
        raise DataSourceError(
            f"data source {uri}: not {kind} ({exc}); check the file or set DataSource.format"
        ) from exc
    if table.num_columns == 0:
        raise DataSourceError(f"data source {uri}: no columns found; the file is empty or has no header")
    return table.to_pandas()


def _read_s3(source: DataSource) -> bytes:
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, _, key = source.uri[len("s3://") :].partition("/")
    if not bucket or not key:
        raise DataSourceError(f"data source {source.uri}: expected s3://<bucket>/<key>")
    try:
        return source.s3_client().get_object(Bucket=bucket, Key=key)["Body"].read()
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        hints = {
            "NoSuchBucket": f"bucket {bucket!r} does not exist; check the bucket name or the endpoint",
            "NoSuchKey": f"no object {key!r} in bucket {bucket!r}; check the key",
            "InvalidAccessKeyId": "the access key id is not known to the store; fix the credentials",
            "SignatureDoesNotMatch": "the secret access key is wrong; fix the credentials",
            "AccessDenied": "access denied; give these credentials s3:GetObject on the object",
            "403": "access denied; check the credentials and their permissions",
            "404": f"no object {key!r} in bucket {bucket!r}",
        }
        hint = hints.get(code, f"the store answered {code or exc}")
        raise DataSourceError(f"data source {source.uri}: {hint}") from exc
    except BotoCoreError as exc:
        raise DataSourceError(
            f"data source {source.uri}: cannot reach the S3 store at "
            f"{source.s3_endpoint_url or 'AWS'} ({exc}); check DataSource.s3_endpoint_url"
        ) from exc


def _stem(uri: str) -> str:
    last = uri.rstrip("/").rsplit("/", 1)[-1]
    for suffix in _CSV_SUFFIXES + _PARQUET_SUFFIXES:
        if last.lower().endswith(suffix):
            return last[: -len(suffix)]
    return last or "dataset"


@task(name="ingest", task_run_name="ingest-{name}")
def ingest(
    source: DataSource,
    name: str | None = None,
    window: str | None = None,
    workspace: str | None = None,
) -> DatasetRef:
    """Snapshot a source's data into the workspace (see `ingest_dataset`)."""
    ref = ingest_dataset(source, name=name, window=window, workspace=Workspace(workspace))
    run_logger().info(
        "ingested %s rows x %s columns from %s -> %s", ref.rows, len(ref.columns), source.uri, ref.short()
    )
    return ref
