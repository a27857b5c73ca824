"""The continuous-training DAG under `dag.test()` (Airflow's embedded SQLite metadata database, a real MLflow
SQLite store) against the Prefect flow on the same data: the same outcomes, promoted versions, metrics and
gate reasons; a skipped run, a rejected gate with no deploy, and a failed deploy undone."""

from __future__ import annotations

import json
import sqlite3
import uuid

import pytest

from prefect_mlops.blocks import MlflowServer, ModelPolicy
from prefect_mlops.demo import period_window
from prefect_mlops.flows import continuous_training
from prefect_mlops.tasks.features import FeatureSpec
from prefect_mlops.tasks.lineage import TrainerSpec, find_model
from prefect_mlops.workspace import Workspace
from tests.airflow.conftest import FEATURES, POLICY, TRAINER, airflow_env, needs_airflow, run_dags

# Nine stage processes a run, five runs: a few minutes alone on two cores, more on a busy machine.
pytestmark = [needs_airflow, pytest.mark.system, pytest.mark.slow, pytest.mark.timeout(2400)]

DUMMY = {"estimator": "sklearn.dummy.DummyClassifier", "params": {"strategy": "prior"}}
COMPARED = ("outcome", "champion_version", "challenger_version", "primary_metric", "challenger_metric",
            "champion_metric", "gate_reason", "data_fingerprint", "window")


def test_dag_matches_the_flow_on_the_same_data_and_undoes_a_failed_deploy(churn_file, churn_source, tmp_path):
    # The Prefect flow, in this process, on its own MLflow store.
    server = MlflowServer(tracking_uri=f"sqlite:///{tmp_path / 'flow-mlflow.db'}",
                          artifact_location=(tmp_path / "flow-artifacts").as_uri(), experiment="tests")
    common = {"mlflow_server": server, "workspace": str(tmp_path / "flow-workspace"),
              "policy": ModelPolicy(**POLICY)}
    spec, trainer = FeatureSpec(**FEATURES), TrainerSpec(**TRAINER)
    flow = [continuous_training("churn", churn_source, spec, trainer, window=period_window(0), **common),
            continuous_training("churn", churn_source, spec, trainer, window=period_window(0), **common),
            continuous_training("churn", churn_source, spec, trainer, window=period_window(2), **common),
            continuous_training("churn", churn_source, spec, TrainerSpec(**DUMMY), window=period_window(2), **common)]
    flow = [report.model_dump(mode="json") for report in flow]

    # The DAG, in Airflow's venv, on a store of its own; the manual runs change Params as a person would.
    folder = tmp_path / "airflow"
    folder.mkdir()
    store = f"sqlite:///{folder / 'mlflow.db'}"
    env = airflow_env(folder / "home", store, folder / "artifacts", folder / "workspace")
    # Secrets in both Connections: the stages get them, XCom and the logs never show them.
    token, secret = f"tok-{uuid.uuid4().hex}", f"key-{uuid.uuid4().hex}"
    mlflow_conn = json.loads(env["AIRFLOW_CONN_PREFECT_MLOPS_MLFLOW"])
    env["AIRFLOW_CONN_PREFECT_MLOPS_MLFLOW"] = json.dumps({**mlflow_conn, "password": token})
    env["AIRFLOW_CONN_PREFECT_MLOPS_S3"] = json.dumps({"conn_type": "aws", "login": "AKIATEST", "password": secret,
                                                      "extra": {"region_name": "us-east-1"}})
    lenient = {"floors": {"roc_auc": 0.5}, "promote_when": "not-worse", "max_drop": 1.0}
    runs = [{"window": period_window(0)}, {"window": period_window(0)}, {"window": period_window(2)},
            {"window": period_window(2), "trainer": DUMMY},
            {"window": period_window(1), "force": True, "policy": lenient}]
    dag = run_dags({"factory": "continuous_training_dag", "fail_deploy": [4], "runs": runs,
                    "args": {"model_name": "churn", "source": {"uri": str(churn_file), "time_column": "event_time"},
                             "features": FEATURES, "trainer": TRAINER, "policy": POLICY, "schedule": None}},
                   env, folder)

    for number, (ours, theirs) in enumerate(zip(dag[:4], flow, strict=True)):
        assert ours["state"] == "success", (number, ours["tasks"])
        got = {k: ours["outcome"].get(k) for k in COMPARED}
        want = {k: theirs.get(k) for k in COMPARED}
        assert got == pytest.approx(want), f"run {number}: DAG {got} != flow {want}"
    assert [r["outcome"]["outcome"] for r in dag[:4]] == [r["outcome"] for r in flow]
    assert flow[0]["outcome"] == "promoted" and flow[1]["outcome"] == "skipped" and flow[3]["outcome"] == "rejected"

    skipped, rejected = dag[1]["tasks"], dag[3]["tasks"]
    assert skipped["skipped"] == "success" and skipped["train"] == "skipped"
    assert "nothing new to train on" in dag[1]["outcome"]["message"]
    assert rejected["rejected"] == "success"
    assert {rejected[t] for t in ("register", "deploy", "promoted", "undo")} == {"skipped"}

    with sqlite3.connect(folder / "home" / "airflow.db") as db:
        xcoms = [str(value) for (value,) in db.execute("select value from xcom")]
    assert len(xcoms) > 20 and any("roc_auc" in value for value in xcoms)
    for text in (*xcoms, (folder / "dag_test.log").read_text()):
        assert token not in text and secret not in text

    # A deploy that fails after register: the run fails, undo takes the version out, @champion stays.
    failed = dag[4]["tasks"]
    assert dag[4]["state"] == "failed" and failed["register"] == "success" and failed["deploy"] == "failed"
    assert failed["undo"] == "success" and failed["promoted"] == "upstream_failed"
    mlflow = MlflowServer(tracking_uri=store, experiment="tests")
    champion = find_model("churn", mlflow_server=mlflow, workspace=Workspace(folder / "workspace"))
    assert champion.model.version == flow[2]["champion_version"]
    versions = mlflow.client().search_model_versions("name='churn'")
    live = [str(v.version) for v in versions if v.tags.get("prefect_mlops.status") != "failed"]
    assert sorted(live) == sorted({flow[0]["champion_version"], flow[2]["champion_version"]})
