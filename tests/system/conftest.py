"""System tests: a real Prefect server on PostgreSQL, process work pools `cpu` and `gpu` with a worker each,
the project's blocks, deployments and automations applied with `prefect-mlops deploy`.

One server and its workers serve the whole session (starting them costs ~20 s); each test uses its
own model name, so trigger windows and registry aliases never collide. MLflow is a SQLite store in
the session's folder, shared by the workers through a saved `MlflowServer` block.
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from datetime import datetime, timedelta, timezone

import pandas as pd
import pytest

from prefect_mlops.blocks import MlflowServer
from prefect_mlops.cli import DEFAULT_POOLS, Server, Stack, api, deploy, free_port
from prefect_mlops.demo import make_churn_data
from prefect_mlops.workspace import Workspace
from tests.conftest import ROWS_PER_PERIOD
from tests.system.stack import Receiver, System, pause_schedules_and_clear_runs, system_config

PG = {"host": os.environ.get("PGHOST", "127.0.0.1"), "port": os.environ.get("PGPORT", "5432"),
      "user": os.environ.get("PGUSER", "postgres")}


@pytest.fixture(scope="session", autouse=True)
def prefect_harness():
    """Replaces the embedded API of tests/conftest.py: system tests talk to the server of `system`."""
    return


@pytest.fixture(scope="session")
def database_url():
    """A PostgreSQL database of its own for the session's Prefect server, dropped at the end."""
    name = f"prefect_mlops_system_{uuid.uuid4().hex[:12]}"
    args = ["-h", PG["host"], "-p", PG["port"], "-U", PG["user"]]
    made = subprocess.run(["createdb", *args, name], capture_output=True, text=True, check=False)
    if made.returncode != 0:
        pytest.fail(f"createdb {name} failed ({made.stderr.strip()}); system tests need PostgreSQL at "
                    f"{PG['host']}:{PG['port']} as {PG['user']} (set PGHOST, PGPORT, PGUSER)")
    yield f"postgresql+asyncpg://{PG['user']}@{PG['host']}:{PG['port']}/{name}"
    subprocess.run(["dropdb", *args, "--if-exists", "--force", name], capture_output=True, check=False)


@pytest.fixture(scope="session")
def system(tmp_path_factory, database_url):
    home = tmp_path_factory.mktemp("system")
    data = home / "data" / "churn.parquet"
    data.parent.mkdir(parents=True)
    pd.concat([make_churn_data(p, rows=ROWS_PER_PERIOD) for p in range(3)]).to_parquet(data, index=False)
    workspace = Workspace(home / "workspace")
    mlflow = MlflowServer(tracking_uri=f"sqlite:///{home / 'mlflow.db'}",
                          artifact_location=(home / "mlartifacts").as_uri(), experiment="system")
    receiver = Receiver()
    server = Server(home=home / "prefect", port=free_port(), database_url=database_url, extra_env={
        "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "2",
        "PREFECT_SERVER_DEPLOYMENTS_CONCURRENCY_SLOT_WAIT_SECONDS": "2",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    })
    stack = Stack(server.start())
    try:
        with api(server.api_url):
            deploy(system_config(home, data, receiver, mlflow), env=server.client_env(), say=lambda _: None)
            pause_schedules_and_clear_runs()
            stack.start_workers(list(DEFAULT_POOLS), query_seconds="1", PREFECT_MLOPS_WORKSPACE=str(workspace.root),
                                OMP_NUM_THREADS="1", GX_ANALYTICS_ENABLED="false",
                                MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false")
            yield System(home=home, stack=stack, receiver=receiver, mlflow=mlflow, workspace=workspace)
    finally:
        stack.stop()
        receiver.stop()


@pytest.fixture(scope="session")
def scheduled_churn(system):
    """A continuous-training run of `churn` made by the server's scheduler (an interval schedule added now)."""
    from prefect.client.schemas.actions import DeploymentScheduleCreate
    from prefect.client.schemas.schedules import IntervalSchedule

    from prefect_mlops.demo import period_window

    deployment = system.deployment("continuous-training/churn")
    anchor = datetime.now(timezone.utc) + timedelta(seconds=3)
    with system.client() as client:
        (schedule,) = client.create_deployment_schedules(deployment.id, [DeploymentScheduleCreate(
            schedule=IntervalSchedule(interval=timedelta(hours=1), anchor_date=anchor), active=True,
            parameters={"window": period_window(0)}, slug="system-test")])
    deadline = time.monotonic() + 60
    runs = []
    while not runs and time.monotonic() < deadline:
        runs = [r for r in system.runs_of("continuous-training/churn") if r.auto_scheduled]
        time.sleep(0.5)
    assert runs, "the scheduler made no run for the new schedule within 60 s (is the scheduler service failing?)"
    run = system.wait(runs[0].id, timeout=240)
    with system.client() as client:  # pausing deletes the schedule's runs still waiting: only now
        client.update_deployment_schedule(deployment.id, schedule.id, active=False)
    return run


