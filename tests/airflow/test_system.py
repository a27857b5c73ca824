"""Real Airflow components on 127.0.0.1 (api-server, scheduler, dag-processor, triggerer; LocalExecutor on
SQLite in a temporary AIRFLOW_HOME): a manual run with changed Params through the REST API trains and
promotes with them, and a burst of two drift-monitor runs gives exactly one retraining run through the
Asset, whose event carries the drift share, the drifted columns and the window."""

from __future__ import annotations

import json
import secrets
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from prefect_mlops.blocks import MlflowServer
from prefect_mlops.demo import period_window
from prefect_mlops.tasks.lineage import find_model
from prefect_mlops.workspace import Workspace
from tests.airflow.conftest import AIRFLOW_PYTHON, FEATURES, POLICY, airflow_env, needs_airflow
from tests.conftest import free_port, wait_for_port

pytestmark = [needs_airflow, pytest.mark.system, pytest.mark.slow, pytest.mark.timeout(1800)]

COMPONENTS = (["api-server", "--host", "127.0.0.1", "--port", "{port}"], ["scheduler"], ["dag-processor"],
              ["triggerer"])
DAG_FILE = '''
from prefect_mlops.airflow.dags import continuous_training_dag, drift_monitor_dag, retrain_asset
source = {{"uri": {data!r}, "time_column": "event_time"}}
training = continuous_training_dag("churn", source, {features!r},
                                   {{"estimator": "sklearn.ensemble.HistGradientBoostingClassifier",
                                     "params": {{"max_iter": 50}}}},
                                   {policy!r}, schedule=retrain_asset("churn"))
monitor = drift_monitor_dag("churn", source, {policy!r}, schedule=None)
'''
TRAINING, MONITOR = "churn_continuous_training", "churn_drift_monitor"


class Api:
    """Airflow's REST API (v2) with a token from the simple auth manager (every user an admin here)."""

    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.token = json.loads(self._call("GET", "/auth/token", auth=False))["access_token"]

    def _call(self, method: str, path: str, body: Any = None, auth: bool = True) -> str:
        request = urllib.request.Request(self.base + path, method=method,
                                         data=None if body is None else json.dumps(body).encode())
        request.add_header("Content-Type", "application/json")
        if auth:
            request.add_header("Authorization", f"Bearer {self.token}")
        with urllib.request.urlopen(request, timeout=30) as reply:
            return reply.read().decode()

    def get(self, path: str) -> Any:
        return json.loads(self._call("GET", path))

    def post(self, path: str, body: Any) -> Any:
        return json.loads(self._call("POST", path, body))

    def runs(self, dag_id: str) -> list[dict[str, Any]]:
        return self.get(f"/api/v2/dags/{dag_id}/dagRuns?limit=50")["dag_runs"]

    def trigger(self, dag_id: str, conf: dict[str, Any]) -> str:
        return self.post(f"/api/v2/dags/{dag_id}/dagRuns", {"logical_date": None, "conf": conf})["dag_run_id"]

    def wait_run(self, dag_id: str, run_id: str, timeout: float = 900) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            run = self.get(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}")
            if run["state"] in ("success", "failed"):
                return run
            time.sleep(3)
        raise TimeoutError(f"{dag_id} run {run_id} not finished after {timeout} s")

    def wait_dag(self, dag_id: str, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                self.get(f"/api/v2/dags/{dag_id}")
                return
            except urllib.error.HTTPError as exc:
                if exc.code != 404:
                    raise
            time.sleep(2)
        raise TimeoutError(f"the dag-processor did not parse {dag_id} in {timeout} s")

    def xcom(self, dag_id: str, run_id: str, task_id: str) -> Any:
        found = self.get(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/return_value"
                         "?deserialize=true")
        return found["value"]

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str]:
        found = self.get(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances")["task_instances"]
        return {ti["task_id"]: ti["state"] for ti in found}


@pytest.fixture
def airflow(tmp_path, churn_file):
    """The four components on a free port, sharing one SQLite metadata database; logs under tmp_path."""
    home, port = tmp_path / "home", free_port()
    (home / "dags").mkdir(parents=True)
    (home / "dags" / "churn_dags.py").write_text(DAG_FILE.format(data=str(churn_file), features=FEATURES,
                                                                 policy=POLICY))
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = airflow_env(home, store, tmp_path / "artifacts", tmp_path / "workspace")
    env.update({
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": "2",  # two shared cores
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "false",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "true",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(16),
        "AIRFLOW__API__WORKERS": "1",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
        "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
    })
    airflow_bin = str(Path(AIRFLOW_PYTHON).with_name("airflow"))
    subprocess.run([airflow_bin, "db", "migrate"], env=env, check=True, capture_output=True, timeout=300)
    procs = []
    try:
        for args in COMPONENTS:
            log = open(tmp_path / f"{args[0]}.log", "w")
            procs.append((subprocess.Popen([airflow_bin, *[a.format(port=port) for a in args]], env=env,
                                           stdout=log, stderr=subprocess.STDOUT), log))
        wait_for_port(port, timeout=180)
        api = Api(port)
        api.wait_dag(TRAINING)
        api.wait_dag(MONITOR)
        yield api, MlflowServer(tracking_uri=store, experiment="tests"), Workspace(tmp_path / "workspace")
    finally:
        for proc, _ in procs:
            proc.terminate()
        for proc, log in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
            log.close()


def test_manual_params_and_one_retraining_per_drift_burst_through_the_asset(airflow):
    api, server, workspace = airflow

    # A person's run from the REST API with Params that differ from the DAG's defaults.
    changed = {"window": period_window(0),
               "trainer": {"estimator": "sklearn.linear_model.LogisticRegression", "params": {"max_iter": 300}}}
    manual = api.trigger(TRAINING, changed)
    assert api.wait_run(TRAINING, manual)["state"] == "success", api.task_states(TRAINING, manual)
    report = api.xcom(TRAINING, manual, "promoted")
    assert report["outcome"] == "promoted" and report["window"] == "2024-01-01T00:00:00/2024-02-01T00:00:00"
    champion = find_model("churn", mlflow_server=server, workspace=workspace)
    assert champion.lineage.trainer.estimator == "sklearn.linear_model.LogisticRegression"
    assert champion.lineage.dataset.window == report["window"]

    # A burst: two monitor runs on the drifted month, one after the other (max_active_runs=1).
    drifted = {"window": period_window(2)}
    first, second = api.trigger(MONITOR, drifted), api.trigger(MONITOR, drifted)
    assert api.wait_run(MONITOR, first)["state"] == "success"
    assert api.wait_run(MONITOR, second)["state"] == "success"
    assert api.task_states(MONITOR, first)["emit"] == "success"
    assert api.task_states(MONITOR, second)["emit"] == "skipped"  # inside the dedupe window

    events = api.get("/api/v2/assets/events?limit=50")["asset_events"]
    ours = [e for e in events if e["uri"] == "x-prefect-mlops://models/churn/retrain"]
    assert len(ours) == 1
    extra = ours[0]["extra"]
    assert extra["drift_share"] >= 0.5 and extra["drifted_columns"]
    assert extra["window"] == "2024-03-01T00:00:00/2024-04-01T00:00:00"

    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        retrains = [r for r in api.runs(TRAINING) if r["run_type"] == "asset_triggered"]
        if retrains and retrains[0]["state"] in ("success", "failed"):
            break
        time.sleep(3)
    time.sleep(10)  # a second retraining, were there one, would be queued by now
    retrains = [r for r in api.runs(TRAINING) if r["run_type"] == "asset_triggered"]
    assert len(retrains) == 1, retrains
    assert retrains[0]["state"] == "success", api.task_states(TRAINING, retrains[0]["dag_run_id"])
    states = api.task_states(TRAINING, retrains[0]["dag_run_id"])
    outcome = next(t for t in ("promoted", "rejected", "skipped") if states.get(t) == "success")
    plan = api.xcom(TRAINING, retrains[0]["dag_run_id"], "plan")
    assert plan["trigger"] == "drift" and plan["window"] == extra["training_window"]
    assert plan["trigger_details"]["drift_share"] == extra["drift_share"]
    assert outcome in ("promoted", "rejected")
