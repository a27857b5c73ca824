"""Logging: a run logger that works inside and outside Prefect runs, and a cap on every line's size.

A value can be huge (a 1 MiB category, a whole row); no log line or error message of this
package exceeds `MAX_MESSAGE_BYTES`. `shorten` cuts text in the middle, keeping both ends,
and a filter on the `prefect_mlops` logger and Prefect's run loggers applies it to every
record, whoever interpolated the value.
"""

from __future__ import annotations

import logging

from prefect_mlops.errors import MAX_MESSAGE_BYTES, MAX_VALUE_CHARS, brief, shorten

__all__ = ["MAX_MESSAGE_BYTES", "MAX_VALUE_CHARS", "ShortLines", "brief", "install_line_limit",
           "install_noise_filters", "run_logger", "shorten"]

# A filter acts only on records of its own logger: every logger that quotes parameters or errors is listed.
_LOGGERS = ("prefect_mlops", "prefect.flow_runs", "prefect.task_runs", "prefect.flows", "prefect.engine",
            "prefect.task_engine", "prefect.flow_engine", "prefect.tasks")


class ShortLines(logging.Filter):
    """Cuts a record's message (and its formatted traceback) to `MAX_MESSAGE_BYTES`."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record: let the handler report it as it would
            return True
        if len(message) > MAX_MESSAGE_BYTES // 4 and len(message.encode("utf-8", "replace")) > MAX_MESSAGE_BYTES:
            record.msg, record.args = shorten(message), None
        if record.exc_info and not record.exc_text:
            text = logging.Formatter().formatException(record.exc_info)
            if len(text.encode("utf-8", "replace")) > MAX_MESSAGE_BYTES:
                record.exc_text = shorten(text)  # formatters use exc_text when it is set
        return True


_FILTER = ShortLines()


def install_line_limit() -> None:
    """Put the size cap on this package's logger and Prefect's flow and task run loggers (idempotent)."""
    for name in _LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)


class DropMlflowPickleAdvice(logging.Filter):
    """Drops MLflow's generic warning, at every model saved with cloudpickle, that pickle can run code.

    Models are saved with skops when it can rebuild them; when it cannot (a torch network, a type
    outside the trusted list), training logs its own warning naming the run and the reason, and
    every file is checked against its SHA-256 before loading. Every other record of
    `mlflow.sklearn` passes.
    """

    PREFIX = "Saving scikit-learn models in the pickle or cloudpickle format"

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno == logging.WARNING and isinstance(record.msg, str)
                    and record.msg.startswith(self.PREFIX))


class OneReportPerFailure(logging.Filter):
    """One log record for a failure of this package, not four.

    A task that raises one of this package's errors (`MlopsError`: its message names the culprit
    and what to do) was logged by Prefect four times: the task's error with a traceback, the task's
    final state, the flow's error with the same traceback, the flow's final state. The first record
    stays, without the traceback into this package's code; the three repeats in the same flow run,
    which quote the same message, are dropped. Any other exception (a bug, a library's error) keeps its traceback and
    every record.
    """

    def __init__(self) -> None:
        super().__init__()
        import collections
        import threading

        self._lock = threading.Lock()
        self._reported: collections.deque[tuple[str, str]] = collections.deque(maxlen=64)

    def filter(self, record: logging.LogRecord) -> bool:
        from prefect_mlops.errors import MlopsError

        run = getattr(record, "flow_run_id", None)
        if run is None:
            return True
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, MlopsError):
            seen = (str(run), str(exc))
            with self._lock:
                if seen in self._reported:
                    return False
                self._reported.append(seen)
            record.exc_info, record.exc_text = None, None  # the message says what and where
            record.mlops_error = type(exc).__name__  # lets a command that says it itself keep it off the console
            return True
        if record.levelno >= logging.ERROR or "Finished in state" in str(record.msg):
            message = record.getMessage() if record.args else str(record.msg)
            with self._lock:
                if any(run_id == str(run) and text and text in message for run_id, text in self._reported):
                    return False
        return True


INTEGER_SCHEMA_HINT = r"\s*Hint: Inferred schema contains integer column"
_PICKLE_ADVICE = DropMlflowPickleAdvice()
_ONE_REPORT = OneReportPerFailure()


def install_noise_filters() -> None:
    """Precise filters for library noise that says nothing to a user of this package (idempotent).

    MLflow's pickle advice and integer-schema hint at every training, Prefect's repeats of one
    failure, and MLflow's artifact-download progress bar (`MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR`,
    unless the user set it).
    """
    import os
    import warnings

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # MLflow's advice at every model logged with an integer column; scoring goes through the logged
    # pipeline, whose imputer takes the missing values the advice is about.
    warnings.filterwarnings("ignore", message=INTEGER_SCHEMA_HINT, category=UserWarning,
                            module=r"mlflow\.types\.utils")
    mlflow_sklearn = logging.getLogger("mlflow.sklearn")
    if _PICKLE_ADVICE not in mlflow_sklearn.filters:
        mlflow_sklearn.addFilter(_PICKLE_ADVICE)
    for name in ("prefect.task_runs", "prefect.flow_runs"):
        logger = logging.getLogger(name)
        if _ONE_REPORT not in logger.filters:
            logger.addFilter(_ONE_REPORT)


def run_logger() -> logging.Logger | logging.LoggerAdapter:
    """Prefect's run logger inside a flow or task run, else the `prefect_mlops` logger."""
    from prefect import get_run_logger
    from prefect.exceptions import MissingContextError

    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger("prefect_mlops")


install_line_limit()
install_noise_filters()
