"""The prediction log: request id, time, features, prediction, version and alias, as Parquet.

`append` only puts a small chunk on a queue (never blocks, never does I/O); a daemon thread
writes one Parquet file per flush (every `flush_seconds` or `flush_rows`) under
`<root>/date=YYYY-MM-DD/part-<time>-<n>.parquet`, locally (atomically) or to S3. When the queue
is full (the disk or S3 is slower than the traffic) chunks are dropped and counted, so the
service keeps answering.
"""

from __future__ import annotations

import io
import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from prefect_mlops.blocks.data_source import DataSource
from prefect_mlops.errors import ConfigError
from prefect_mlops.workspace import write_atomic

logger = logging.getLogger("prefect_mlops.serving")
# Columns the log adds beside the model's inputs; an input with one of these names is refused at start.
LOG_COLUMNS = ("request_id", "key", "served_at", "model_name", "model_version", "alias", "role", "prediction",
               "latency_ms")


class PredictionLog:
    """Batched Parquet writer for served (and shadow) predictions.

    Example:
        ```python
        import tempfile, pandas as pd
        from prefect_mlops.serving.predlog import PredictionLog
        folder = tempfile.mkdtemp()
        log = PredictionLog(folder, model_name="churn")
        log.append({"request_id": ["r1"], "prediction": [1], "tenure": [3]})
        log.close()
        assert pd.read_parquet(folder)["request_id"].tolist() == ["r1"]
        ```
    """

    def __init__(self, root: str, *, model_name: str, output: DataSource | None = None, flush_seconds: float = 5.0,
                 flush_rows: int = 20_000, max_chunks: int = 100_000,
                 on_drop: Callable[[int], None] | None = None) -> None:
        if "://" in root and not root.startswith(("s3://", "file://")):
            raise ConfigError(f"prediction log {root}: expected a local folder, file:// or s3://bucket/prefix")
        self.root = root.removeprefix("file://").rstrip("/")
        self.model_name = model_name
        self.output = output
        self.flush_seconds = flush_seconds
        self.flush_rows = flush_rows
        self.dropped = 0
        self.written_rows = 0
        self.files: list[str] = []
        self._on_drop = on_drop
        self._queue: queue.Queue[dict[str, list[Any]] | None] = queue.Queue(maxsize=max_chunks)
        self._counter = itertools.count()
        self._thread = threading.Thread(target=self._run, name=f"prediction-log-{model_name}", daemon=True)
        self._thread.start()

    def append(self, chunk: dict[str, list[Any]]) -> None:
        """Queue one chunk of rows (column -> values); returns at once."""
        try:
            self._queue.put_nowait(chunk)
        except queue.Full:
            self.dropped += len(next(iter(chunk.values()), []))
            if self._on_drop is not None:
                self._on_drop(len(next(iter(chunk.values()), [])))

    def flush(self, timeout: float = 30.0) -> None:
        """Write what is queued now (tests and shutdown)."""
        done = threading.Event()
        self._queue.put({"__flush__": [done]})
        done.wait(timeout)

    def close(self) -> None:
        """Write what is queued and stop the thread."""
        self._queue.put(None)
        self._thread.join(timeout=60)

    def _run(self) -> None:
        pending: list[dict[str, list[Any]]] = []
        rows = 0
        deadline = time.monotonic() + self.flush_seconds
        while True:
            try:
                chunk = self._queue.get(timeout=max(0.05, deadline - time.monotonic()))
            except queue.Empty:
                chunk = {}
            stop = chunk is None
            flush_event = chunk.pop("__flush__", [None])[0] if chunk else None
            if chunk:
                pending.append(chunk)
                rows += len(next(iter(chunk.values())))
            if pending and (stop or flush_event or rows >= self.flush_rows or time.monotonic() >= deadline):
                self._write(pending)
                pending, rows = [], 0
            if time.monotonic() >= deadline:
                deadline = time.monotonic() + self.flush_seconds
            if flush_event is not None:
                flush_event.set()
            if stop:
                return

    def _write(self, chunks: list[dict[str, list[Any]]]) -> None:
        import pandas as pd

        try:
            frame = pd.DataFrame(_merge(chunks))  # one frame, not one per chunk: less time holding the GIL
            now = datetime.now(timezone.utc)
            name = f"date={now:%Y-%m-%d}/part-{now:%Y%m%dT%H%M%S%f}-{next(self._counter)}.parquet"
            target = f"{self.root}/{name}"
            if target.startswith("s3://"):
                buffer = io.BytesIO()
                frame.to_parquet(buffer, index=False)
                (self.output or DataSource(uri=target)).write_bytes(buffer.getvalue(), target, what="prediction log")
            else:
                path = Path(target)
                path.parent.mkdir(parents=True, exist_ok=True)
                write_atomic(path, lambda tmp: frame.to_parquet(tmp, index=False), stage="prediction log",
                             advice="free space there or give the service another --log-uri")
            self.files.append(target)
            self.written_rows += len(frame)
        except Exception as exc:  # never take the service down for the log; say what was lost
            lost = sum(len(next(iter(c.values()))) for c in chunks)
            self.dropped += lost
            if self._on_drop is not None:
                self._on_drop(lost)
            logger.error("prediction log %s: writing %d rows failed (%s); they are lost", self.root, lost, exc)


def _merge(chunks: list[dict[str, list[Any]]]) -> dict[str, list[Any]]:
    """Chunks (column -> values) as one; a column missing from a chunk is null there."""
    merged: dict[str, list[Any]] = {}
    rows = 0
    for chunk in chunks:
        size = len(next(iter(chunk.values()), []))
        for name, values in chunk.items():
            merged.setdefault(name, [None] * rows).extend(values)
        for values in merged.values():
            if len(values) < rows + size:
                values.extend([None] * (rows + size - len(values)))
        rows += size
    return merged
