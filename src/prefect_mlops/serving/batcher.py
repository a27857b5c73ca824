"""Micro-batching: concurrent requests become one `predict` call.

Requests queue up while the model is busy; the worker thread takes everything queued (up to
`max_rows`) as the next batch. A lone request waits for nothing, and under load one call
scores many requests: the per-call cost of a scikit-learn pipeline (column checks,
transformers, pandas) is paid once per batch instead of once per request.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

logger = logging.getLogger("prefect_mlops.serving")


class MicroBatcher:
    """Runs `process(jobs) -> results` on batches of submitted jobs in one worker thread.

    `process` returns one result per job (an exception instance stands for that job's failure);
    `after(jobs, results)` runs once the callers have their answers (logging, shadow scoring).

    Example:
        ```python
        import asyncio
        from prefect_mlops.serving.batcher import MicroBatcher
        batcher = MicroBatcher(lambda jobs: [j * 2 for j in jobs], rows=lambda job: 1)
        async def main():
            batcher.start()
            return await asyncio.gather(*(batcher.submit(i) for i in range(5)))
        assert asyncio.run(main()) == [0, 2, 4, 6, 8]
        batcher.stop()
        ```
    """

    def __init__(self, process: Callable[[list[Any]], list[Any]], *, rows: Callable[[Any], int],
                 after: Callable[[list[Any], list[Any]], None] | None = None, max_rows: int = 1024) -> None:
        self._process = process
        self._rows = rows
        self._after = after
        self.max_rows = max_rows
        self._queue: queue.SimpleQueue[tuple[Any, asyncio.Future[Any], asyncio.AbstractEventLoop] | None] = \
            queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self.batches = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="micro-batcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join(timeout=30)

    async def submit(self, job: Any) -> Any:
        """Queue `job` and wait for its result (raised when it is an exception)."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue.put((job, future, loop))
        result = await future
        if isinstance(result, BaseException):
            raise result
        return result

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            rows = self._rows(first[0])
            while rows < self.max_rows:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self._queue.put(None)  # stop after this batch
                    break
                batch.append(item)
                rows += self._rows(item[0])
            jobs = [job for job, _, _ in batch]
            try:
                results = self._process(jobs)
            except Exception as exc:  # a bug in process must not hang its callers
                logger.exception("micro-batch of %d requests failed", len(jobs))
                results = [exc] * len(jobs)
            self.batches += 1
            for (_, future, loop), result in zip(batch, results, strict=True):
                loop.call_soon_threadsafe(_resolve, future, result)
            if self._after is not None:
                try:
                    self._after(jobs, results)
                except Exception:
                    logger.exception("after-batch work (log, shadow) failed; the answers were already sent")


def _resolve(future: asyncio.Future[Any], result: Any) -> None:
    if not future.done():
        future.set_result(result)
