"""Ingest: stream Parquet or CSV from a path, a folder or S3, cut a time window, snapshot it into the workspace."""

from __future__ import annotations

import contextlib
import io
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from prefect import task

from prefect_mlops.blocks.data_source import DataSource
from prefect_mlops.errors import ConfigError, DataSourceError
from prefect_mlops.log import brief, run_logger
from prefect_mlops.refs import DatasetRef, Window
from prefect_mlops.workspace import Workspace, write_atomic

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    import pyarrow as pa

_PARQUET_SUFFIXES = (".parquet", ".pq", ".parq")
BATCH_ROWS = 65_536  # rows per batch read from the source: memory holds about one batch of each column
_CSV_SUFFIXES = (".csv", ".csv.gz", ".csv.bz2", ".csv.zst")


def ingest_dataset(
    source: DataSource,
    *,
    name: str | None = None,
    window: Window | str | None = None,
    workspace: Workspace | None = None,
    max_rows: int | None = None,
) -> DatasetRef:
    """Read `source`, keep the rows inside `window` (at most the latest `max_rows`), and snapshot them.

    The source is streamed batch by batch into an Arrow IPC snapshot, its fingerprint computed on
    the way: memory does not grow with the rows. With `max_rows`, a first pass reads only the time
    column to find the cut. Nested columns (struct, list, map) are left out of the snapshot and
    listed in `DatasetRef.dropped_columns`: a model cannot take them as they are, and feature-build
    names them when the feature spec asks for one. Pandas' nullable dtypes (`string`, `Int64`,
    `boolean`...) read back as NumPy ones, so `pd.NA` never reaches scikit-learn.

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
    with _open(source, workspace) as opened:
        schema = opened.dataset.schema
        dropped = nested_columns(schema)
        if source.time_column in dropped:
            raise DataSourceError(f"data source {source.uri}: time column {source.time_column!r} is nested "
                                  f"({dropped[source.time_column][:120]}), not timestamps; point "
                                  "DataSource.time_column at a timestamp column")
        if dropped:
            run_logger().warning(
                "dataset %r: left out nested columns %s (a model takes one value per column); flatten them "
                "into plain columns to use them as features", name, brief(sorted(dropped), 1000))
        index = _index_columns(schema)  # a pandas index saved with the data: left out, as before
        columns = [c for c in schema.names if c not in dropped and c not in index]
        if window is not None and not source.time_column:
            raise ConfigError(
                f"data source {source.uri}: a window ({window}) was asked for but the source has no "
                "time_column; set DataSource.time_column"
            )
        if window is not None and source.time_column not in columns:
            raise DataSourceError(
                f"data source {source.uri}: time column {source.time_column!r} is missing; columns are {columns}"
            )
        cut = _Cut(source, window, columns)
        if max_rows is not None:
            cut.find_latest(opened, max_rows)
        with workspace.snapshot_writer(schema_of(schema, columns), name=name, source_uri=source.uri,
                                       window=str(window) if window else None) as writer:
            offset = 0
            for batch in opened.batches(columns):
                writer.write(cut(batch, offset))
                offset += batch.num_rows
            if not writer.hasher.rows:
                where = f" inside window {window}" if window else ""
                raise DataSourceError(
                    f"dataset {name!r} ({source.uri}) has no rows{where}; check the source or the window"
                )
    ref = writer.ref
    return ref.model_copy(update={"dropped_columns": dropped}) if dropped else ref


def schema_of(schema: pa.Schema, columns: list[str]) -> pa.Schema:
    """`schema` restricted to `columns`, in that order."""
    import pyarrow as pa

    return pa.schema([schema.field(c) for c in columns])


class _Cut:
    """Which rows of each batch to keep: inside the window, and among the latest `max_rows` if asked.

    The latest rows are found in a first pass over the time column alone (`find_latest`): the
    `max_rows`-th latest time, how many rows carry it, and how many of those to skip (the earliest
    in file order, as a stable sort keeps the later ones).
    """

    def __init__(self, source: DataSource, window: Window | None, columns: list[str]) -> None:
        self.source, self.window = source, window
        self.column = source.time_column if source.time_column in columns else None
        self.skip_rows = 0  # without a time column: the first rows in file order
        self.threshold: int | None = None
        self.skip_ties = 0
        self.ties_seen = 0
        self.offsets: dict[bool, tuple[int, str]] = {}  # first value with / without a UTC offset

    def _keys(self, batch: pa.RecordBatch, offset: int) -> tuple[np.ndarray | None, np.ndarray | None]:
        """(window mask, sort keys) of `batch`; NaT sorts last, as numpy sorts it."""
        import numpy as np
        import pandas as pd

        if self.column is None:
            return None, None
        values = batch.column(self.column).to_pandas()
        values.index = pd.RangeIndex(offset, offset + len(values))
        times = as_timestamps(values, column=self.column, uri=self.source.uri)
        self._check_offsets(values)
        mask = None
        if self.window is not None:
            mask = np.ones(len(times), dtype=bool)
            if self.window.start is not None:
                mask &= (times >= _naive_utc(self.window.start)).to_numpy()
            if self.window.end is not None:
                mask &= (times < _naive_utc(self.window.end)).to_numpy()
        keys = times.to_numpy().view("i8").copy()
        keys[np.isnat(times.to_numpy())] = np.iinfo(np.int64).max
        return mask, keys

    def _check_offsets(self, values: pd.Series) -> None:
        """Text timestamps with a UTC offset in one batch and without one in another: as in one batch, refused."""
        import pandas as pd

        if pd.api.types.is_datetime64_any_dtype(values) or values.dtype != object:
            return
        text = values.dropna().astype(str)
        if not len(text):
            return
        offset = text.str.contains(_OFFSET, regex=True)
        for kind in (True, False):
            if kind not in self.offsets and (offset == kind).any():
                first = (offset == kind).idxmax()
                self.offsets[kind] = (first, text[first])
        if len(self.offsets) == 2:
            (with_at, with_text), (without_at, without_text) = self.offsets[True], self.offsets[False]
            raise DataSourceError(
                f"data source {self.source.uri}: time column {self.column!r} mixes timestamps with a UTC offset "
                f"(row index {with_at}: {brief(with_text)}) and without one (row index {without_at}: "
                f"{brief(without_text)}); a value without an offset has no time zone. Give every value an "
                "offset, or none"
            )

    def find_latest(self, opened: _Opened, rows: int) -> None:
        """First pass: the time (or file position) from which on the latest `rows` rows lie."""
        import numpy as np

        if self.column is None:
            total = opened.count_rows()
            self.skip_rows = max(0, total - rows)
            return
        best = np.empty(0, dtype=np.int64)
        threshold, dropped_ties, offset = None, 0, 0
        for batch in opened.batches([self.column]):
            mask, keys = self._keys(batch, offset)
            offset += batch.num_rows
            pool = np.concatenate([best, keys if mask is None else keys[mask]])
            if len(pool) <= rows:
                best = pool
                continue
            cut = len(pool) - rows
            pool = np.partition(pool, cut)
            # The threshold only rises: ties dropped under an earlier, lower threshold are not ties of this one.
            dropped_ties = (dropped_ties if pool[cut] == threshold else 0) + int((pool[:cut] == pool[cut]).sum())
            threshold, best = pool[cut], pool[cut:]
        self.offsets.clear()
        if threshold is None:
            return  # no more rows than asked for: keep them all
        self.threshold = int(threshold)
        needed = rows - int((best > threshold).sum())
        self.skip_ties = dropped_ties + int((best == threshold).sum()) - needed

    def __call__(self, batch: pa.RecordBatch, offset: int) -> pa.RecordBatch:
        import numpy as np
        import pyarrow as pa

        if self.column is None:
            if not self.skip_rows or offset >= self.skip_rows:
                return batch
            return batch.slice(self.skip_rows - offset)
        if self.window is None and self.threshold is None:
            return batch  # the time column is read only to cut rows
        mask, keys = self._keys(batch, offset)
        keep = np.ones(batch.num_rows, dtype=bool) if mask is None else mask
        if self.threshold is not None:
            ties = keep & (keys == self.threshold)
            order = np.cumsum(ties) + self.ties_seen  # 1-based rank of each tie in file order
            self.ties_seen += int(ties.sum())
            keep &= (keys > self.threshold) | (ties & (order > self.skip_ties))
        return batch if keep.all() else batch.filter(pa.array(keep))


_OFFSET = r"(?:[+-]\d{2}:?\d{2}|Z)$"


def nested_columns(table: pa.Table | pa.Schema) -> dict[str, str]:
    """Columns of `table` (or of a schema) whose values are structs, lists, maps or unions, with their Arrow types.

    Example:
        ```python
        import pyarrow as pa
        from prefect_mlops.tasks.ingest import nested_columns
        table = pa.table({"x": [1, 2], "tags": [["a"], []]})
        assert nested_columns(table) == {"tags": "list<item: string>"}
        ```
    """
    import pyarrow as pa

    def nested(kind: pa.DataType) -> bool:
        if pa.types.is_dictionary(kind):
            return nested(kind.value_type)
        return pa.types.is_nested(kind) or pa.types.is_union(kind)

    schema = table if isinstance(table, pa.Schema) else table.schema
    return {field.name: str(field.type) for field in schema if nested(field.type)}


def read_source(source: DataSource) -> pd.DataFrame:
    """Read a whole source into pandas, turning every failure into a `DataSourceError` naming the URI."""
    return _to_pandas(read_source_table(source), source.uri)


def read_source_table(source: DataSource) -> pa.Table:
    """Read a whole source as an Arrow table, turning every failure into a `DataSourceError` naming the URI."""
    scheme = source.scheme()
    fmt = _format(source)
    if scheme == "file":
        return _parse(_local_path(source), fmt, source.uri)
    if scheme == "s3":
        import tempfile

        # The Block owns S3: bucket/key parsing, the client and every failure's message. Spooled to a
        # file in chunks, so memory holds the table, not the object's bytes beside it.
        with tempfile.TemporaryDirectory(prefix="prefect-mlops-source-") as folder:
            spool = Path(folder) / f"source{_spool_suffix(source.uri, fmt)}"
            source.download_to(spool)
            return _parse(spool, fmt, source.uri)
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
    times = as_timestamps(frame[column], column=column, uri=source.uri)
    mask = pd.Series(True, index=frame.index)
    if window.start is not None:
        mask &= times >= _naive_utc(window.start)
    if window.end is not None:
        mask &= times < _naive_utc(window.end)
    return frame.loc[mask].reset_index(drop=True)


def as_timestamps(values: pd.Series, *, column: str, uri: str) -> pd.Series:
    """`values` as naive UTC timestamps, or a `DataSourceError` naming the column and the problem.

    Timestamps with a UTC offset are converted to UTC, even when the offsets differ (daylight
    saving time). Refused, each with its own message: numbers (epoch values: their unit would
    be a guess), a mix of values with and without an offset (the naive ones have no time zone),
    and text that is not a timestamp (the first such value and its row are quoted).

    Example:
        ```python
        import pandas as pd
        from prefect_mlops.tasks.ingest import as_timestamps
        times = as_timestamps(pd.Series(["2024-03-30T12:00+01:00", "2024-04-01T12:00+02:00"]), column="t", uri="x")
        assert str(times[1]) == "2024-04-01 10:00:00"
        ```
    """
    import warnings

    import pandas as pd

    where = f"data source {uri}: time column {column!r}"
    if pd.api.types.is_datetime64_any_dtype(values):
        return values.dt.tz_convert("UTC").dt.tz_localize(None) if values.dt.tz is not None else values
    present = values.dropna()
    if pd.api.types.is_numeric_dtype(values) or _all_digits(present):
        first = present.iloc[0] if len(present) else None
        example = brief(first.item() if hasattr(first, "item") else first)
        raise DataSourceError(
            f"{where} holds numbers ({values.dtype}, e.g. {example}), not timestamps. Epoch numbers are not "
            "read as times because their unit (seconds, milliseconds...) would be a guess; convert the column "
            "to timestamps (e.g. pandas.to_datetime(col, unit='s')) or write ISO-8601 text such as "
            "2024-01-31T12:00:00Z"
        )
    text = present.astype(str)
    offset = text.str.contains(_OFFSET, regex=True)
    if offset.any() and not offset.all():
        with_at, without_at = offset.idxmax(), (~offset).idxmax()
        raise DataSourceError(
            f"{where} mixes timestamps with a UTC offset (row index {with_at}: {brief(text[with_at])}) and without one "
            f"(row index {without_at}: {brief(text[without_at])}); a value without an offset has no time zone. "
            "Give every value an offset, or none"
        )
    utc = bool(offset.any())
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pandas' advice on formats: the message below says more
            parsed = pd.to_datetime(values, utc=utc)
    except (ValueError, TypeError, OverflowError):
        parsed = pd.to_datetime(values, utc=utc, errors="coerce", format="ISO8601")
        bad = values.notna() & parsed.isna()
        if bad.any():
            first = bad.idxmax()
            raise DataSourceError(
                f"{where}: {int(bad.sum())} of {len(values)} values are not timestamps, the first at row index "
                f"{first}: {brief(values[first])}. Write ISO-8601 timestamps such as 2024-01-31T12:00:00 (years "
                "1677 to 2262), or fix DataSource.time_column"
            ) from None
    if not pd.api.types.is_datetime64_any_dtype(parsed):
        raise DataSourceError(f"{where} holds values such as {brief(present.iloc[0])} that pandas cannot read as "
                              "one kind of timestamp; write ISO-8601 timestamps such as 2024-01-31T12:00:00Z")
    return parsed.dt.tz_convert("UTC").dt.tz_localize(None) if parsed.dt.tz is not None else parsed


def _all_digits(present: pd.Series) -> bool:
    """Text that is only digits (9 or more: an epoch count, not a year or a date like 20240131)."""
    if present.dtype != object or not len(present):
        return False
    return bool(present.astype(str).str.fullmatch(r"[+-]?\d{9,}(?:\.\d+)?").all())


def _naive_utc(moment: object) -> pd.Timestamp:
    import pandas as pd

    stamp = pd.Timestamp(moment)
    return stamp.tz_convert("UTC").tz_localize(None) if stamp.tzinfo is not None else stamp


def latest_rows(frame: pd.DataFrame, rows: int, *, source: DataSource) -> pd.DataFrame:
    """The latest `rows` rows by the source's time column (file order without one), in their original order."""
    import numpy as np

    if source.time_column and source.time_column in frame.columns:
        times = as_timestamps(frame[source.time_column], column=source.time_column, uri=source.uri)
        order = np.argsort(times.to_numpy(), kind="stable")
        keep = np.sort(order[len(frame) - rows:])
    else:
        keep = np.arange(len(frame) - rows, len(frame))
    return frame.take(keep).reset_index(drop=True)


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


def _parse(where: Path | io.BytesIO, fmt: str, uri: str) -> pa.Table:
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
        problem = _ragged_row(where) if fmt == "csv" else _duplicates_in_schema(where)
        raise DataSourceError(
            f"data source {uri}: not {kind} ({problem or exc}); check the file or set DataSource.format"
        ) from exc
    if table.num_columns == 0:
        raise DataSourceError(f"data source {uri}: no columns found; the file is empty or has no header")
    repeated = _repeated(table.column_names)
    if repeated:
        raise DataSourceError(f"data source {uri}: column names {brief(repeated, 1000)} appear more than once; "
                              "give every column its own name")
    return table


def _repeated(names: list[str]) -> list[str]:
    seen: set[str] = set()
    return sorted({name for name in names if name in seen or seen.add(name)})


def _duplicates_in_schema(where: Path | io.BytesIO) -> str | None:
    """Parquet's reader fails on repeated column names with a cryptic message: name them instead."""
    import pyarrow.parquet as pq

    try:
        if isinstance(where, io.BytesIO):
            where.seek(0)
        names = pq.read_schema(where).names
    except Exception:
        return None
    repeated = _repeated(names)
    return f"column names {brief(repeated, 1000)} appear more than once" if repeated else None


def _ragged_row(where: Path | io.BytesIO) -> str | None:
    """Which line of a CSV has the wrong number of fields: read again on one thread, so Arrow counts lines."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    found = []

    def note(row: pacsv.InvalidRow) -> str:
        found.append(row)
        return "error"

    if isinstance(where, io.BytesIO):
        where.seek(0)
    try:
        pacsv.read_csv(where, read_options=pacsv.ReadOptions(use_threads=False),
                       parse_options=pacsv.ParseOptions(invalid_row_handler=note))
    except (pa.ArrowException, OSError):
        pass
    if not found:
        return None
    row = found[0]
    line = f"line {row.number}" if row.number is not None else "a line"
    return (f"{line} has {row.actual_columns} fields where the header has {row.expected_columns}: "
            f"{brief(row.text)}; fix or remove that line (a comma inside a value needs quotes)")


def _to_pandas(table: pa.Table, uri: str) -> pd.DataFrame:
    import pyarrow as pa

    try:
        return table.to_pandas()
    except (pa.ArrowException, ValueError, TypeError) as exc:
        raise DataSourceError(f"data source {uri}: the data cannot be read into pandas ({exc}); check the "
                              "column types") from exc


class _Opened:
    """A source opened as a `pyarrow.dataset` (a file or a folder of files), with its failures explained."""

    def __init__(self, path: Path, fmt: str, uri: str) -> None:
        import pyarrow as pa
        import pyarrow.dataset as ds

        self.path, self.fmt, self.uri = path, fmt, uri
        try:
            self.dataset = ds.dataset(str(path), partitioning="hive",
                                      format=ds.ParquetFileFormat() if fmt == "parquet" else ds.CsvFileFormat())
        except (pa.ArrowException, OSError) as exc:
            repeated = _repeated(_csv_header(path)) if fmt == "csv" else []
            if repeated:  # Arrow's CSV reader refuses them: say so as plainly as for Parquet
                raise DataSourceError(f"data source {uri}: column names {brief(repeated, 1000)} appear more than "
                                      "once; give every column its own name") from exc
            raise self.unreadable(exc) from exc
        names = self.dataset.schema.names
        if not names:
            raise DataSourceError(f"data source {uri}: no columns found; the file is empty or has no header")
        repeated = _repeated(names)
        if repeated:
            raise DataSourceError(f"data source {uri}: column names {brief(repeated, 1000)} appear more than once; "
                                  "give every column its own name")

    def batches(self, columns: list[str]) -> Iterator[pa.RecordBatch]:
        """The source's rows in file order, `columns` only, one batch at a time."""
        import pyarrow as pa

        try:
            # Little read-ahead: Arrow's default (16 batches, 4 files) would hold a million rows in memory.
            found = iter(self.dataset.to_batches(columns=columns, batch_size=BATCH_ROWS, batch_readahead=2,
                                                 fragment_readahead=1))
        except (pa.ArrowException, OSError) as exc:
            raise self.unreadable(exc) from exc
        while True:
            try:
                batch = next(found)
            except StopIteration:
                return
            except (pa.ArrowException, OSError) as exc:  # a bad row or page is found when it is read
                raise self.unreadable(exc) from exc
            yield batch

    def count_rows(self) -> int:
        import pyarrow as pa

        try:
            return self.dataset.count_rows()
        except (pa.ArrowException, OSError) as exc:
            raise self.unreadable(exc) from exc

    def unreadable(self, exc: BaseException) -> DataSourceError:
        dataset = getattr(self, "dataset", None)
        if self.fmt == "parquet" and dataset is not None and len(dataset.files) > 1:
            conflict = _type_conflict(dataset.files, self.path)
            if conflict:
                return DataSourceError(
                    f"data source {self.uri}: the files disagree on a column's type: {conflict}, and Arrow cannot "
                    f"convert one to the other ({brief(exc, 300)}). Write every file with the same type for that "
                    "column (cast it before writing), or ingest the files separately"
                )
        kind = "a readable Parquet file" if self.fmt == "parquet" else "parseable CSV"
        problem = _ragged_row(self.path) if self.fmt == "csv" else _duplicates_in_schema(self.path)
        return DataSourceError(
            f"data source {self.uri}: not {kind} ({problem or exc}); check the file or set DataSource.format"
        )


def _type_conflict(files: list[str], folder: Path) -> str | None:
    """The first column whose type differs between the Parquet `files` of a folder, said with both files."""
    import pyarrow.parquet as pq

    first: dict[str, tuple[str, str]] = {}  # column -> (type, file where first seen)
    for file in files:
        try:
            schema = pq.read_schema(file)
        except Exception:  # a file that cannot be read at all is reported as such by the caller
            return None
        where = os.path.relpath(file, folder)
        for field in schema:
            kind = str(field.type)
            seen = first.setdefault(field.name, (kind, where))
            if seen[0] != kind:
                return f"column {field.name!r} is {seen[0]} in {seen[1]} but {kind} in {where}"
    return None


def _local_path(source: DataSource) -> Path:
    """A local source's file or folder, or a `DataSourceError` when it is missing or an empty file."""
    path = Path(source.uri.removeprefix("file://")).expanduser()
    if not path.exists():
        raise DataSourceError(f"data source {source.uri}: no such file or folder; check the path")
    if path.is_file() and path.stat().st_size == 0:
        raise DataSourceError(f"data source {source.uri}: the file is empty (0 bytes); re-export it")
    return path


@contextlib.contextmanager
def _open(source: DataSource, workspace: Workspace) -> Iterator[_Opened]:
    """Open a local file or folder in place; an S3 object is spooled to a temporary file, removed afterwards."""
    scheme = source.scheme()
    fmt = _format(source)
    if scheme == "file":
        yield _Opened(_local_path(source), fmt, source.uri)
        return
    if scheme != "s3":
        raise DataSourceError(
            f"data source {source.uri}: unknown URI scheme {scheme!r}; expected a local path, file:// or s3://"
        )
    # The Block owns S3: bucket/key parsing, the client and every failure's message.
    suffix = _spool_suffix(source.uri, fmt)
    # The dataset reader reads a file twice with max_rows and seeks in Parquet: spool to disk, not to memory.
    spool = workspace.folder("tmp") / f"source-{os.getpid()}-{secrets.token_hex(4)}{suffix}"
    try:
        # Streamed in chunks straight to the file: memory does not hold the object, however large.
        write_atomic(spool, source.download_to, stage=f"copy of {source.uri}")
        yield _Opened(spool, fmt, source.uri)
    finally:
        spool.unlink(missing_ok=True)


def _spool_suffix(uri: str, fmt: str) -> str:
    """The suffix a local copy of `uri` needs: Arrow picks a CSV's compression from it."""
    last = uri.rsplit("/", 1)[-1].lower()
    return next((s for s in _CSV_SUFFIXES if last.endswith(s)), ".csv") if fmt == "csv" else ".parquet"


def _csv_header(path: Path) -> list[str]:
    """The names in a CSV file's first line (compressed or not); empty if it cannot be read."""
    import csv

    import pyarrow as pa

    try:
        with pa.input_stream(str(path), compression="detect") as stream:
            first = io.TextIOWrapper(stream, encoding="utf-8", errors="replace").readline()
    except (pa.ArrowException, OSError, ValueError):
        return []
    return next(csv.reader([first]), [])


def _index_columns(schema: pa.Schema) -> set[str]:
    """Columns that hold a pandas index saved with the data (`index=True`): not data, left out as pandas did."""
    metadata = schema.pandas_metadata or {}
    return {c for c in metadata.get("index_columns", []) if isinstance(c, str) and c in schema.names}


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
    max_rows: int | None = None,
) -> DatasetRef:
    """Snapshot a source's data into the workspace (see `ingest_dataset`)."""
    ref = ingest_dataset(source, name=name, window=window, workspace=Workspace(workspace), max_rows=max_rows)
    run_logger().info(
        "ingested %s rows x %s columns from %s -> %s", ref.rows, len(ref.columns), source.uri, ref.short()
    )
    return ref
