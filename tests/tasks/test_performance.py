"""performance-check: the champion scored on newly labelled rows against its logged reference."""

from __future__ import annotations

import pandas as pd
import pytest

from prefect_mlops.blocks import DataSource, ModelPolicy, RetrainPolicy
from prefect_mlops.demo import make_churn_data, period_window
from prefect_mlops.tasks.evaluate import IMPORTANCE_ARTIFACT
from prefect_mlops.tasks.ingest import ingest_dataset
from prefect_mlops.tasks.lineage import find_model, read_importance
from prefect_mlops.tasks.performance import check_performance, performance_check
from tests.tasks.stages import promote_cycle, train_and_judge


@pytest.fixture
def champion(churn_source, churn_features, fast_trainer, mlflow_server, workspace):
    cycle = train_and_judge(churn_source, churn_features, fast_trainer, server=mlflow_server, workspace=workspace,
                            window=period_window(0))
    # What the evaluate task logs on the run: the reference performance and the drift weights.
    client = mlflow_server.client(workspace)
    for name, value in cycle.evaluation.challenger.overall.items():
        client.log_metric(cycle.trained.run_id, f"holdout_{name}", value)
    client.log_metric(cycle.trained.run_id, "holdout_rows", cycle.evaluation.holdout_rows)
    client.log_dict(cycle.trained.run_id, cycle.evaluation.importance, IMPORTANCE_ARTIFACT)
    promote_cycle(cycle, server=mlflow_server, workspace=workspace)
    return find_model("churn", mlflow_server=mlflow_server, workspace=workspace)


def _current(churn_source, workspace, period):
    return ingest_dataset(churn_source, name="churn-current", window=period_window(period), workspace=workspace)


def _flipped(workspace, tmp_path, rows=1500):
    """Period 1's customers with the concept turned around: who stayed now churns, and the reverse."""
    frame = make_churn_data(1, rows=rows)
    frame["churned"] = 1 - frame["churned"]
    path = tmp_path / "flipped.parquet"
    frame.to_parquet(path, index=False)
    return ingest_dataset(DataSource(uri=str(path)), name="churn-current", workspace=workspace)


def test_same_distribution_is_ok_and_a_changed_concept_is_degraded(champion, churn_source, mlflow_server,
                                                                    workspace, tmp_path):
    same = check_performance(_current(churn_source, workspace, 1), champion, mlflow_server=mlflow_server,
                             workspace=workspace)
    assert same.decision == "ok", same.reason
    assert same.reference is not None and same.rows == 1500
    changed = check_performance(_flipped(workspace, tmp_path), champion, mlflow_server=mlflow_server,
                                workspace=workspace)
    assert changed.degraded, changed.reason
    assert changed.current < changed.reference and changed.bound < changed.reference and changed.p_value < 0.001
    assert "roc_auc" in changed.reason and "degraded" in changed.reason


def test_a_drop_inside_the_tolerance_is_not_degraded(champion, mlflow_server, workspace, tmp_path):
    changed = check_performance(_flipped(workspace, tmp_path), champion, mlflow_server=mlflow_server,
                                workspace=workspace, retrain_policy=RetrainPolicy(max_decay=0.9))
    assert changed.decision == "ok" and "allowed decay 90.0%" in changed.reason, changed.reason


def test_too_few_labelled_rows_or_no_labels_decide_nothing(champion, mlflow_server, workspace, tmp_path):
    rows = make_churn_data(2, rows=300)
    rows.loc[rows.index[20:], "churned"] = None  # labels not in yet
    path = tmp_path / "partly-labelled.parquet"
    rows.to_parquet(path, index=False)
    few = ingest_dataset(DataSource(uri=str(path)), name="churn-current", workspace=workspace)
    report = check_performance(few, champion, mlflow_server=mlflow_server, workspace=workspace)
    assert report.decision == "not-enough-data" and report.rows == 20
    assert "20 labelled rows, fewer than the retrain policy's min_rows 100" in report.reason
    rows.drop(columns="churned").to_parquet(path, index=False)
    unlabelled = ingest_dataset(DataSource(uri=str(path)), name="churn-current", workspace=workspace)
    report = check_performance(unlabelled, champion, mlflow_server=mlflow_server, workspace=workspace)
    assert report.decision == "no-labels" and "no target column 'churned'" in report.reason


def test_label_drift_is_reported(champion, mlflow_server, workspace, tmp_path):
    rows = make_churn_data(1, rows=1000)
    rows["churned"] = 1 - rows["churned"] * 0  # every customer churns now
    path = tmp_path / "all-churn.parquet"
    rows.to_parquet(path, index=False)
    current = ingest_dataset(DataSource(uri=str(path)), name="churn-current", workspace=workspace)
    report = check_performance(current, champion, mlflow_server=mlflow_server, workspace=workspace)
    assert report.label_drift is not None and report.label_drift["drifted"] is True


def test_importance_recorded_at_training_is_read_back_for_the_champion(champion, mlflow_server, workspace):
    importance = read_importance(champion, mlflow_server=mlflow_server, workspace=workspace)
    assert set(importance) == {"tenure_months", "monthly_spend", "support_calls", "usage_hours", "plan", "channel"}
    # support calls drive churn in the demo data; the channel does not.
    assert importance["support_calls"] > importance["channel"]


def test_task_publishes_the_report(champion, mlflow_server, workspace, tmp_path):
    report = performance_check.fn(_flipped(workspace, tmp_path), champion, policy=ModelPolicy(),
                                  mlflow_server=mlflow_server, workspace=str(workspace.root))
    assert report.degraded
    assert isinstance(pd.DataFrame([report.model_dump()]), pd.DataFrame)


def test_the_first_labelled_window_is_recorded_and_the_better_reference_is_used(champion, churn_source,
                                                                               mlflow_server, workspace):
    import json

    first = check_performance(_current(churn_source, workspace, 1), champion, mlflow_server=mlflow_server,
                              workspace=workspace)
    tags = mlflow_server.client(workspace).get_model_version("churn", champion.model.version).tags
    live = json.loads(tags["prefect_mlops.live_reference"])
    assert live["se"] > 0
    assert {k: live[k] for k in ("metric", "value", "rows", "window")} == {
        "metric": "roc_auc", "value": first.current, "rows": 1500, "window": first.window}
    second = check_performance(_current(churn_source, workspace, 1), champion, mlflow_server=mlflow_server,
                               workspace=workspace)
    if first.current > first.reference:  # the live window beat the hold-out: it is the reference now
        assert second.reference == first.current and "from its first labelled window" in second.reason
    else:
        assert second.reference == first.reference and "from its hold-out" in second.reason
