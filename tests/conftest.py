"""Shared fixtures: real libraries, real stores, small real data.

One Prefect test harness per session (it takes seconds to start); each test gets its own
workspace and its own MLflow SQLite store, so tests never see each other's models.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

from prefect_mlops.blocks import DataSource, MlflowServer, ModelPolicy
from prefect_mlops.demo import make_churn_data, period_window
from prefect_mlops.tasks.features import FeatureSpec
from prefect_mlops.tasks.lineage import TrainerSpec
from prefect_mlops.workspace import Workspace

ROWS_PER_PERIOD = 1500


@pytest.fixture(autouse=True)
def no_model_files_copy_left():
    """A copy forked by one test's run (`prefect_mlops.model_io`) never serves the next test: it would run
    code as it was when forked, and whether it was still alive would depend on the timing."""
    yield
    from prefect_mlops import model_io

    model_io.stop()


@pytest.fixture(scope="session", autouse=True)
def prefect_harness(tmp_path_factory):
    """One ephemeral Prefect API for the whole session, with its own database."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def workspace(tmp_path) -> Workspace:
    return Workspace(tmp_path / "workspace")


@pytest.fixture
def mlflow_server(tmp_path) -> MlflowServer:
    return MlflowServer(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
                        artifact_location=(tmp_path / "mlartifacts").as_uri(), experiment="tests")


@pytest.fixture(scope="session")
def churn_file(tmp_path_factory) -> Path:
    """Three monthly periods of synthetic churn data (period 2 drifted) as one Parquet file."""
    path = tmp_path_factory.mktemp("data") / "churn.parquet"
    pd.concat([make_churn_data(p, rows=ROWS_PER_PERIOD) for p in range(3)]).to_parquet(path, index=False)
    return path


@pytest.fixture
def churn_source(churn_file) -> DataSource:
    return DataSource(uri=str(churn_file), time_column="event_time")


@pytest.fixture
def churn_features() -> FeatureSpec:
    return FeatureSpec(target="churned", numeric=["tenure_months", "monthly_spend", "support_calls", "usage_hours"],
                       categorical=["plan", "channel"], slice_column="region", time_column="event_time")


@pytest.fixture
def fast_trainer() -> TrainerSpec:
    return TrainerSpec(estimator="sklearn.linear_model.LogisticRegression", params={"max_iter": 300})


@pytest.fixture
def policy() -> ModelPolicy:
    return ModelPolicy(floors={"roc_auc": 0.6}, max_drop=0.01)


@pytest.fixture
def window0() -> str:
    return period_window(0)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout} s")


def start_moto(env: dict[str, str] | None = None) -> tuple[subprocess.Popen, str]:
    """A real S3-compatible server (moto's server mode) on a free loopback port."""
    port = free_port()
    exe = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or "moto_server"
    proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(port)], env={**os.environ, **(env or {})},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_port(port)
    return proc, f"http://127.0.0.1:{port}"


@pytest.fixture(scope="session")
def s3_endpoint():
    """moto's S3 server for the session; any key pair is accepted."""
    proc, url = start_moto()
    yield url
    proc.terminate()
    proc.wait(10)


@pytest.fixture
def champion_version():
    """Read the @champion alias (or None) of a model in a store: what a failure must never move."""
    def read(server: MlflowServer, workspace: Workspace, name: str = "churn") -> str | None:
        from prefect_mlops.tasks.lineage import find_model

        found = find_model(name, mlflow_server=server, workspace=workspace)
        return found.model.version if found else None
    return read
