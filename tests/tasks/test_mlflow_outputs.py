"""What an MLflow user finds: evaluation plots and the comparison as metrics on the challenger's run, a
version described in words with few tags (lineage in one JSON tag, the trigger), the drift report in a
run nested under the champion's. Real SQLite store, real Prefect harness."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from prefect_mlops.blocks import DataSource, ModelPolicy
from prefect_mlops.tasks.evaluate import PLOT_ARTIFACT, evaluate
from prefect_mlops.tasks.features import FeatureSpec, build_feature_set
from prefect_mlops.tasks.ingest import ingest_dataset
from prefect_mlops.tasks.lineage import Lineage, TrainerSpec, describe_trigger, find_model, recipe_digest, version_facts
from prefect_mlops.tasks.train import train_model
from tests.tasks.stages import promote_cycle, train_and_judge

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


def keep(path: Path, name: str) -> None:
    """A copy for a person to look at (the CI keeps test-artifacts/)."""
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copyfile(path, ARTIFACTS / name)


def png_size(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return int.from_bytes(header[16:20], "big"), int.from_bytes(header[20:24], "big")


def second_model(source, spec, trainer, *, server, workspace, window=None, name="churn"):
    dataset = ingest_dataset(source, name=name, window=window, workspace=workspace)
    features = build_feature_set(dataset, spec, workspace=workspace)
    lineage = Lineage(model_name=name, dataset=dataset, features=spec, trainer=trainer,
                      params_digest=recipe_digest(spec, trainer), trigger={"kind": "manual"})
    return features, train_model(features, trainer, lineage=lineage, mlflow_server=server, workspace=workspace)


def test_evaluate_logs_the_comparison_and_a_figure_of_both_models_on_the_challengers_run(
        churn_source, churn_features, fast_trainer, mlflow_server, workspace, window0):
    first = train_and_judge(churn_source, churn_features, fast_trainer, server=mlflow_server, workspace=workspace,
                            window=window0)
    promote_cycle(first, server=mlflow_server, workspace=workspace)
    features, trained = second_model(churn_source, churn_features,
                                     TrainerSpec(estimator="sklearn.ensemble.HistGradientBoostingClassifier",
                                                 params={"max_iter": 20}),
                                     server=mlflow_server, workspace=workspace, window=window0)
    champion = find_model("churn", mlflow_server=mlflow_server, workspace=workspace)
    evaluation = evaluate(trained, features, champion=champion, mlflow_server=mlflow_server,
                          workspace=str(workspace.root))

    client = mlflow_server.client(workspace)
    metrics = client.get_run(trained.run_id).data.metrics
    champion_auc = evaluation.champion.overall["roc_auc"]
    assert metrics["champion_roc_auc"] == pytest.approx(champion_auc)
    assert metrics["delta_roc_auc"] == pytest.approx(evaluation.challenger.overall["roc_auc"] - champion_auc)
    low, high = evaluation.interval
    assert metrics["delta_roc_auc_ci_low"] == pytest.approx(low) and metrics["delta_roc_auc_ci_high"] == \
        pytest.approx(high)
    assert metrics["holdout_roc_auc"] == pytest.approx(evaluation.challenger.overall["roc_auc"])

    folder = Path(tempfile.mkdtemp())
    plot = Path(client.download_artifacts(trained.run_id, PLOT_ARTIFACT, str(folder)))
    width, height = png_size(plot)
    assert width > 1000 and height > 600  # the 2 x 3 panels: ROC, PR, calibration, two confusion matrices
    keep(plot, "evaluation-classification.png")


def test_regression_figure_has_residuals_and_predicted_against_actual(tmp_path, mlflow_server, workspace):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 2))
    frame = pd.DataFrame({"a": x[:, 0], "b": x[:, 1], "y": 3 * x[:, 0] - x[:, 1] + rng.normal(scale=0.3, size=600)})
    frame.to_parquet(tmp_path / "reg.parquet", index=False)
    source = DataSource(uri=str(tmp_path / "reg.parquet"))
    spec = FeatureSpec(target="y", numeric=["a", "b"], task="regression")
    first = train_and_judge(source, spec, TrainerSpec(estimator="sklearn.dummy.DummyRegressor"), server=mlflow_server,
                            workspace=workspace, name="prices", policy=ModelPolicy(floors={"rmse": 10}))
    promote_cycle(first, server=mlflow_server, workspace=workspace)
    features, trained = second_model(source, spec, TrainerSpec(estimator="sklearn.linear_model.Ridge"),
                                     server=mlflow_server, workspace=workspace, name="prices")
    champion = find_model("prices", mlflow_server=mlflow_server, workspace=workspace)
    evaluation = evaluate(trained, features, champion=champion, policy=ModelPolicy(floors={"rmse": 10}),
                          mlflow_server=mlflow_server, workspace=str(workspace.root))
    metrics = mlflow_server.client(workspace).get_run(trained.run_id).data.metrics
    assert metrics["delta_rmse"] == pytest.approx(evaluation.difference) and metrics["delta_rmse"] < 0
    plot = Path(mlflow_server.client(workspace).download_artifacts(trained.run_id, PLOT_ARTIFACT, str(tmp_path)))
    assert png_size(plot)[0] > 600
    keep(plot, "evaluation-regression.png")


def test_the_task_uploads_its_figure_last_and_draws_it_itself_when_the_drawing_process_fails(
        tmp_path, mlflow_server, workspace, monkeypatch):
    # The task keeps its painter open past the metrics and the markdown; a process that fails still leaves
    # the figure (drawn in the stage) on the run, and nothing of the painter behind.
    import tempfile as tf

    broken = tmp_path / "site" / "matplotlib"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text("raise ImportError('a broken matplotlib on this path')\n")
    rng = np.random.default_rng(1)
    x = rng.normal(size=(400, 2))
    frame = pd.DataFrame({"a": x[:, 0], "b": x[:, 1], "y": 2 * x[:, 0] + rng.normal(scale=0.3, size=400)})
    frame.to_parquet(tmp_path / "reg.parquet", index=False)
    spec = FeatureSpec(target="y", numeric=["a", "b"], task="regression")
    features, trained = second_model(DataSource(uri=str(tmp_path / "reg.parquet")), spec,
                                     TrainerSpec(estimator="sklearn.linear_model.Ridge"), server=mlflow_server,
                                     workspace=workspace, name="prices")
    private = tmp_path / "tmp"
    private.mkdir()
    monkeypatch.setattr(tf, "tempdir", str(private))  # where the painter's folder goes, for this test alone
    monkeypatch.setenv("PYTHONPATH", str(broken.parent))  # the drawing process's; this one keeps matplotlib
    evaluate(trained, features, policy=ModelPolicy(floors={"rmse": 10}), mlflow_server=mlflow_server,
             workspace=str(workspace.root))
    plot = Path(mlflow_server.client(workspace).download_artifacts(trained.run_id, PLOT_ARTIFACT, str(tmp_path)))
    assert png_size(plot)[0] > 600
    assert "holdout_rmse" in mlflow_server.client(workspace).get_run(trained.run_id).data.metrics
    assert not list(private.glob("prefect-mlops-figure-*"))


def test_a_version_has_few_tags_its_lineage_as_json_its_trigger_and_a_description(
        churn_source, churn_features, fast_trainer, mlflow_server, workspace, window0):
    cycle = train_and_judge(churn_source, churn_features, fast_trainer, server=mlflow_server, workspace=workspace,
                            window=window0)
    promote_cycle(cycle, server=mlflow_server, workspace=workspace)
    version = mlflow_server.client(workspace).get_model_version("churn", "1")
    ours = sorted(k for k in version.tags if k.startswith("prefect_mlops."))
    assert len(ours) <= 10, ours  # was 17 before deploy's own
    facts = version_facts(version.tags)
    assert facts["data"]["fingerprint"] == cycle.features.dataset.fingerprint
    assert facts["data"]["window"] == cycle.features.dataset.window and facts["trainer"] == fast_trainer.estimator
    assert facts["gate"] == "passed"
    assert "Gate passed:" in version.description and "Trained with sklearn.linear_model.LogisticRegression" in \
        version.description


def test_versions_tagged_the_older_way_stay_readable():
    old = {"prefect_mlops.data.fingerprint": "f" * 64, "prefect_mlops.data.rows": "1200",
           "prefect_mlops.data.window": "2024-01-01/2024-02-01", "prefect_mlops.trainer": "x.Est",
           "prefect_mlops.gate": "passed", "prefect_mlops.gate.reason": "first run", "prefect_mlops.metric.f1": "0.5"}
    facts = version_facts(old)
    assert facts["data"] == {"fingerprint": "f" * 64, "rows": 1200, "window": "2024-01-01/2024-02-01"}
    assert facts["trainer"] == "x.Est" and facts["gate"] == "passed" and facts["trigger"] == {"kind": "unknown"}


def test_a_run_of_a_scheduled_deployment_that_the_scheduler_did_not_create_is_manual():
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.flow_engine import run_flow

    @flow(name="trigger-probe")
    def probe(trigger: str = "schedule") -> dict:
        return describe_trigger(trigger)

    with get_client(sync_client=True) as client:
        flow_id = client.create_flow(probe)
        deployment_id = client.create_deployment(flow_id=flow_id, name="nightly", parameters={"trigger": "schedule"},
                                                 entrypoint="probe.py:probe")
        run = client.create_flow_run_from_deployment(deployment_id)  # what a person's "Run" button does
    assert not run.auto_scheduled
    found = run_flow(probe, flow_run=run, parameters=run.parameters, return_type="result")
    assert found["kind"] == "manual" and "scheduler did not create" in found["note"]
    assert probe(trigger="schedule")["kind"] == "schedule"  # no deployment: the caller's own schedule
    assert describe_trigger("drift", {"event": "prefect_mlops.drift.detected", "event_id": "e-1",
                                      "drift_share": 0.75})["drift_share"] == 0.75


def test_trigger_tag_reaches_the_version(churn_source, churn_features, fast_trainer, mlflow_server, workspace,
                                         window0):
    from prefect_mlops.tasks.register import register_version

    cycle = train_and_judge(churn_source, churn_features, fast_trainer, server=mlflow_server, workspace=workspace,
                            window=window0)
    trigger = {"kind": "drift", "event_id": "e-1", "drift_share": 0.75}
    lineage = cycle.trained.lineage.model_copy(update={"trigger": trigger})
    model = register_version(cycle.trained.model_copy(update={"lineage": lineage}), cycle.verdict, cycle.evaluation,
                             mlflow_server=mlflow_server, workspace=workspace)
    version = mlflow_server.client(workspace).get_model_version("churn", model.version)
    assert json.loads(version.tags["prefect_mlops.trigger"]) == trigger
    assert "Started by: drift (drift share 0.75, event e-1)." in version.description


def test_drift_check_logs_its_report_under_the_champions_run_and_summarises_it_in_prefect(
        churn_source, churn_features, fast_trainer, mlflow_server, workspace, window0):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from prefect_mlops.demo import period_window
    from prefect_mlops.tasks.drift import drift_check

    cycle = train_and_judge(churn_source, churn_features, fast_trainer, server=mlflow_server, workspace=workspace,
                            window=window0, name="drifty")
    promote_cycle(cycle, server=mlflow_server, workspace=workspace)
    champion = find_model("drifty", mlflow_server=mlflow_server, workspace=workspace)
    current = ingest_dataset(churn_source, name="drifty-current", window=period_window(2), workspace=workspace)
    report = drift_check(current, cycle.features.dataset, "drifty", columns=churn_features.feature_columns,
                         champion_version="1", workspace=str(workspace.root), emit=False,
                         champion_run_id=champion.model.run_id, mlflow_server=mlflow_server)
    assert report.detected

    client = mlflow_server.client(workspace)
    (run,) = client.search_runs([client.get_run(champion.model.run_id).info.experiment_id],
                                filter_string=f"tags.mlflow.parentRunId = '{champion.model.run_id}'")
    assert run.data.metrics["drift_share"] == pytest.approx(report.drift_share)
    assert run.data.tags["prefect_mlops.decision"] == "drifted"
    names = {f.path for f in client.list_artifacts(run.info.run_id, "drift")}
    assert {f"drift/{Path(report.report_path).name}", "drift/columns.md"} <= names

    with get_client(sync_client=True) as prefect:
        (artifact,) = prefect.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["drift-drifty"])), limit=1)
    assert "## Top drifted columns" in artifact.data
    assert f"| {report.drifted_columns[0]} |" in artifact.data or any(
        f"| {c} |" in artifact.data for c in report.drifted_columns)
    assert f"runs:/{run.info.run_id}/drift/" in artifact.data


def test_a_figure_that_cannot_be_drawn_never_fails_the_evaluation(churn_source, churn_features, fast_trainer,
                                                                  mlflow_server, workspace, window0, tmp_path):
    from prefect_mlops.tasks.evaluate import evaluate_models

    cycle = train_and_judge(churn_source, churn_features, fast_trainer, server=mlflow_server, workspace=workspace,
                            window=window0)
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    evaluation = evaluate_models(cycle.trained, cycle.features, mlflow_server=mlflow_server, workspace=workspace,
                                 plot_to=blocked / "figure.png")
    assert evaluation.challenger.overall == cycle.evaluation.challenger.overall
    assert not (blocked / "figure.png").exists()
