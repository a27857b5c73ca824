"""The retrain policy's training budget reaches every way of training: a work pool's run and Airflow's stage."""

from __future__ import annotations

import pytest

from prefect_mlops.blocks.retrain_policy import RetrainPolicy, TrainingBudget
from prefect_mlops.tasks.features import build_feature_set
from prefect_mlops.tasks.lineage import Lineage, read_lineage, recipe_digest
from tests.tasks.test_train_budget import LOGISTIC, SPEC, frame

BUDGET = TrainingBudget(max_rows=500, periods=10)


@pytest.fixture
def features(workspace):
    return build_feature_set(workspace.write_snapshot(frame(), name="paths"), SPEC, workspace=workspace)


def lineage_of(features) -> Lineage:
    return Lineage(model_name="paths", dataset=features.dataset, features=SPEC, trainer=LOGISTIC,
                   params_digest=recipe_digest(SPEC, LOGISTIC))


def test_the_routed_run_receives_the_budget_and_trains_within_it(features, mlflow_server, workspace):
    from prefect_mlops.flows.train_on_pool import train_on_pool
    from prefect_mlops.tasks.route import route_parameters

    parameters = route_parameters(features, LOGISTIC, lineage_of(features), mlflow_server, str(workspace.root),
                                  BUDGET)
    # What the deployment run is given passes the flow's own parameter validation, budget included.
    validated = train_on_pool.validate_parameters(parameters)
    assert validated["budget"] == BUDGET
    trained = train_on_pool(**validated)
    record = read_lineage(trained.run_id, mlflow_server, workspace).training
    assert (record.method, record.rows, record.budget) == ("sample", 500, BUDGET)
    assert route_parameters(features, LOGISTIC, lineage_of(features), mlflow_server, None, None)["budget"] is None


def test_the_airflow_train_stage_trains_within_the_plan_budget(features, workspace, monkeypatch, tmp_path):
    from prefect_mlops.airflow import MLFLOW_ENV, stages
    from prefect_mlops.blocks import MlflowServer

    monkeypatch.setattr(stages, "_CONNECTIONS", {})  # the stage keeps a Connection it read: not past this test
    monkeypatch.setenv(MLFLOW_ENV, '{"tracking_uri": "sqlite:///%s"}' % (tmp_path / "airflow-mlflow.db"))
    plan = {"model_name": "paths", "trainer": LOGISTIC.model_dump(mode="json"), "workspace": str(workspace.root),
            "retrain_policy": RetrainPolicy(training_budget=BUDGET).model_dump(mode="json")}
    trained = stages.train(plan, {}, {"suite_path": None}, features.model_dump(mode="json"))
    record = read_lineage(trained["run_id"], MlflowServer(**stages.connection(MLFLOW_ENV)), workspace).training
    assert (record.method, record.rows, record.budget) == ("sample", 500, BUDGET)
