"""Logging: a run logger that works inside and outside Prefect runs, and a cap on every line's size.

A value can be huge (a 1 MiB category, a whole row); no log line or error message of this
package exceeds `MAX_MESSAGE_BYTES`. `shorten` cuts text in the middle, keeping both ends,
and a filter on the `prefect_mlops` logger and Prefect's run loggers applies it to every
record, whoever interpolated the value.
"""

from __future__ import annotations

import logging

from prefect_mlops.errors import MAX_MESSAGE_BYTES, MAX_VALUE_CHARS, brief, shorten

__all__ = ["MAX_MESSAGE_BYTES", "MAX_VALUE_CHARS", "ShortLines", "brief", "install_line_limit", "run_logger",
           "shorten"]

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


def run_logger() -> logging.Logger | logging.LoggerAdapter:
    """Prefect's run logger inside a flow or task run, else the `prefect_mlops` logger."""
    from prefect import get_run_logger
    from prefect.exceptions import MissingContextError

    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger("prefect_mlops")


install_line_limit()
