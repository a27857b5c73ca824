"""Model files written and read in a copy of this process, forked as a training run starts.

skops, the format scikit-learn models are saved in, takes seconds to import: it walks every
scikit-learn module, and so imports torch where torch is installed. A training run used to pay that
import on its critical path, at its first save. `start()` forks this process; the copy imports skops
on another core while the run reads, checks and fits its data, then writes and reads the run's model
files (`run`), so the run never waits for the import.

Only files are written and read there. A loaded model comes back pickled and predicts here, so no
OpenMP thread pool ever runs in the forked copy (GNU OpenMP, which scikit-learn's wheels carry, hangs
in a child forked after its parent used it). That pickle is made by the copy from the objects skops
rebuilt out of files whose checksums were verified first, so unpickling it runs only those trusted
types' own code, as the skops load did.

`run(fn, ...)` is `fn(...)` wherever it runs. When there is no copy (a platform without fork,
`PREFECT_MLOPS_MODEL_PROCESS=0`, `start()` not called) or the copy fails in any way (it died or hung,
an argument or the result does not pickle, `fn` raised there), `fn` runs here, so its errors are raised
here with their own types and nothing is lost.

Example:
    ```python
    import operator
    from prefect_mlops import model_io
    model_io.start(imports=())
    assert model_io.run(operator.add, 2, 3) == 5
    model_io.stop()
    ```
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

T = TypeVar("T")

IMPORTS = ("skops.io", "mlflow.sklearn", "mlflow.pyfunc")
"""What the copy imports before it serves: what saving and loading a scikit-learn model with skops needs."""

READY_SECONDS = 60.0
"""From the fork: the imports take a few seconds; a copy not ready by then is stuck, and is stopped."""

CALL_SECONDS = 900.0
"""One save or load; a copy that takes longer is stopped and the work done here."""

IDLE_SECONDS = 600.0
"""A copy nobody asked anything for this long exits (the next `run` then works here)."""

_lock = threading.Lock()
_copy: _Copy | None = None
log = logging.getLogger(__name__)


def enabled() -> bool:
    """Whether `start()` forks: on Linux, unless `PREFECT_MLOPS_MODEL_PROCESS=0`.

    macOS has fork, but its system libraries are not safe to use in a forked copy of a process with threads.
    """
    return sys.platform.startswith("linux") and os.environ.get("PREFECT_MLOPS_MODEL_PROCESS", "1") != "0"


def start(imports: Iterable[str] = IMPORTS) -> bool:
    """Fork a fresh copy that imports `imports` and then serves `run`; True when one was started.

    A copy from an earlier start is stopped first: the new one sees this process as it is now (a
    module patched since, a class defined since).
    """
    global _copy
    if not enabled():
        return False
    with _lock:
        if _copy is not None:
            _copy.stop()
        _copy = _Copy.fork(tuple(imports))
        return _copy is not None


def stop() -> None:
    """Stop the copy, if any (it also ends when this process does)."""
    global _copy
    with _lock:
        if _copy is not None:
            _copy.stop()
            _copy = None


def run(fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """`fn(*args, **kwargs)`, in the copy when one is serving, else (or when that fails in any way) here.

    `fn` must be importable by name (a module-level function), and it must only write and read files:
    its arguments and result cross by pickle.
    """
    global _copy
    with _lock:  # one request at a time: the copy serves them in order
        copy = _copy if _copy is not None and _copy.owner == os.getpid() else None
        if copy is not None:
            done, value = copy.call(fn, args, kwargs)
            if done:
                return value
            if value is not None:
                log.debug("model files: %s; %s runs in this process", value, getattr(fn, "__qualname__", fn))
            if not copy.serving:
                copy.stop()
                _copy = None
    return fn(*args, **kwargs)


class _Copy:
    """The forked copy and this process's end of the pipe to it."""

    def __init__(self, process: Any, conn: Any) -> None:
        self.process, self.conn = process, conn
        self.owner, self.forked = os.getpid(), time.monotonic()
        self.ready, self.serving, self.served = False, True, 0

    @classmethod
    def fork(cls, imports: tuple[str, ...]) -> _Copy | None:
        try:
            context = multiprocessing.get_context("fork")
            ours, theirs = context.Pipe()
            process = context.Process(target=_serve, args=(theirs, ours, imports), daemon=True,
                                      name="prefect-mlops-model-files")
            with warnings.catch_warnings():
                # Python 3.12 warns on a fork beside threads; the copy runs none and only reads and
                # writes files, with its logging and streams cut off from the parent's (`_serve`).
                warnings.simplefilter("ignore", DeprecationWarning)
                process.start()
            theirs.close()  # so the copy's end closes when it exits, and `recv` here sees that
        except Exception as exc:  # a daemonic process may not fork, fds may run out: work here instead
            log.debug("model files: no copy of this process (%s: %s)", type(exc).__name__, exc)
            return None
        return cls(process, ours)

    def call(self, fn: Callable[..., Any], args: tuple, kwargs: dict) -> tuple[bool, Any]:
        """(True, result), or (False, why not); `serving` turns False when the copy must not be asked again."""
        try:
            if not self.ready:
                if not self.conn.poll(max(0.0, self.forked + READY_SECONDS - time.monotonic())):
                    self.serving = False
                    return False, f"the copy was not ready {READY_SECONDS:.0f} s after it was forked"
                kind, detail = self.conn.recv()
                if kind != "ready":
                    self.serving = False
                    return False, f"the copy could not import what it needs ({detail})"
                self.ready = True
            self.conn.send((fn, args, kwargs))
            if not self.conn.poll(CALL_SECONDS):
                self.serving = False
                return False, f"the copy took longer than {CALL_SECONDS:.0f} s"
            kind, value = self.conn.recv()
        except (EOFError, OSError) as exc:  # it exited (idle, killed, out of memory)
            self.serving = False
            return False, f"the copy is gone ({type(exc).__name__}: {exc})"
        except Exception as exc:  # an argument that does not pickle: the copy is fine, this call is not
            return False, f"the call could not be sent ({type(exc).__name__}: {exc})"
        if kind == "ok":
            self.served += 1
            return True, value
        return False, value

    def stop(self) -> None:
        self.serving = False
        try:
            self.conn.close()
            if self.process.is_alive():
                self.process.terminate()
            self.process.join(5)
            if self.process.is_alive():
                self.process.kill()
                self.process.join(5)
        except Exception as exc:  # stopping must never fail the run that asked
            log.debug("model files: stopping the copy: %s", exc)


def _serve(conn: Any, parents_end: Any, imports: tuple[str, ...]) -> None:
    """The copy: import, say so, then run what is asked until the pipe closes or nobody asks for a while."""
    parents_end.close()  # else the pipe stays open after the parent dies, and this copy would wait on
    # Objects inherited from the parent: a collection here would touch, and so copy, every page that holds one.
    gc.freeze()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the parent's handlers belong to its run, not to this copy
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    # A lock on the parent's streams or log handlers may have been held by one of its threads at the fork:
    # the copy writes to neither (what goes wrong is sent back and raised in the parent).
    logging.disable(logging.CRITICAL)
    warnings.simplefilter("ignore")
    sys.stdout = sys.stderr = open(os.devnull, "w")  # the copy's streams until it exits
    with contextlib.suppress(Exception):  # threadpoolctl comes with scikit-learn; without it nothing parallel loads
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)  # should a loader run a parallel loop, it runs on this thread, not an inherited pool
    try:
        for name in imports:
            importlib.import_module(name)
    except BaseException as exc:
        conn.send(("failed", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("ready", None))
    while conn.poll(IDLE_SECONDS):
        try:
            fn, args, kwargs = conn.recv()
        except EOFError:
            return
        except Exception as exc:  # a class this copy cannot import by name: answer, and go on serving
            conn.send(("failed", f"the copy could not read the call ({type(exc).__name__}: {exc})"))
            continue
        try:
            answer = ("ok", fn(*args, **kwargs))
        except BaseException as exc:  # sent as text: the parent runs fn again and raises the real thing
            answer = ("failed", f"{getattr(fn, '__qualname__', fn)} raised {type(exc).__name__}: {exc}")
        try:
            conn.send(answer)
        except Exception as exc:
            conn.send(("failed", f"the result could not be sent back ({type(exc).__name__}: {exc})"))
