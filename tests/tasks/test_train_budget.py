"""train within a budget: all rows when they fit, a time-stratified sample when not, partial_fit over batches."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from prefect_mlops.blocks.retrain_policy import RetrainPolicy, TrainingBudget
from prefect_mlops.tasks.features import FeatureSpec, build_feature_set
from prefect_mlops.tasks.lineage import LINEAGE_TAG, Lineage, TrainerSpec, read_lineage, recipe_digest
from prefect_mlops.tasks.train import (
    EXPANSION,
    budget_change,
    checkpoint_key,
    fit_within_budget,
    plan_training,
    sample_positions,
    train_model,
)

SPEC = FeatureSpec(target="y", numeric=["x", "z"], categorical=["c"], time_column="t")
LOGISTIC = TrainerSpec(estimator="sklearn.linear_model.LogisticRegression")
SGD = TrainerSpec(estimator="sklearn.linear_model.SGDClassifier", params={"loss": "log_loss"})


def frame(rows: int = 4000, seed: int = 1) -> pd.DataFrame:
    """Rows over 40 days, three quarters of them in the first 10 days; y depends on x and c."""
    rng = np.random.default_rng(seed)
    days = np.sort(np.concatenate([rng.uniform(0, 10, rows * 3 // 4), rng.uniform(10, 40, rows - rows * 3 // 4)]))
    x, c = rng.normal(size=rows), rng.choice(["a", "b", "c"], rows)
    y = ((x + (c == "a") + rng.normal(scale=0.5, size=rows)) > 0.5).astype("int64")
    return pd.DataFrame({"t": pd.Timestamp("2024-01-01") + pd.to_timedelta(days, unit="D"), "x": x,
                         "z": rng.uniform(size=rows), "c": c, "y": y})


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """One MLflow store for this module's two logging tests: creating a SQLite store's tables takes ~5 s."""
    from prefect_mlops.blocks import MlflowServer
    from prefect_mlops.workspace import Workspace

    folder = tmp_path_factory.mktemp("budget-mlflow")
    server = MlflowServer(tracking_uri=f"sqlite:///{folder / 'mlflow.db'}",
                          artifact_location=(folder / "mlartifacts").as_uri(), experiment="tests")
    server.experiment_id(Workspace(folder / "workspace"))  # the tables and the experiment, made once
    return server


@pytest.fixture
def features(workspace):
    ref = workspace.write_snapshot(frame(), name="budget")
    return build_feature_set(ref, SPEC, workspace=workspace)


def test_rows_that_fit_are_all_taken(features):
    record = plan_training(features, LOGISTIC, TrainingBudget(max_memory=2**30))
    assert (record.method, record.rows, record.available_rows) == ("all", 3200, 3200)
    assert record.budget_bytes == 2**30 and 0 < record.estimated_bytes < 2**30
    # The default budget is a share of MemAvailable, and the policy carries one.
    assert RetrainPolicy().training_budget.memory_limit(available=1000) == 500


def test_a_small_budget_samples_the_rows_that_fit(features):
    record = plan_training(features, LOGISTIC, TrainingBudget(max_memory=record_bytes(features, 400)))
    assert record.method == "sample" and 390 <= record.rows <= 400
    assert "over the budget" in record.reason and "'t'" in record.sample
    by_rows = plan_training(features, LOGISTIC, TrainingBudget(max_rows=250))
    assert (by_rows.method, by_rows.rows) == ("sample", 250) and "max_rows=250" in by_rows.reason


def record_bytes(features, rows: int) -> int:
    """The memory budget that holds `rows` rows, by the planner's own estimate."""
    full = plan_training(features, LOGISTIC, TrainingBudget(max_memory=2**40))
    return int(full.estimated_bytes / full.available_rows * rows)


def test_the_sample_is_stratified_over_time_and_skips_the_hold_out(features, workspace):
    times = frame()["t"].to_numpy()
    picked = sample_positions(features, 400, periods=4, seed=7)
    assert len(picked) == len(set(picked)) == 400
    holdout = set(np.load(features.holdout_index_uri))
    assert not holdout & set(picked.tolist())  # the hold-out is never trained on
    # Each of 4 equal spans of the training rows' time keeps its share of the rows, to the row.
    train = np.setdiff1d(np.arange(len(times)), list(holdout))
    t = times.astype("int64")
    edges = np.linspace(t[train].min(), t[train].max(), 5)
    share = np.histogram(t[train], edges)[0] / len(train)
    got = np.histogram(t[picked], edges)[0]
    assert np.all(np.abs(got - share * 400) <= 1), (got, share * 400)
    # Seeded: the same seed draws the same sample, another seed another one.
    assert np.array_equal(picked, sample_positions(features, 400, periods=4, seed=7))
    assert not np.array_equal(picked, sample_positions(features, 400, periods=4, seed=8))


def test_without_a_time_column_the_sample_is_uniform(workspace):
    spec = SPEC.model_copy(update={"time_column": None})
    features = build_feature_set(workspace.write_snapshot(frame(), name="untimed"), spec, workspace=workspace)
    record = plan_training(features, LOGISTIC, TrainingBudget(max_rows=300))
    assert record.method == "sample" and record.sample.startswith("uniform")
    assert len(sample_positions(features, 300)) == 300


def test_the_sampled_fit_is_logged_with_its_lineage(features, mlflow_server, workspace):
    lineage = Lineage(model_name="budget", dataset=features.dataset, features=SPEC, trainer=LOGISTIC,
                      params_digest=recipe_digest(SPEC, LOGISTIC))
    budget = TrainingBudget(max_rows=500)
    trained = train_model(features, LOGISTIC, lineage=lineage, mlflow_server=mlflow_server, workspace=workspace,
                          budget=budget)
    record = read_lineage(trained.run_id, mlflow_server, workspace).training
    assert (record.method, record.rows, record.available_rows, record.budget) == ("sample", 500, 3200, budget)
    assert record.transform_rows == 500 and record.expansion == EXPANSION
    run = mlflow_server.client(workspace).get_run(trained.run_id)
    assert (run.data.params["training.method"], run.data.params["training.rows"]) == ("sample", "500")
    assert run.data.params["training.transform_rows"] == "500"
    facts = json.loads(run.data.tags[LINEAGE_TAG])
    assert facts["training"] == {"method": "sample", "rows": 500, "available_rows": 3200}


def test_partial_fit_streams_every_training_row_in_batches(features, monkeypatch):
    monkeypatch.setattr("prefect_mlops.tasks.train.TRANSFORM_ROWS", 1000)
    budget = TrainingBudget(max_rows=300, when_over="incremental", batch_rows=256)
    pipeline, example, record = fit_within_budget(features, SGD, budget=budget)
    assert record.method == "incremental" and "partial_fit" in record.reason
    assert record.transform_rows == 1000  # the transform learned from a sample, and lineage says how large
    # 3200 training rows (the latest 800 are the hold-out) in batches of 256: the hold-out batches are skipped.
    assert record.rows == 3200 and record.batches == 13
    model = pipeline.named_steps["model"]
    assert model.t_ - 1 == 3200  # SGD counts every row partial_fit saw
    holdout = frame().iloc[np.load(features.holdout_index_uri)]
    accuracy = (pipeline.predict(holdout[SPEC.feature_columns]) == holdout["y"]).mean()
    assert accuracy > 0.75 and list(example.columns) == SPEC.feature_columns


def test_the_expansion_is_the_measured_default_or_the_budget_s_own(features):
    default = plan_training(features, LOGISTIC, TrainingBudget(max_memory=2**30))
    own = plan_training(features, LOGISTIC, TrainingBudget(max_memory=2**30, expansion=EXPANSION / 4))
    assert (default.expansion, own.expansion) == (EXPANSION, EXPANSION / 4)
    assert abs(own.estimated_bytes * 4 - default.estimated_bytes) <= 4


def test_a_champion_fit_on_a_sample_is_fit_again_when_the_budget_grows(features):
    data, small = features.dataset, TrainingBudget(max_rows=300)
    sampled = plan_training(features, LOGISTIC, small).model_copy(update={"transform_rows": 300})
    assert budget_change(sampled, small, LOGISTIC, data, SPEC) is None
    assert budget_change(sampled, TrainingBudget(max_rows=320), LOGISTIC, data, SPEC) is None  # within 10%
    assert "now fits 1,000 rows" in budget_change(sampled, TrainingBudget(max_rows=1000), LOGISTIC, data, SPEC)
    assert "now plans all (all 3,200 rows)" in budget_change(sampled, TrainingBudget(), LOGISTIC, data, SPEC)
    assert "time spans" in budget_change(sampled, TrainingBudget(max_rows=300, periods=5), LOGISTIC, data, SPEC)
    everything = plan_training(features, LOGISTIC, TrainingBudget())
    assert budget_change(everything, small, LOGISTIC, data, SPEC) is None  # a smaller budget: nothing to gain
    # The same settings never retrain, however much memory the machine has free today.
    tight = everything.estimated_bytes // 4  # the machine's free memory when the champion was fit
    by_memory = plan_training(features, LOGISTIC, TrainingBudget(), available=tight)
    assert by_memory.method == "sample"
    assert budget_change(by_memory, TrainingBudget(), LOGISTIC, data, SPEC, available=tight * 100) is None
    assert budget_change(by_memory, TrainingBudget(memory_share=0.9), LOGISTIC, data, SPEC,
                         available=tight * 100) is not None
    # A torch fit's checkpoints are kept apart by the planned rows too.
    lineage = Lineage(model_name="budget", dataset=data, features=SPEC, trainer=LOGISTIC, params_digest="p")
    assert checkpoint_key(features, lineage, sampled) != checkpoint_key(features, lineage, everything)


def test_incremental_without_partial_fit_falls_back_to_the_sample(features):
    record = plan_training(features, LOGISTIC, TrainingBudget(max_rows=300, when_over="incremental"))
    assert record.method == "sample" and "has no partial_fit" in record.reason


def test_the_flow_trains_within_the_policy_budget_and_the_refit_plans_the_same_way(
        churn_source, churn_features, fast_trainer, policy, mlflow_server, workspace, monkeypatch):
    from prefect_mlops.demo import period_window
    from prefect_mlops.flows import continuous_training
    from prefect_mlops.tasks.lineage import find_model

    budget = TrainingBudget(max_rows=300)
    report = continuous_training("churn", churn_source, churn_features, fast_trainer, policy=policy,
                                 window=period_window(0), retrain_policy=RetrainPolicy(training_budget=budget),
                                 mlflow_server=mlflow_server, workspace=str(workspace.root))
    assert report.outcome == "promoted", report.message
    champion = find_model("churn", mlflow_server=mlflow_server, workspace=workspace)
    record = champion.lineage.training
    # The registered model is the refit: its sample is drawn from the whole window, hold-out included.
    assert champion.lineage.refit and (record.method, record.rows, record.budget) == ("sample", 300, budget)
    assert record.available_rows == champion.lineage.dataset.rows

    # The same data, recipe and budget: nothing new to train on.
    again = continuous_training("churn", churn_source, churn_features, fast_trainer, policy=policy,
                                window=period_window(0), retrain_policy=RetrainPolicy(training_budget=budget),
                                mlflow_server=mlflow_server, workspace=str(workspace.root))
    assert again.outcome == "skipped", again.message
    # A raised budget would fit more rows: Airflow's prepare stage (the same rule as the flow's) trains again.
    from prefect_mlops.airflow import MLFLOW_ENV, stages

    monkeypatch.setattr(stages, "_CONNECTIONS", {})
    monkeypatch.setenv(MLFLOW_ENV, json.dumps(mlflow_server.model_dump(mode="json", include={
        "tracking_uri", "artifact_location", "experiment"})))
    plan = {"model_name": "churn", "source": churn_source.model_dump(mode="json", include={"uri", "time_column"}),
            "features": churn_features.model_dump(mode="json"), "trainer": fast_trainer.model_dump(mode="json"),
            "window": period_window(0), "workspace": str(workspace.root)}
    same = stages.prepare({**plan, "retrain_policy": {"training_budget": budget.model_dump(mode="json")}})
    assert same["skip"].startswith("nothing new to train on")
    raised = stages.prepare({**plan, "retrain_policy": {"training_budget": {"max_rows": 1000}}})
    assert raised["skip"] is None and raised["dataset"]["fingerprint"] == champion.lineage.dataset.fingerprint


def test_the_torch_trainer_streams_batches_through_partial_fit(features):
    pytest.importorskip("torch")
    torch_trainer = TrainerSpec(kind="torch", params={"task": "classification", "hidden_layers": [16],
                                                      "learning_rate": 0.01}, seed=2)
    budget = TrainingBudget(max_rows=300, when_over="incremental", batch_rows=512)
    pipeline, _, record = fit_within_budget(features, torch_trainer, budget=budget)
    net = pipeline.named_steps["model"]
    assert (record.method, record.rows, record.batches) == ("incremental", 3200, 7)
    assert net.n_epochs_ == 7 and [row["epoch"] for row in net.history_] == list(range(1, 8))
    holdout = frame().iloc[np.load(features.holdout_index_uri)]
    assert (pipeline.predict(holdout[SPEC.feature_columns]) == holdout["y"]).mean() > 0.75


def test_a_regressor_streams_through_partial_fit_without_classes(workspace):
    data = frame().assign(v=lambda f: 3 * f["x"] + f["z"])
    spec = FeatureSpec(target="v", numeric=["x", "z"], categorical=["c"], time_column="t", task="regression")
    features = build_feature_set(workspace.write_snapshot(data, name="regression"), spec, workspace=workspace)
    trainer = TrainerSpec(estimator="sklearn.linear_model.SGDRegressor")
    pipeline, _, record = fit_within_budget(features, trainer, budget=TrainingBudget(max_rows=300,
                                                                                     when_over="incremental"))
    assert (record.method, record.rows) == ("incremental", 3200)
    holdout = data.iloc[np.load(features.holdout_index_uri)]
    error = np.abs(pipeline.predict(holdout[spec.feature_columns]) - holdout["v"]).mean()
    assert error < 0.3, error
