"""What a person sees while the loop runs: progress on stderr, and a patient embedded Prefect API.

Long work reports its steps through `report` (training epochs, drift columns, backtest periods) and
Prefect's run loggers report finished stages; nothing is shown unless a command or the demo opened
`progress_on_stderr()`. On a terminal that is a `rich` progress display; elsewhere (CI logs, a pipe)
plain lines, a few per piece of work, so that no output is broken by control characters.

Example:
    ```python
    from prefect_mlops.console import progress_on_stderr, report
    report("epochs", "train churn", 1, 30)  # nobody is watching: does nothing
    with progress_on_stderr(enabled=False):
        report("epochs", "train churn", 2, 30)
    ```
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TextIO

__all__ = ["EMBEDDED_API_TIMEOUT_S", "embedded_api_defaults", "progress_on_stderr", "report", "stage"]

# Prefect waits 20 s for the embedded API to answer; a busy 2-core machine took longer in 2 of 6 runs
# ("Timed out while attempting to connect to ephemeral Prefect API server").
EMBEDDED_API_TIMEOUT_S = 180
_TIMEOUT_VAR = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"


def embedded_api_defaults(timeout_s: int = EMBEDDED_API_TIMEOUT_S) -> None:
    """Give the embedded Prefect API `timeout_s` to start and no telemetry, unless the user chose otherwise.

    A value set in the environment or in the active Prefect profile is kept. The embedded server
    runs offline on a loopback port; its telemetry call fails there and logs an ERROR on every run,
    so `PREFECT_SERVER_ANALYTICS_ENABLED` defaults to false for it (a profile setting still wins).
    """
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # read by the server process it starts
    if _TIMEOUT_VAR in os.environ:
        return
    os.environ[_TIMEOUT_VAR] = str(timeout_s)
    import prefect.context
    from prefect.settings import load_current_profile

    if any(getattr(setting, "name", setting) == _TIMEOUT_VAR for setting in load_current_profile().settings):
        del os.environ[_TIMEOUT_VAR]  # the profile's value is the user's choice
    prefect.context.refresh_global_settings_context()  # Prefect read the environment when it was imported


class _Plain:
    """Progress as plain lines: a stage per line, counted work at its start, every quarter and its end."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.lock = threading.Lock()
        self.shown: dict[tuple[str, str], int] = {}
        self.last_stage = ("", 0.0)

    def count(self, kind: str, what: str, done: int, total: int | None) -> None:
        key = (kind, what)
        quarter = 4 * done // total if total else done
        with self.lock:
            if done != 1 and self.shown.get(key) == quarter and done != total:
                return
            self.shown[key] = quarter
            of = f"/{total}" if total else ""
            self.stream.write(f"  {what}: {kind} {done}{of}\n")
            self.stream.flush()

    def stage(self, text: str) -> None:
        import re

        same = re.sub(r"\(\d+ s\)", "", text)  # a waiting line repeats with a new time: show it every 30 s
        now = time.monotonic()
        with self.lock:
            if same == self.last_stage[0] and now - self.last_stage[1] < 30:
                return
            self.last_stage = (same, now)
            self.stream.write(f"  {text}\n")
            self.stream.flush()

    def close(self) -> None:
        pass


class _Rich:
    """Progress as a `rich` display on a terminal: one bar per piece of counted work, a line for the stage."""

    def __init__(self, stream: TextIO) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        self.progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                                 MofNCompleteColumn(), TimeElapsedColumn(),
                                 console=Console(file=stream), transient=True,
                                 # lines printed meanwhile go above the display, not through it
                                 redirect_stdout=sys.stdout.isatty(), redirect_stderr=False)
        self.tasks: dict[tuple[str, str], Any] = {}
        self.stage_task = self.progress.add_task("starting", total=None)
        self.progress.start()

    def count(self, kind: str, what: str, done: int, total: int | None) -> None:
        key = (kind, what)
        if key not in self.tasks:
            self.tasks[key] = self.progress.add_task(f"{what}: {kind}", total=total)
        self.progress.update(self.tasks[key], completed=done, total=total)
        if total and done >= total:
            self.progress.remove_task(self.tasks.pop(key))

    def stage(self, text: str) -> None:
        self.progress.update(self.stage_task, description=text)

    def close(self) -> None:
        self.progress.stop()


_DISPLAY: _Plain | _Rich | None = None


def report(kind: str, what: str, done: int, total: int | None = None) -> None:
    """`done` of `total` units of `kind` (epochs, columns, periods) of `what`; shown only while someone watches."""
    display = _DISPLAY
    if display is not None:
        try:
            display.count(kind, what, done, total)
        except Exception:  # progress must never break the work it reports on
            logging.getLogger("prefect_mlops").debug("progress display failed", exc_info=True)


def stage(text: str) -> None:
    """The stage now running or just finished, in words; shown only while someone watches."""
    display = _DISPLAY
    if display is not None:
        try:
            display.stage(text)
        except Exception:
            logging.getLogger("prefect_mlops").debug("progress display failed", exc_info=True)


class _StageFromRunLogs(logging.Filter):
    """Turns Prefect's "Finished in state ..." run-log records into stage progress.

    The run loggers are lowered to INFO while progress is shown so these records are seen even when
    the user's level is WARNING; every record under the user's level is then dropped here, so the
    logs themselves show exactly what they did before.
    """

    def __init__(self, keep_from: int) -> None:
        super().__init__()
        self.keep_from = keep_from
        self.started = time.monotonic()

    def filter(self, record: logging.LogRecord) -> bool:
        name = getattr(record, "task_run_name", None) or getattr(record, "flow_run_name", None)
        message = record.msg if isinstance(record.msg, str) else ""
        if name and message.startswith("Finished in state"):
            state = message.removeprefix("Finished in state ").split("(")[0]
            kind = "task" if getattr(record, "task_run_name", None) else "flow run"
            stage(f"{kind} {name}: {state} ({time.monotonic() - self.started:.0f} s)")
        elif name and message.startswith("Beginning flow run"):
            stage(f"flow run {name}: running")
        return record.levelno >= self.keep_from


_RUN_LOGGERS = ("prefect.task_runs", "prefect.flow_runs")


@contextmanager
def progress_on_stderr(enabled: bool = True, stream: TextIO | None = None, *, stages: bool = True) -> Iterator[None]:
    """Show progress on `stream` (stderr) while the block runs: `rich` on a terminal, plain lines elsewhere.

    `stages=False` leaves out the finished tasks and flow runs (a long replay has thousands).
    """
    global _DISPLAY
    if not enabled or _DISPLAY is not None:
        yield
        return
    import prefect.main  # noqa: F401 - configures Prefect's logging, which would reset the levels set here

    stream = stream or sys.stderr
    display: _Plain | _Rich = _Rich(stream) if stream.isatty() else _Plain(stream)
    loggers = [logging.getLogger(name) for name in _RUN_LOGGERS] if stages else []
    keep_from = logging.getLogger("prefect").getEffectiveLevel()
    watcher = _StageFromRunLogs(keep_from)
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addFilter(watcher)
        if logger.getEffectiveLevel() > logging.INFO:
            logger.setLevel(logging.INFO)
    _DISPLAY = display
    try:
        yield
    finally:
        _DISPLAY = None
        for logger, level in zip(loggers, levels, strict=True):
            logger.removeFilter(watcher)
            logger.setLevel(level)
        display.close()
