"""The run workspace: one folder holding data snapshots, suites, reports and the local MLflow store.

Snapshots are content-addressed (`datasets/<name>/<fingerprint>.parquet`), so writing
the same data twice writes one file, and a reference stays valid for as long as the
workspace is kept.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from prefect_mlops.errors import WORKSPACE_ADVICE, DataSourceError, disk_full_error
from prefect_mlops.refs import DatasetRef

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

WORKSPACE_ENV = "PREFECT_MLOPS_WORKSPACE"


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
        """Save `frame` as a content-addressed Parquet snapshot and return its reference."""
        digest = fingerprint(frame)
        path = self.folder("datasets", _safe(name)) / f"{digest[:32]}.parquet"
        if not path.exists():
            write_atomic(path, lambda tmp: frame.to_parquet(tmp, index=False), stage=f"snapshot of {name!r}")
        return DatasetRef(
            name=name,
            uri=str(path),
            fingerprint=digest,
            rows=len(frame),
            columns={str(c): str(t) for c, t in frame.dtypes.items()},
            source_uri=source_uri,
            window=window,
        )


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
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
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


def fingerprint(frame: pd.DataFrame) -> str:
    """SHA-256 of a frame's values, column names and dtypes (independent of file encoding).

    Example:
        ```python
        import pandas as pd
        from prefect_mlops.workspace import fingerprint
        a = pd.DataFrame({"x": [1, 2]})
        assert fingerprint(a) == fingerprint(a.copy())
        assert fingerprint(a) != fingerprint(a.assign(x=[2, 1]))
        ```
    """
    import pandas as pd

    digest = hashlib.sha256()
    for name, dtype in frame.dtypes.items():
        digest.update(f"{name}\x1f{dtype}\x1e".encode())
    digest.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    return digest.hexdigest()


def read_frame(ref: DatasetRef, columns: list[str] | None = None) -> pd.DataFrame:
    """Load a snapshot back into pandas, saying which dataset is missing when it is."""
    import pandas as pd

    try:
        return pd.read_parquet(ref.uri, columns=columns)
    except FileNotFoundError as exc:
        raise _gone(ref) from exc


def read_table(ref: DatasetRef, columns: list[str] | None = None) -> pa.Table:
    """Load a snapshot as an Arrow table (no pandas conversion), saying which dataset is missing when it is.

    `table.to_pandas()` gives the frame that `read_frame` gives; strings stay compact Arrow
    buffers until then, so selecting rows before converting saves most of the memory.
    """
    import pyarrow.parquet as pq

    try:
        return pq.read_table(ref.uri, columns=columns)
    except FileNotFoundError as exc:
        raise _gone(ref) from exc


def iter_batches(
    ref: DatasetRef, columns: list[str] | None = None, batch_rows: int = 65_536
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
    import pyarrow.parquet as pq

    try:
        handle = pq.ParquetFile(ref.uri)
    except FileNotFoundError as exc:
        raise _gone(ref) from exc
    with handle:
        yield from handle.iter_batches(batch_size=batch_rows, columns=columns)


def _gone(ref: DatasetRef) -> DataSourceError:
    return DataSourceError(
        f"dataset {ref.name!r}: snapshot {ref.uri} is gone; the workspace was cleaned or moved. "
        "Run ingest again to re-create it"
    )


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name) or "dataset"
