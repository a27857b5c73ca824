"""Progress on stderr: plain lines where no terminal is attached, a rich display on one, nothing otherwise."""

from __future__ import annotations

import io
import logging

import numpy as np
import pytest

from prefect_mlops.console import progress_on_stderr, report, stage


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_without_a_display_progress_is_a_no_op():
    report("epochs", "train churn", 1, 30)
    stage("nothing shows this")


def test_plain_lines_for_a_log_a_few_per_piece_of_work():
    log = io.StringIO()
    with progress_on_stderr(stream=log, stages=False):
        for done in range(1, 101):
            report("columns", "drift of churn", done, 100)
        stage("flow run x: Running (1 s)")
        stage("flow run x: Running (2 s)")  # the same line a second later: not repeated
    lines = log.getvalue().splitlines()
    assert lines[0] == "  drift of churn: columns 1/100" and lines[-2] == "  drift of churn: columns 100/100"
    assert len(lines) <= 7 and lines[-1] == "  flow run x: Running (1 s)"
    assert "\x1b" not in log.getvalue()  # no control characters in a CI log


def test_a_terminal_gets_a_rich_display_and_the_loggers_are_left_as_they_were():
    screen = Terminal()
    loggers = [logging.getLogger(name) for name in ("prefect.task_runs", "prefect.flow_runs")]
    before = [(logger.level, list(logger.filters)) for logger in loggers]
    with progress_on_stderr(stream=screen):
        report("epochs", "torch trainer", 3, 30)
        stage("task train-churn: Completed (4 s)")
    assert "\x1b" in screen.getvalue()  # drawn with control sequences, then cleared (transient)
    assert [(logger.level, list(logger.filters)) for logger in loggers] == before


def test_torch_training_reports_its_epochs():
    pytest.importorskip("torch")
    from prefect_mlops.tasks.torch_trainer import TabularNetEstimator

    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 3)).astype("float32")
    log = io.StringIO()
    with progress_on_stderr(stream=log, stages=False):
        TabularNetEstimator(hidden_layers=[4], epochs=4, patience=10, seed=1).fit(x, (x[:, 0] > 0).astype(int))
    assert "torch trainer: epochs 1/4" in log.getvalue() and "torch trainer: epochs 4/4" in log.getvalue()
