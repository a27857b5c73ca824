"""Model files written and read in a copy of this process, forked as a training run starts.

skops, the format scikit-learn models are saved in, takes seconds to import: it walks every
scikit-learn module, and so imports torch where torch is installed. A training run used to pay that
import on its critical path, at its first save. `start()` forks this process; the copy imports skops
on another core while the run reads, checks and fits its data, then writes and reads the run's model
files (`run`), so the run does not wait for the import.

What the copy may touch is narrow, because it is a fork of a process with threads:
- it holds none of the parent's files, sockets or locks: every descriptor it inherits is pointed at
  /dev/null before it does anything (a model's lock file stays the parent's alone);
- it writes no log line and no warning itself: it records them and the parent emits them;
- it only writes and reads files. A loaded model comes back pickled and predicts here, so no OpenMP
  thread pool ever runs in the forked copy (GNU OpenMP, which scikit-learn's wheels carry, hangs in a
  child forked after its parent used it). What comes back is what loading the model in this process
  would have built, from files whose checksums this process verified first.
Calls and results cross as pickle files in a private folder, so their size never fills a pipe.

`run(fn, ...)` is `fn(...)` wherever it runs. When there is no copy (a platform without fork, one
core, `PREFECT_MLOPS_MODEL_PROCESS=0`, `start()` not called) or the copy fails in any way (it died or
hung, a call or its result does not pickle, `fn` raised there), `fn` runs here, so its errors are
raised here with their own types and nothing is lost. An interrupted call (a signal, a timeout)
stops the copy: a half-answered call is never read as the next call's answer.

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
import importlib
import itertools
import logging
import multiprocessing.connection
import os
import pickle
import shutil
import signal
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from prefect_mlops.errors import StorageError

T = TypeVar("T")

IMPORTS = ("skops.io", "mlflow.sklearn", "mlflow.pyfunc")
"""What the copy imports before it serves: what saving and loading a scikit-learn model with skops needs."""

READY_SECONDS = 60.0
"""From the fork: the imports take a few seconds; a copy not ready by then is stuck, and is stopped."""

CALL_SECONDS = 900.0
"""One save or load; a copy that takes longer is stopped and the work done here."""

IDLE_SECONDS = 600.0
"""A copy asked nothing for this long after its last call exits (the next `run` then works here). Before its
first call it waits as long as the run fits: it ends with its process, or at `stop()`."""

WAIT_NOTE_SECONDS = 30.0
"""While a call takes longer than this, a line says so every as many seconds."""

_EXIT_IDLE, _EXIT_FAILED = 0, 3

_lock = threading.Lock()
_copy: _Copy | None = None
_sequence = itertools.count(1)
log = logging.getLogger(__name__)


def enabled() -> bool:
    """Whether `start()` forks: on Linux with two cores or more, unless `PREFECT_MLOPS_MODEL_PROCESS=0`.

    macOS has fork, but its system libraries are not safe in a forked copy of a process with threads;
    with one core there is nothing to overlap the import with.

    Example:
        ```python
        from prefect_mlops import model_io
        assert model_io.enabled() in (True, False)
        ```
    """
    if not sys.platform.startswith("linux") or os.environ.get("PREFECT_MLOPS_MODEL_PROCESS", "1") == "0":
        return False
    return len(os.sched_getaffinity(0)) >= 2


def start(imports: Iterable[str] = IMPORTS) -> bool:
    """Fork a copy that imports `imports` and then serves `run`, unless one serves already; True when one does.

    A copy serves the runs that follow in this process (a backtest's cycles pay skops' import once) until
    it has been idle for `IDLE_SECONDS` or `stop()` is called; code patched here after the fork is not
    seen there.

    Example:
        ```python
        from prefect_mlops import model_io
        model_io.start(imports=())
        model_io.stop()
        ```
    """
    global _copy
    if not enabled():
        return False
    with _lock:
        if _copy is not None and _copy.serving and _copy.owner == os.getpid() and _copy.alive():
            return True
        if _copy is not None:
            _copy.stop()
        _copy = _Copy.fork(tuple(imports))
        return _copy is not None


def stop() -> None:
    """Stop the copy, if any (it also ends when this process does).

    Example:
        ```python
        from prefect_mlops import model_io
        model_io.stop()
        ```
    """
    global _copy
    with _lock:
        if _copy is not None:
            _copy.stop()
            _copy = None


def run(fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """`fn(*args, **kwargs)`, in the copy when one is serving, else (or when that fails in any way) here.

    `fn` must be importable by name (a module-level function), and it must only write and read files:
    its arguments and result cross by pickle.

    Example:
        ```python
        import operator
        from prefect_mlops import model_io
        assert model_io.run(operator.mul, 6, 7) == 42
        ```
    """
    global _copy
    if not _lock.acquire(blocking=False):  # another thread's call is in the copy: this one does not queue
        return fn(*args, **kwargs)
    try:
        copy = _copy if _copy is not None and _copy.owner == os.getpid() else None
        if copy is not None:
            try:
                done, value = copy.call(fn, args, kwargs)
            except BaseException:  # interrupted mid-call: its answer must never be read as another's
                _copy = None
                copy.stop()
                raise
            if done:
                return value
            name = getattr(fn, "__qualname__", repr(fn))
            if copy.serving:
                log.info("model files: %s; %s runs in this process", value, name)
            else:
                if copy.loud:
                    log.warning("model files: %s; %s runs in this process (PREFECT_MLOPS_MODEL_PROCESS=0 skips "
                                "the copy)", value, name)
                _copy = None
                if not copy.stop() and copy.in_flight:  # what it still writes must not mix with a second attempt
                    raise StorageError(f"model files: the copy of this process (pid {copy.pid}) did not exit "
                                       f"after SIGKILL, so {name} was not run again here; stop that process "
                                       "and retry the run")
    finally:
        _lock.release()
    return fn(*args, **kwargs)


def _forget_in_child() -> None:
    """In any process forked from this one: no copy of its own yet, and a lock nobody holds."""
    global _lock, _copy
    _lock, _copy = threading.Lock(), None


os.register_at_fork(after_in_child=_forget_in_child)


class _Copy:
    """The forked copy: its pid, the pipe to it, and the private folder calls and results cross in."""

    def __init__(self, pid: int, conn: Any, folder: str) -> None:
        self.pid, self.conn, self.folder = pid, conn, folder
        self.owner, self.forked = os.getpid(), time.monotonic()
        self.ready, self.serving, self.served, self.exited, self.status = False, True, 0, False, None
        self.loud, self.in_flight = True, False  # whether a failure is worth a warning; whether a call was sent

    @classmethod
    def fork(cls, imports: tuple[str, ...]) -> _Copy | None:
        folder = ours = theirs = None
        try:
            folder = tempfile.mkdtemp(prefix="prefect-mlops-model-files-")  # 0700: only this user reads calls
            ours, theirs = multiprocessing.Pipe()
            with warnings.catch_warnings():
                # Python 3.12 warns on a fork beside threads; what the copy may touch is narrowed at once
                # (`_serve`): no inherited descriptor, no handler of the parent's, files only.
                warnings.simplefilter("ignore", DeprecationWarning)
                pid = os.fork()
        except Exception as exc:  # fds or processes ran out: the work is done here instead
            log.warning("model files: no copy of this process (%s: %s); models are saved and loaded here",
                        type(exc).__name__, exc)
            for end in (ours, theirs):
                if end is not None:
                    end.close()
            if folder:
                shutil.rmtree(folder, ignore_errors=True)
            return None
        if pid == 0:  # the copy: never returns into the parent's code
            code = _EXIT_FAILED
            try:
                code = _serve(theirs, imports, folder)
            finally:
                os._exit(code)
        theirs.close()  # so the copy's end closes when it exits, and `recv` here sees that
        return cls(pid, ours, folder)

    def alive(self) -> bool:
        if not self.exited:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)  # reaps it: no zombie
            except ChildProcessError:
                pid, status = self.pid, None
            if pid == self.pid:
                self.exited, self.status = True, status
        return not self.exited

    def idled_out(self) -> bool:
        """Whether it exited by itself, as a copy asked nothing for `IDLE_SECONDS` does."""
        return self.exited and self.status is not None and os.WIFEXITED(self.status) \
            and os.WEXITSTATUS(self.status) == _EXIT_IDLE

    def _answer(self, seconds: float, waiting_for: str) -> Any:
        """The copy's next message, waiting in short steps that notice its death; None when the time ran out."""
        started = time.monotonic()
        deadline, note = started + seconds, started + WAIT_NOTE_SECONDS
        while True:
            if self.conn.poll(min(0.5, max(0.0, deadline - time.monotonic()))):
                return self.conn.recv()
            if not self.alive():
                raise EOFError(f"the copy (pid {self.pid}) exited")
            now = time.monotonic()
            if now >= deadline:
                return None
            if now >= note:
                note = now + WAIT_NOTE_SECONDS
                log.info("model files: waiting %.0f s so far for the copy (pid %s) to %s; it is stopped after %.0f s",
                         now - started, self.pid, waiting_for, seconds)

    def call(self, fn: Callable[..., Any], args: tuple, kwargs: dict) -> tuple[bool, Any]:
        """(True, result), or (False, why not).

        `serving` turns False when the copy must not be asked again; `loud` says whether that deserves a
        warning (a copy that exited idle does not).
        """
        name = getattr(fn, "__qualname__", repr(fn))
        if not self.ready:
            try:
                hello = self._answer(self.forked + READY_SECONDS - time.monotonic(), "import what it needs")
            except Exception as exc:  # gone, or a message that does not read: not asked again
                self.serving = False
                return False, f"the copy is gone ({type(exc).__name__}: {exc})"
            if hello is None or hello[0] != "ready":
                self.serving = False
                return False, (f"the copy was not ready {READY_SECONDS:.0f} s after it was forked" if hello is None
                               else f"the copy could not import what it needs ({hello[1]})")
            self.ready = True
        seq = next(_sequence)
        asked = os.path.join(self.folder, f"{seq}.call")
        try:
            with open(asked, "wb") as file:
                pickle.dump((fn, args, kwargs), file, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:  # an argument that does not pickle, a full disk: the copy is fine
            with contextlib.suppress(OSError):
                os.remove(asked)
            return False, f"the call could not be handed over ({type(exc).__name__}: {exc})"
        try:
            self.in_flight = True
            self.conn.send((seq, asked))
            answer = self._answer(CALL_SECONDS, f"run {name}")
            self.in_flight = answer is None
        except (EOFError, OSError) as exc:  # it exited (idle, killed, out of memory)
            self.serving, self.in_flight = False, False
            deadline = time.monotonic() + 1  # its pipe closes as it exits: give the exit a moment to be reaped
            while self.alive() and time.monotonic() < deadline:
                time.sleep(0.01)
            self.loud = not self.idled_out()
            return False, (f"the copy had exited after {IDLE_SECONDS:.0f} s without a call" if not self.loud
                           else f"the copy is gone ({type(exc).__name__}: {exc})")
        except Exception as exc:  # an answer that does not read here: the stream is not trusted again
            self.serving = False
            return False, f"the copy's answer could not be read ({type(exc).__name__}: {exc})"
        if answer is None:
            self.serving = False
            return False, f"the copy took longer than {CALL_SECONDS:.0f} s"
        got, kind, value, notes = answer
        if got != seq:  # cannot happen while every interruption stops the copy; never trust a mismatch
            self.serving = False
            return False, f"the copy answered call {got} to call {seq}"
        if kind != "ok":  # fn runs here next: what it warns and logs is said once, there
            return False, value
        try:
            if os.path.dirname(value) != self.folder:
                raise ValueError(f"{value} is not in {self.folder}")
            with open(value, "rb") as file:  # written by the copy, in this user's private (0700) folder
                result = pickle.load(file)  # noqa: S301
        except Exception as exc:  # a class this process cannot import by name: the copy is fine
            return False, f"the result could not be read here ({type(exc).__name__}: {exc})"
        finally:
            with contextlib.suppress(OSError):
                os.remove(value)
        try:
            _replay(notes)
        except Exception as exc:  # a warning turned error by this process's filters: raised where fn runs here
            return False, f"a warning of the copy's is an error here ({type(exc).__name__}: {exc})"
        self.served += 1
        return True, result

    def stop(self) -> bool:
        """SIGKILL (it holds nothing of the parent's to clean up), reap, remove the folder; False if it lives on."""
        self.serving = False
        with contextlib.suppress(Exception):
            self.conn.close()
        if self.owner != os.getpid():  # a fork of the run: the copy and its folder are the run's, not this one's
            return True
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            deadline = time.monotonic() + 5
            while self.alive() and time.monotonic() < deadline:
                time.sleep(0.01)
        if self.alive():  # in uninterruptible I/O: its folder may still be written, so it is left
            log.warning("model files: the copy (pid %s) did not exit after SIGKILL; %s is left in place",
                        self.pid, self.folder)
            return False
        shutil.rmtree(self.folder, ignore_errors=True)
        return True


_REGISTRIES: dict[str, dict] = {}


def _replay(notes: list[tuple[str, Any]]) -> None:
    """Emit here the warnings and log records the copy recorded, as if the call had run here.

    A warning keeps its module (filters keyed on it still match) and its registry ("default" shows it once).
    """
    for kind, note in notes:
        if kind == "warning":
            message, category, filename, lineno, module = note
            warnings.warn_explicit(message, category, filename, lineno, module=module,
                                   registry=_REGISTRIES.setdefault(module, {}))
        else:
            name, level, message = note
            logging.getLogger(name).log(level, "%s", message)


def _module_of(filename: str) -> str:
    """The name of the imported module whose file is `filename` (what `warnings` keys filters on)."""
    for name, module in list(sys.modules.items()):
        if getattr(module, "__file__", None) == filename:
            return name
    return os.path.splitext(os.path.basename(filename))[0]


class _Recorder(logging.Handler):
    """The copy's one log handler: records what its loggers say, for the parent to emit."""

    def __init__(self) -> None:
        super().__init__(logging.NOTSET)
        self.notes: list[tuple[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):
            self.notes.append(("log", (record.name, record.levelno, record.getMessage())))


def _only_recorder(recorder: _Recorder) -> None:
    """Every record reaches `recorder` once, and no handler of the parent's is used again.

    The recorder sits where a record's way up ends: on the root logger and on every logger that does not
    propagate. A parent's handler may hold a lock taken by one of its threads, which does not exist here,
    or send to the parent's API.
    """
    for logger in [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]:
        if isinstance(logger, logging.Logger):
            logger.handlers = [recorder] if logger is logging.getLogger() or not logger.propagate else []


def _cut_off_from_parent(keep: int) -> None:
    """Point every inherited descriptor but `keep` at /dev/null.

    The copy then holds none of the parent's files, sockets or locks (an `flock` held through an
    inherited descriptor would outlive the parent's release). Pointing instead of closing keeps each
    number taken, so an inherited object that closes its own later cannot close a file opened since.
    """
    null = os.open(os.devnull, os.O_RDWR)
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd not in (keep, null):
            with contextlib.suppress(OSError):
                os.dup2(null, fd)
    os.close(null)


def _serve(conn: Any, imports: tuple[str, ...], folder: str) -> int:
    """The copy: import, say so, then run what is asked until the pipe closes or, after a call, nobody asks
    for `IDLE_SECONDS`; its exit code."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the parent's handlers belong to its run, not to this copy
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C is the parent's to handle; it stops this
    _cut_off_from_parent(conn.fileno())
    recorder = _Recorder()
    _only_recorder(recorder)
    import gc

    gc.freeze()  # the parent's objects: a collection here would touch, and so copy, every page that holds one
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # a process that only reads and writes files
    with contextlib.suppress(Exception):  # threadpoolctl comes with scikit-learn; without it nothing parallel loads
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)  # should a loader run a parallel loop, it runs on this thread, not an inherited pool
    try:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # import-time warnings are the parent's to see when it imports
                for name in imports:
                    importlib.import_module(name)
        except BaseException as exc:
            conn.send(("failed", f"{type(exc).__name__}: {exc}"))
            return _EXIT_FAILED
        _only_recorder(recorder)  # the loggers the imports added, too
        conn.send(("ready", None))
        wait = None  # until the first call: as long as the run fits
        while conn.poll(wait):
            try:
                seq, asked = conn.recv()
            except EOFError:  # the parent closed its end or exited
                return _EXIT_IDLE
            recorder.notes = []
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("default")
                kind, value = _answer_call(asked)
            notes = [*(("warning", (str(w.message), w.category, w.filename, w.lineno, _module_of(w.filename)))
                       for w in caught), *recorder.notes]
            try:
                conn.send((seq, kind, value, notes))
            except Exception:  # a warning category that does not pickle: its text still goes
                conn.send((seq, kind, value, [(k, n) for k, n in notes if k == "log"]))
            wait = IDLE_SECONDS
        return _EXIT_IDLE
    finally:  # whatever is in it belongs to calls nobody will read now
        shutil.rmtree(folder, ignore_errors=True)


def _answer_call(asked: str) -> tuple[str, str]:
    """Run the call pickled in `asked`: ("ok", the result's pickle file) or ("failed", why).

    Its arguments and result are released on return: the copy holds no model between calls.
    """
    try:
        with open(asked, "rb") as file:  # written by the parent, in its private (0700) folder
            fn, args, kwargs = pickle.load(file)  # noqa: S301
        result = fn(*args, **kwargs)
    except BaseException as exc:  # sent as text: the parent runs fn again and raises the real thing
        return "failed", f"{type(exc).__name__} in the copy: {exc}"
    finally:
        with contextlib.suppress(OSError):
            os.remove(asked)
    answered = f"{asked[:-len('.call')]}.result"
    try:
        with open(answered, "wb") as file:
            pickle.dump(result, file, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        with contextlib.suppress(OSError):
            os.remove(answered)
        return "failed", f"the result could not be handed back ({type(exc).__name__}: {exc})"
    return "ok", answered
