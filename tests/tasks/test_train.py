"""train: estimators by import path, seeds, an MLflow run with lineage, a signed model that loads back."""

from __future__ import annotations

import json

import pytest

from prefect_mlops.errors import ConfigError
from prefect_mlops.tasks.lineage import TrainerSpec, read_lineage
from prefect_mlops.tasks.train import build_estimator
from prefect_mlops.workspace import read_frame
from tests.tasks.stages import train_and_judge


def test_estimator_is_built_from_its_import_path_with_params_and_seed():
    estimator = build_estimator(TrainerSpec(estimator="sklearn.ensemble.RandomForestClassifier",
                                            params={"n_estimators": 7}, seed=42))
    assert (type(estimator).__name__, estimator.n_estimators, estimator.random_state) == (
        "RandomForestClassifier", 7, 42)


@pytest.mark.parametrize(("spec", "message"), [
    (TrainerSpec(estimator="sklearn.ensemble.NoSuchForest"), "'sklearn.ensemble.NoSuchForest' cannot be imported"),
    (TrainerSpec(estimator="no_such_package.Model"), "'no_such_package.Model' cannot be imported"),
    (TrainerSpec(estimator="sklearn.ensemble.RandomForestClassifier", params={"n_trees": 3}),
     r"\['n_trees'\] are not parameters of sklearn.ensemble.RandomForestClassifier"),
    (TrainerSpec(estimator="json.dumps"), "is not an estimator class"),
])
def test_bad_estimator_paths_and_params_are_named(spec, message):
    with pytest.raises(ConfigError, match=message):
        build_estimator(spec)


def test_bad_parameter_value_is_refused_before_fit_naming_the_estimator(churn_source, churn_features,
                                                                        mlflow_server, workspace, window0):
    bad = TrainerSpec(estimator="sklearn.linear_model.LogisticRegression", params={"C": -1.0})
    with pytest.raises(ConfigError, match=r"LogisticRegression.*'C' parameter"):
        train_and_judge(churn_source, churn_features, bad, server=mlflow_server, workspace=workspace, window=window0)


def test_training_logs_a_run_with_lineage_and_a_signed_model(churn_source, churn_features, fast_trainer,
                                                             mlflow_server, workspace, window0):
    cycle = train_and_judge(churn_source, churn_features, fast_trainer, server=mlflow_server, workspace=workspace,
                            window=window0)
    client = mlflow_server.client(workspace)
    run = client.get_run(cycle.trained.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["prefect_mlops.data.fingerprint"] == cycle.features.dataset.fingerprint
    assert run.data.params["trainer.estimator"] == "sklearn.linear_model.LogisticRegression"
    assert "holdout_roc_auc" not in run.data.metrics  # metrics are logged by the evaluate task, not here
    lineage = read_lineage(cycle.trained.run_id, mlflow_server, workspace)
    assert lineage.dataset == cycle.features.dataset and lineage.trainer == fast_trainer
    model_dir = cycle.trained.model_source.removeprefix("file://")
    mlmodel = open(f"{model_dir}/MLmodel").read()
    assert "signature:" in mlmodel and "serving_input_example.json" in mlmodel
    inputs = json.loads(mlmodel.split("inputs: '")[1].split("'\n")[0])
    assert {c["name"] for c in inputs} == set(churn_features.feature_columns)
    pyfunc = mlflow_server.load_model(cycle.trained.model_source, workspace, flavor="pyfunc")
    rows = read_frame(cycle.features.dataset).head(5)
    assert len(pyfunc.predict(rows[churn_features.feature_columns])) == 5


def test_same_seed_same_model(churn_source, churn_features, mlflow_server, workspace, window0):
    trainer = TrainerSpec(estimator="sklearn.ensemble.RandomForestClassifier", params={"n_estimators": 10}, seed=3)
    first = train_and_judge(churn_source, churn_features, trainer, server=mlflow_server, workspace=workspace,
                            window=window0)
    second = train_and_judge(churn_source, churn_features, trainer, server=mlflow_server, workspace=workspace,
                             window=window0)
    assert first.evaluation.challenger.overall == second.evaluation.challenger.overall
