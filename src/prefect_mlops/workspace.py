"""The run workspace: one folder holding data snapshots, suites, reports and the local MLflow store.

Snapshots are content-addressed Arrow IPC files (`datasets/<name>/<fingerprint>.arrow`), so
writing the same data twice writes one file, and a reference stays valid for as long as the
workspace is kept. Stages read them through `read_table` (memory-mapped), `iter_batches`
(streamed) and `read_frame` (pandas); snapshots written as Parquet by earlier versions read
the same way.
"""

from __future__ import annotations

import collections
import contextlib
import glob
import hashlib
import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from prefect_mlops.errors import WORKSPACE_ADVICE, DataSourceError, MlopsError, brief, disk_full_error
from prefect_mlops.refs import DatasetRef

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

WORKSPACE_ENV = "PREFECT_MLOPS_WORKSPACE"
BATCH_ROWS = 65_536  # rows per stored and streamed record batch
SNAPSHOT_SUFFIX = ".arrow"
_PARQUET_SUFFIXES = (".parquet", ".pq", ".parq")


class Workspace:
    """A local folder for snapshots, learned suites, drift reports and the default MLflow store.

    Example:
        ```python
        import tempfile
        from prefect_mlops.workspace import Workspace
        ws = Workspace(tempfile.mkdtemp())
        assert ws.mlflow_uri.startswith("sqlite:///")
        ```
    """

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        root = root or os.environ.get(WORKSPACE_ENV) or Path.home() / ".prefect-mlops"
        self.root = Path(root).expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"Workspace({str(self.root)!r})"

    def folder(self, *parts: str) -> Path:
        """A sub-folder of the workspace, created on first use."""
        path = self.root.joinpath(*parts)
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def mlflow_uri(self) -> str:
        """The embedded MLflow store: SQLite inside the workspace."""
        return f"sqlite:///{self.root / 'mlflow.db'}"

    @property
    def artifact_root(self) -> str:
        """Where the embedded MLflow store keeps model files."""
        return self.folder("mlartifacts").as_uri()

    def write_snapshot(
        self, frame: pd.DataFrame, *, name: str, source_uri: str | None = None, window: str | None = None
    ) -> DatasetRef:
        """Save `frame` as a content-addressed Arrow IPC snapshot and return its reference.

        The index is left out; pandas' own metadata is not kept, so the snapshot reads back with
        NumPy dtypes (see `SnapshotWriter`).
        """
        import pyarrow as pa

        table = pa.Table.from_pandas(frame, preserve_index=False)
        with self.snapshot_writer(table.schema, name=name, source_uri=source_uri, window=window) as writer:
            for batch in table.to_batches():
                writer.write(batch)
        return writer.ref

    def snapshot_writer(self, schema: pa.Schema, *, name: str, source_uri: str | None = None,
                        window: str | None = None) -> SnapshotWriter:
        """A `SnapshotWriter` into this workspace's `datasets/<name>/` folder."""
        return SnapshotWriter(self.folder("datasets", _safe(name)), schema, name=name, source_uri=source_uri,
                              window=window)



_PARTIAL = "{name}.{pid}.{tag}.tmp"  # write_atomic's temp file beside `name`


def remove_partial_writes(path: str | os.PathLike[str], pid: int) -> list[Path]:
    """Remove the temp files `write_atomic` of process `pid` left beside `path` (a process killed while
    writing cannot remove its own); returns them. Only that process's: another writer's are untouched."""
    path = Path(path)
    removed = []
    for tmp in path.parent.glob(_PARTIAL.format(name=glob.escape(path.name), pid=pid, tag="*")):
        with contextlib.suppress(OSError):
            tmp.unlink()
            removed.append(tmp)
    return removed


def write_atomic(path: str | os.PathLike[str], write: Callable[[Path], object], *, stage: str,
                 advice: str = WORKSPACE_ADVICE) -> Path:
    """Write `path` through `write(temp)` and an atomic rename; on any failure the temp file goes.

    A reader never sees half a file, and a failed write leaves no file behind. A full disk
    (ENOSPC, EDQUOT) raises `StorageError` naming `stage`, `path` and `advice`.

    Example:
        ```python
        import tempfile
        from pathlib import Path
        from prefect_mlops.workspace import write_atomic
        path = Path(tempfile.mkdtemp()) / "note.txt"
        write_atomic(path, lambda tmp: tmp.write_text("hello"), stage="note")
        assert path.read_text() == "hello" and [p.name for p in path.parent.iterdir()] == ["note.txt"]
        ```
    """
    path = Path(path)
    # pid and a random tag: two writers of one path (processes or threads) never share a temp file.
    tmp = path.with_name(_PARTIAL.format(name=path.name, pid=os.getpid(), tag=secrets.token_hex(4)))
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):  # the first failure is the one to report
            tmp.unlink(missing_ok=True)
        error = disk_full_error(exc, path, stage=stage, advice=advice)
        if error is not None:
            raise error from exc
        raise
    return path


class SnapshotWriter:
    """Writes record batches, one at a time, into a content-addressed Arrow IPC (Feather v2) snapshot.

    Memory holds one batch at a time; the fingerprint is computed on the way and does not depend on
    where the batches start and end. The file is written under a temporary name and renamed to
    `<fingerprint>.arrow` by `finish` (a reader never sees half a file; the same data twice is one
    file). Uncompressed, so `read_table` memory-maps it instead of decoding it. Stored types are the
    source's, normalised: no pandas metadata (nullable extension dtypes read back as NumPy ones, as
    `plain_dtypes` makes them), large and view strings as strings, one growing dictionary per
    categorical column.

    Example:
        ```python
        import tempfile, pyarrow as pa
        from prefect_mlops.workspace import Workspace, read_frame
        batch = pa.record_batch({"x": [1, 2, 3]})
        with Workspace(tempfile.mkdtemp()).snapshot_writer(batch.schema, name="d") as writer:
            writer.write(batch.slice(0, 2))
            writer.write(batch.slice(2))
        assert writer.ref.rows == 3 and read_frame(writer.ref)["x"].tolist() == [1, 2, 3]
        ```
    """

    def __init__(self, folder: Path, schema: pa.Schema, *, name: str, source_uri: str | None = None,
                 window: str | None = None) -> None:
        import pyarrow as pa

        self.folder, self.name, self.source_uri, self.window = folder, name, source_uri, window
        self.schema = stored_schema(schema)
        self.hasher = _Hasher(self.schema, background=True)
        self.ref: DatasetRef | None = None
        self._dictionaries: dict[int, pa.Array] = {}
        self._tmp = folder / f".snapshot.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        self._sink = None
        self._writer = None
        try:
            self._sink = pa.OSFile(str(self._tmp), "wb")
            self._writer = pa.ipc.new_file(self._sink, self.schema,
                                           options=pa.ipc.IpcWriteOptions(emit_dictionary_deltas=True))
        except BaseException as exc:
            self._fail(exc)

    def __enter__(self) -> SnapshotWriter:
        return self

    def __exit__(self, kind: object, exc: BaseException | None, tb: object) -> None:
        if exc is None:
            self.finish()
        else:
            self._discard()

    def write(self, batch: pa.RecordBatch) -> None:
        """Append `batch` (the columns of the schema given, in its order) to the snapshot."""
        import pyarrow as pa

        if not batch.num_rows:
            return
        try:
            arrays = [self._conform(i, batch.column(i)) for i in range(batch.num_columns)]
            batch = pa.RecordBatch.from_arrays(arrays, schema=self.schema)
            self.hasher.update(batch)  # re-raises a failure of an earlier batch's hashing
            # Stored in batches of at most BATCH_ROWS (zero-copy slices): a reader streaming the file holds one
            # stored batch at a time, so a frame written in one piece must not become one piece on disk.
            for offset in range(0, batch.num_rows, BATCH_ROWS):
                self._writer.write_batch(batch.slice(offset, BATCH_ROWS))
        except BaseException as exc:
            self._fail(exc)

    def finish(self) -> DatasetRef:
        """Close the file, name it by its fingerprint and return the snapshot's reference."""
        # Every step can fail (the hashing thread re-raises here, the rename can be refused): each
        # failure goes through _fail, which removes the temp file, so no `.snapshot.*.tmp` is left.
        try:
            self._writer.close()
            self._sink.close()
            digest = self.hasher.hexdigest()
            path = self.folder / f"{digest[:32]}{SNAPSHOT_SUFFIX}"
            if _intact(path, self.schema, self.hasher.rows):
                self._tmp.unlink(missing_ok=True)
            else:  # new data, or a damaged copy of the same data (truncated, overwritten): replaced
                os.replace(self._tmp, path)
        except BaseException as exc:
            self._fail(exc)
        self.ref = DatasetRef(name=self.name, uri=str(path), fingerprint=digest, rows=self.hasher.rows,
                              columns=pandas_dtypes(self.schema, self.hasher.null_counts),
                              source_uri=self.source_uri, window=self.window)
        return self.ref

    def _conform(self, index: int, array: pa.Array) -> pa.Array:
        import pyarrow as pa
        import pyarrow.compute as pc

        if isinstance(array, pa.ChunkedArray):
            array = array.combine_chunks()
        kind = self.schema.field(index).type
        if not pa.types.is_dictionary(kind):
            return array if array.type == kind else array.cast(kind)
        if not pa.types.is_dictionary(array.type):
            array = array.dictionary_encode()
        values = array.dictionary.cast(kind.value_type)
        known = self._dictionaries.get(index)
        if known is None:
            known = values.unique()
        else:
            new = values.filter(pc.is_null(pc.index_in(values, value_set=known)))
            if len(new):
                known = pa.concat_arrays([known, new.unique()])
        self._dictionaries[index] = known
        # The file format keeps one dictionary per column: it only grows (written as deltas).
        where = pc.index_in(values, value_set=known).cast(pa.int32())
        indices = pc.take(where, array.indices)
        return pa.DictionaryArray.from_arrays(indices, known, ordered=kind.ordered)

    def _fail(self, exc: BaseException) -> None:
        self._discard()
        error = disk_full_error(exc, self._tmp, stage=f"snapshot of {self.name!r}", advice=WORKSPACE_ADVICE)
        if error is not None:
            raise error from exc
        if isinstance(exc, MlopsError) or not isinstance(exc, Exception):
            raise exc  # already explained, or an interrupt: as it is
        raise DataSourceError(
            f"dataset {self.name!r}: the snapshot could not be written in {self.folder} ({type(exc).__name__}: "
            f"{brief(exc, 500)}); nothing was kept. Check that the folder is writable and each batch has the "
            "columns and types of the first, then run ingest again"
        ) from exc

    def _discard(self) -> None:
        with contextlib.suppress(Exception):
            self.hasher.close()
        for closing in (self._writer, self._sink):
            with contextlib.suppress(Exception):
                if closing is not None:
                    closing.close()
        with contextlib.suppress(OSError):  # the first failure is the one to report
            self._tmp.unlink(missing_ok=True)


def _intact(path: Path, schema: pa.Schema, rows: int) -> bool:
    """Whether `path` is a readable snapshot of `rows` rows in `schema` (footer and batch headers; not the values)."""
    import pyarrow as pa

    if not path.exists():
        return False
    try:
        # Memory-mapped: the footer and each batch's header are read, the values' pages are not touched.
        with pa.memory_map(str(path)) as handle:
            reader = pa.ipc.open_file(handle)
            found = sum(reader.get_batch(i).num_rows for i in range(reader.num_record_batches))
            return reader.schema.equals(schema) and found == rows
    except (pa.ArrowException, OSError):
        return False


def stored_schema(schema: pa.Schema) -> pa.Schema:
    """The schema a snapshot stores `schema`'s columns in: no metadata, plain strings, int32 dictionaries."""
    import pyarrow as pa

    def stored(kind: pa.DataType) -> pa.DataType:
        if pa.types.is_dictionary(kind):
            return pa.dictionary(pa.int32(), stored(kind.value_type), kind.ordered)
        if pa.types.is_large_string(kind) or pa.types.is_string_view(kind):
            return pa.string()
        if pa.types.is_large_binary(kind) or pa.types.is_binary_view(kind):
            return pa.binary()
        return kind

    return pa.schema([pa.field(f.name, stored(f.type)) for f in schema])


def pandas_dtypes(schema: pa.Schema, null_counts: list[int] | None = None) -> dict[str, str]:
    """The pandas dtype of each column as `read_frame` gives it (integers with nulls: float64; booleans: object)."""
    import numpy as np

    dtypes = {}
    for i, (name, dtype) in enumerate(schema.empty_table().to_pandas().dtypes.items()):
        if null_counts and null_counts[i] and isinstance(dtype, np.dtype) and dtype.kind in "iub":
            dtype = np.dtype(object) if dtype.kind == "b" else np.dtype("float64")
        dtypes[str(name)] = str(dtype)
    return dtypes


class _Hasher:
    """SHA-256 of a table's column names, stored types and values, fed batch by batch.

    Each column has its own digest of canonical bytes (fixed-width values with nulls zeroed, strings
    as lengths then bytes, categories as their values) and of its null positions, so the result
    does not depend on how the rows were cut into batches. With `background`, batches are hashed
    on a worker thread (hashlib releases the GIL), at most two behind, while the caller reads and
    writes the next ones.
    """

    def __init__(self, schema: pa.Schema, *, background: bool = False) -> None:
        self.schema = schema
        self.rows = 0
        self.values = [hashlib.sha256() for _ in schema]
        self.lengths = [hashlib.sha256() for _ in schema]
        self.nulls = [hashlib.sha256() for _ in schema]
        self.null_counts = [0] * len(schema)
        self._pool = None
        self._pending: collections.deque = collections.deque()
        if background:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefect-mlops-fingerprint")

    def update(self, batch: pa.RecordBatch) -> None:
        for i, array in enumerate(batch.columns):
            self.null_counts[i] += array.null_count
        offset, self.rows = self.rows, self.rows + batch.num_rows
        if self._pool is None:
            self._hash(batch, offset)
            return
        while len(self._pending) >= 2:  # memory holds at most a few batches, however fast the reader is
            self._pending.popleft().result()
        self._pending.append(self._pool.submit(self._hash, batch, offset))

    def _hash(self, batch: pa.RecordBatch, offset: int) -> None:
        import numpy as np
        import pyarrow.compute as pc

        for i, array in enumerate(batch.columns):
            if array.null_count:
                where = np.flatnonzero(pc.is_null(array).to_numpy(zero_copy_only=False)) + offset
                self.nulls[i].update(where.astype("<i8").tobytes())
            for lengths, chunk in _canonical(array):
                (self.lengths if lengths else self.values)[i].update(chunk)

    def close(self) -> None:
        """Wait for the batches still being hashed (re-raising a failure); stop the worker."""
        try:
            while self._pending:
                self._pending.popleft().result()
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True, cancel_futures=True)
                self._pool = None

    def hexdigest(self) -> str:
        self.close()
        digest = hashlib.sha256(f"rows\x1f{self.rows}\x1e".encode())
        for field, values, lengths, nulls in zip(self.schema, self.values, self.lengths, self.nulls, strict=True):
            digest.update(f"{field.name}\x1f{field.type}\x1e".encode())
            digest.update(values.digest() + lengths.digest() + nulls.digest())
        return digest.hexdigest()


def _canonical(array: pa.Array) -> Iterator[tuple[bool, bytes]]:
    """Bytes standing for `array`'s values whatever its offset and buffers (null slots read as zero/empty).

    Each piece comes with whether it is lengths (of strings) or values: the two go to separate digests,
    so that how the rows are cut into batches does not change what either digest sees.
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    kind = array.type
    if pa.types.is_dictionary(kind):
        yield from _canonical(array.dictionary_decode())
        return
    if pa.types.is_string(kind) or pa.types.is_binary(kind):
        if array.null_count:
            array = pc.fill_null(array, pa.scalar(b"" if pa.types.is_binary(kind) else "", kind))
        offsets = np.frombuffer(array.buffers()[1], dtype="<i4")[array.offset:array.offset + len(array) + 1]
        yield True, np.diff(offsets).astype("<i8").tobytes()
        data = array.buffers()[2]
        if data is not None:
            yield False, memoryview(data)[int(offsets[0]):int(offsets[-1])]
        return
    if pa.types.is_boolean(kind):
        yield False, pc.fill_null(array, False).to_numpy(zero_copy_only=False).astype(np.uint8).tobytes()
        return
    if pa.types.is_temporal(kind) and kind.bit_width in (32, 64):
        array, kind = _as_integers(array, kind), pa.int32() if kind.bit_width == 32 else pa.int64()
    if pa.types.is_integer(kind) or pa.types.is_floating(kind):
        if array.null_count:
            array = pc.fill_null(array, pa.scalar(0, kind))
        width = kind.bit_width // 8
        yield False, memoryview(array.buffers()[1])[array.offset * width:(array.offset + len(array)) * width]
        return
    try:
        yield from _canonical(array.cast(pa.string()))
    except (pa.ArrowNotImplementedError, pa.ArrowInvalid):
        for value in array.to_pylist():  # one piece per value: batch boundaries do not show
            yield False, f"{value!r}\x1f".encode()


def _as_integers(array: pa.Array, kind: pa.DataType) -> pa.Array:
    """A date, time, timestamp or duration array's values as the integers they are stored as."""
    import pyarrow as pa

    return array.view(pa.int32() if kind.bit_width == 32 else pa.int64())


def fingerprint(frame: pd.DataFrame) -> str:
    """SHA-256 of a frame's values, column names and stored types: the fingerprint its snapshot gets.

    Independent of file encoding and of how the rows are cut into batches.

    Example:
        ```python
        import pandas as pd
        from prefect_mlops.workspace import fingerprint
        a = pd.DataFrame({"x": [1, 2]})
        assert fingerprint(a) == fingerprint(a.copy())
        assert fingerprint(a) != fingerprint(a.assign(x=[2, 1]))
        ```
    """
    import pyarrow as pa

    table = pa.Table.from_pandas(frame, preserve_index=False)
    hasher = _Hasher(stored_schema(table.schema))
    table = table.cast(hasher.schema) if not any(pa.types.is_dictionary(f.type) for f in table.schema) else table
    for batch in table.to_batches():
        hasher.update(batch)
    return hasher.hexdigest()


def is_parquet(ref: DatasetRef) -> bool:
    """Whether `ref` names a Parquet snapshot (written before snapshots became Arrow IPC files)."""
    return ref.uri.lower().endswith(_PARQUET_SUFFIXES)


def read_frame(ref: DatasetRef, columns: list[str] | None = None) -> pd.DataFrame:
    """Load a snapshot (or its `columns`) into pandas, saying which dataset is missing when it is.

    Example:
        ```python
        import tempfile, pandas as pd
        from prefect_mlops.workspace import Workspace, read_frame
        ref = Workspace(tempfile.mkdtemp()).write_snapshot(pd.DataFrame({"x": [1, 2], "y": ["a", None]}), name="d")
        assert read_frame(ref, ["y"]).to_dict("list") == {"y": ["a", None]}
        ```
    """
    if is_parquet(ref):
        import pandas as pd
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            _check_columns(ref, pq.read_schema(ref.uri).names, columns)
            return pd.read_parquet(ref.uri, columns=columns)
        except FileNotFoundError as exc:
            raise _gone(ref) from exc
        except (pa.ArrowException, OSError) as exc:
            raise _damaged(ref, exc) from exc
    return read_table(ref, columns).to_pandas()


def read_table(ref: DatasetRef, columns: list[str] | None = None) -> pa.Table:
    """Load a snapshot as an Arrow table (no pandas conversion), saying which dataset is missing when it is.

    An Arrow IPC snapshot is memory-mapped: nothing is decoded or copied, and the pages are read
    when a column is used. `table.to_pandas()` gives the frame that `read_frame` gives; strings stay
    compact Arrow buffers until then, so selecting rows before converting saves most of the memory.

    Example:
        ```python
        import tempfile, pandas as pd
        from prefect_mlops.workspace import Workspace, read_table
        ref = Workspace(tempfile.mkdtemp()).write_snapshot(pd.DataFrame({"x": [1, 2], "y": [3, 4]}), name="d")
        assert read_table(ref, ["y"]).column_names == ["y"]
        ```
    """
    import pyarrow as pa

    try:
        if is_parquet(ref):
            import pyarrow.parquet as pq

            _check_columns(ref, pq.read_schema(ref.uri).names, columns)
            return pq.read_table(ref.uri, columns=columns)
        table = pa.ipc.open_file(pa.memory_map(ref.uri)).read_all()
        table.validate()  # buffer sizes against lengths: a damaged file fails here, not in a later stage
    except FileNotFoundError as exc:
        raise _gone(ref) from exc
    except (pa.ArrowException, OSError) as exc:
        raise _damaged(ref, exc) from exc
    _check_columns(ref, table.column_names, columns)
    return table if columns is None else table.select(columns)


def iter_batches(
    ref: DatasetRef, columns: list[str] | None = None, batch_rows: int = BATCH_ROWS
) -> Iterator[pa.RecordBatch]:
    """Stream a snapshot as Arrow record batches of at most `batch_rows` rows: memory does not grow with the rows.

    Example:
        ```python
        import tempfile, pandas as pd
        from prefect_mlops.workspace import Workspace, iter_batches
        ref = Workspace(tempfile.mkdtemp()).write_snapshot(pd.DataFrame({"x": range(10)}), name="d")
        assert sum(b.num_rows for b in iter_batches(ref, batch_rows=4)) == 10
        ```
    """
    import pyarrow as pa

    if is_parquet(ref):
        import pyarrow.parquet as pq

        try:
            handle = pq.ParquetFile(ref.uri)
        except FileNotFoundError as exc:
            raise _gone(ref) from exc
        except (pa.ArrowException, OSError) as exc:
            raise _damaged(ref, exc) from exc
        with handle:
            _check_columns(ref, handle.schema_arrow.names, columns)
            yield from handle.iter_batches(batch_size=batch_rows, columns=columns)
        return
    # Read through a plain file, not a memory map: each batch is read into memory Arrow frees when the
    # caller drops it, whereas every mapped page read would stay in the process's RSS until the end.
    try:
        handle = pa.OSFile(ref.uri)
    except FileNotFoundError as exc:
        raise _gone(ref) from exc
    with handle:
        try:
            reader = pa.ipc.open_file(handle)
            if columns is not None:
                names = reader.schema.names
                _check_columns(ref, names, columns)
                # Only the columns asked for are read from disk.
                wanted = sorted({names.index(c) for c in columns})
                reader = pa.ipc.open_file(handle, options=pa.ipc.IpcReadOptions(included_fields=wanted))
        except (pa.ArrowException, OSError) as exc:
            raise _damaged(ref, exc) from exc
        for i in range(reader.num_record_batches):
            try:
                batch = reader.get_batch(i)
                batch.validate()
            except (pa.ArrowException, OSError) as exc:
                raise _damaged(ref, exc) from exc
            if columns is not None:
                batch = batch.select(columns)
            for start in range(0, batch.num_rows, batch_rows):
                yield batch.slice(start, batch_rows)
            del batch  # freed before the next one is read


def _check_columns(ref: DatasetRef, names: list[str], columns: list[str] | None) -> None:
    missing = [c for c in columns or [] if c not in names]
    if missing:
        raise DataSourceError(
            f"dataset {ref.name!r} has no column {brief(missing if len(missing) > 1 else missing[0], 500)} "
            f"(snapshot {ref.uri}); its columns are {brief(names, 1000)}. Fix the column name where it is "
            "asked for (feature spec, target, time column), or ingest a source that has it"
        )


def _damaged(ref: DatasetRef, exc: BaseException) -> DataSourceError:
    return DataSourceError(
        f"dataset {ref.name!r}: snapshot {ref.uri} is damaged (truncated or overwritten) and cannot be read "
        f"({type(exc).__name__}: {brief(exc, 300)}). Delete that file and run ingest again to re-create it"
    )


def _gone(ref: DatasetRef) -> DataSourceError:
    return DataSourceError(
        f"dataset {ref.name!r}: snapshot {ref.uri} is gone; the workspace was cleaned or moved. "
        "Run ingest again to re-create it"
    )


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name) or "dataset"
