"""Library noise a user of this package does not need is silenced precisely; the same libraries' real
warnings and errors still show."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
import warnings

import pytest

from prefect_mlops.log import DropMlflowPickleAdvice, install_noise_filters


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def collect():
    """Records reaching the handlers of the named loggers (after their filters)."""
    attached: list[tuple[logging.Logger, Collect]] = []

    def on(*names: str) -> Collect:
        handler = Collect()
        for name in names:
            logger = logging.getLogger(name)
            logger.addHandler(handler)
            attached.append((logger, handler))
        return handler
    yield on
    for logger, handler in attached:
        logger.removeHandler(handler)


def test_mlflow_pickle_advice_is_dropped_and_its_other_warnings_pass(collect, tmp_path):
    import mlflow.sklearn
    from sklearn.linear_model import LogisticRegression

    seen = collect("mlflow.sklearn")
    logger = logging.getLogger("mlflow.sklearn")
    logger.setLevel(logging.INFO)
    model = LogisticRegression().fit([[0.0], [1.0]], [0, 1])
    mlflow.sklearn.save_model(model, tmp_path / "pickled", serialization_format="cloudpickle")  # the real warning
    logger.warning("some other advice from MLflow")
    messages = [r.getMessage() for r in seen.records]
    assert not any(m.startswith(DropMlflowPickleAdvice.PREFIX) for m in messages)
    assert "some other advice from MLflow" in messages


def test_mlflow_integer_schema_hint_is_ignored_and_its_other_warnings_show():
    import pandas as pd
    from mlflow.models import infer_signature

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        install_noise_filters()  # in front of "always", as at import
        infer_signature(pd.DataFrame({"calls": [1, 2, 3]}), pd.Series([0, 1, 0]))  # the real hint
        warnings.warn_explicit("another MLflow advice", UserWarning, "utils.py", 1, module="mlflow.types.utils")
    messages = [str(w.message) for w in caught]
    assert not any("Inferred schema contains integer column" in m for m in messages)
    assert "another MLflow advice" in messages


def test_artifact_download_bar_is_off_unless_the_user_turns_it_on():
    code = "import prefect_mlops.log, os; print(os.environ['MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR'])"
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"}
    run = [sys.executable, "-c", code]
    assert subprocess.run(run, env=env, capture_output=True, text=True, check=True).stdout.strip() == "false"
    mine = {**env, "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "true"}
    assert subprocess.run(run, env=mine, capture_output=True, text=True, check=True).stdout.strip() == "true"


def test_a_failure_of_this_package_is_logged_once_without_traceback_and_a_bug_keeps_its_own(
        collect, churn_features, fast_trainer, mlflow_server, workspace, tmp_path):
    from prefect import flow, task

    from prefect_mlops.blocks import DataSource
    from prefect_mlops.flows import continuous_training

    seen = collect("prefect.task_runs", "prefect.flow_runs")
    state = continuous_training("churn", DataSource(uri=str(tmp_path / "gone.parquet")), churn_features, fast_trainer,
                                mlflow_server=mlflow_server, workspace=str(workspace.root), return_state=True)
    assert state.is_failed() and "no such file" in state.message  # the state still says it
    told = [r for r in seen.records if "no such file" in r.getMessage()]
    assert len(told) == 1 and told[0].levelno == logging.ERROR and told[0].exc_info is None

    @task
    def broken() -> None:
        raise ZeroDivisionError("a bug, not a data problem")

    @flow
    def buggy() -> None:
        broken()

    seen.records.clear()
    assert buggy(return_state=True).is_failed()
    bug = [r for r in seen.records if r.exc_info and isinstance(r.exc_info[1], ZeroDivisionError)]
    assert len(bug) >= 2  # Prefect's own reports, traceback included, for anything that is not ours


@pytest.mark.system
def test_embedded_runs_print_no_telemetry_error_but_real_errors(tmp_path):
    script = textwrap.dedent("""
        import prefect_mlops.flows
        from prefect import flow

        @flow
        def fine():
            return 1

        @flow
        def fails():
            raise RuntimeError("a real error")

        fine()
        fails(return_state=True)
    """)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
    done = subprocess.run([sys.executable, "-c", script], env={**env, "PREFECT_HOME": str(tmp_path)},
                          capture_output=True, text=True, timeout=300, check=True)
    assert "telemetry" not in done.stderr.lower()
    assert "RuntimeError: a real error" in done.stderr
