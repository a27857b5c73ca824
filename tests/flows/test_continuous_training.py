"""The whole loop under the session's Prefect harness: train, skip, drift, retrain, reject, roll back."""

from __future__ import annotations

import json
from pathlib import Path

from prefect_mlops.blocks import ModelPolicy
from prefect_mlops.demo import period_window
from prefect_mlops.flows import continuous_training, drift_monitor, rollback
from prefect_mlops.tasks.lineage import TrainerSpec, find_model


def test_loop_promotes_skips_retrains_on_drift_rejects_weak_and_rolls_back(
        churn_source, churn_features, fast_trainer, policy, mlflow_server, workspace):
    common = {"mlflow_server": mlflow_server, "workspace": str(workspace.root)}

    first = continuous_training("churn", churn_source, churn_features, fast_trainer, policy=policy,
                                window=period_window(0), **common)
    assert first.outcome == "promoted" and first.champion_version == "1"
    assert "first-run" in first.gate_reason or "no champion" in first.gate_reason

    again = continuous_training("churn", churn_source, churn_features, fast_trainer, policy=policy,
                                window=period_window(0), **common)
    assert again.outcome == "skipped" and "nothing new to train on" in again.message

    stable = drift_monitor("churn", churn_source, window=period_window(1), retrain=True, policy=policy, **common)
    assert not stable.drift.detected and stable.retrain is None

    drifted = drift_monitor("churn", churn_source, window=period_window(2), retrain=True, policy=policy, **common)
    assert drifted.drift.detected and drifted.drift.drift_share >= 0.5
    assert drifted.retrain is not None and drifted.retrain.outcome == "promoted"
    assert drifted.retrain.challenger_metric > drifted.retrain.champion_metric
    assert find_model("churn", mlflow_server=mlflow_server, workspace=workspace).model.version == "2"

    weak = continuous_training("churn", churn_source, churn_features,
                               TrainerSpec(estimator="sklearn.dummy.DummyClassifier", params={"strategy": "prior"}),
                               policy=policy, window=period_window(2), **common)
    assert weak.outcome == "rejected" and "roc_auc" in weak.gate_reason
    assert find_model("churn", mlflow_server=mlflow_server, workspace=workspace).model.version == "2"

    version = mlflow_server.client(workspace).get_model_version("churn", "2")
    assert version.tags["prefect_mlops.flow_run_id"] and version.tags["prefect_mlops.gate"] == "passed"
    # The retraining learned from the retrain policy's window (three periods back), not the drifted month alone.
    assert drifted.decision.training_window == "2023-12-30T00:00:00/2024-04-01T00:00:00"
    assert version.tags["prefect_mlops.data.window"] == drifted.decision.training_window
    assert json.loads(version.tags["prefect_mlops.lineage"])["code_version"]
    # What started each version: the monitor's drift signal (with its share), and a person for v1.
    trigger = json.loads(version.tags["prefect_mlops.trigger"])
    assert trigger["kind"] == "drift" and trigger["drift_share"] == drifted.drift.drift_share
    assert trigger["monitor_flow_run_id"]
    first_version = mlflow_server.client(workspace).get_model_version("churn", "1")
    assert json.loads(first_version.tags["prefect_mlops.trigger"])["kind"] == "manual"
    assert "Started by: drift" in version.description

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    keys = ["validation-churn", "metrics-churn", "gate-verdict-churn", "drift-report-churn", "drift-churn",
            "promotion-churn"]
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=keys)))
    assert set(keys) <= {a.key for a in artifacts}
    links = [a.data for a in artifacts if a.key == "drift-report-churn"]
    assert any(drifted.drift.report_path in link for link in links)
    summary = [a.data for a in artifacts if a.key == "drift-churn"]
    assert any("## Top drifted columns" in text for text in summary)  # the drifted window's, beside the stable one's

    back = rollback("churn", reason="test", **common)
    assert (back.champion_version, back.previous_version) == ("1", "2")
    assert find_model("churn", mlflow_server=mlflow_server, workspace=workspace).model.version == "1"


def test_rejected_run_ends_in_a_rejected_state_with_reasons(
        churn_source, churn_features, fast_trainer, mlflow_server, workspace):
    strict = ModelPolicy(floors={"roc_auc": 0.99})
    state = continuous_training("churn", churn_source, churn_features, fast_trainer, policy=strict,
                                window=period_window(0), mlflow_server=mlflow_server,
                                workspace=str(workspace.root), return_state=True)
    assert state.name == "Rejected"
    assert "roc_auc" in state.message and "0.99" in state.message
    assert find_model("churn", mlflow_server=mlflow_server, workspace=workspace) is None
    # The suite learned ahead for a promotion is not written: the suite is the one validate learned.
    suite = json.loads((workspace.root / "suites" / "churn.json").read_text())
    assert suite["meta"]["learned_version"] is None


def test_failed_deploy_leaves_the_registry_as_it_was(churn_source, churn_features, fast_trainer, policy,
                                                     mlflow_server, workspace, monkeypatch):
    from mlflow import MlflowClient

    from prefect_mlops.tasks.deploy import read_aliases

    common = {"mlflow_server": mlflow_server, "workspace": str(workspace.root)}
    continuous_training("churn", churn_source, churn_features, fast_trainer, policy=policy,
                        window=period_window(0), **common)
    client = mlflow_server.client(workspace)
    versions_before = sorted(v.version for v in client.search_model_versions("name='churn'"))
    aliases_before = read_aliases(client, "churn")

    real_set = MlflowClient.set_registered_model_alias

    def champion_move_fails(self, name, alias, version):
        if alias == "champion":
            raise RuntimeError("registry refused the alias")
        return real_set(self, name, alias, version)
    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", champion_move_fails)
    state = continuous_training("churn", churn_source, churn_features, fast_trainer,
                                policy=ModelPolicy(max_drop=1.0, promote_when="not-worse"), window=period_window(2),
                                return_state=True,
                                **common)
    monkeypatch.undo()
    assert state.is_failed() and "registry refused the alias" in state.message
    assert sorted(v.version for v in client.search_model_versions("name='churn'")) == versions_before
    assert read_aliases(client, "churn") == aliases_before


def test_bad_parameter_is_rejected_before_any_work_naming_the_field(churn_source, churn_features, mlflow_server,
                                                                    workspace):
    state = continuous_training("churn", churn_source, churn_features, policy=ModelPolicy(floors={"auc_pr": 0.5}),
                                mlflow_server=mlflow_server, workspace=str(workspace.root), return_state=True)
    assert state.is_failed() and "auc_pr" in state.message
    assert not (workspace.root / "datasets").exists()
    state = continuous_training("churn", churn_source, {"target": "churned", "numeric": "tenure_months"},
                                return_state=True)
    assert state.is_failed() and "numeric" in state.message


def test_one_class_or_tiny_windows_end_skipped_with_the_reason_not_a_crash(churn_features, fast_trainer,
                                                                           mlflow_server, workspace, tmp_path):
    from prefect_mlops.blocks import DataSource, RetrainPolicy
    from prefect_mlops.demo import make_churn_data

    frame = make_churn_data(0, rows=400)
    frame["churned"] = 0
    path = tmp_path / "one-class.parquet"
    frame.to_parquet(path, index=False)
    common = {"mlflow_server": mlflow_server, "workspace": str(workspace.root)}
    state = continuous_training("churn", DataSource(uri=str(path), time_column="event_time"), churn_features,
                                fast_trainer, return_state=True, **common)
    assert state.name == "Skipped" and "one class of 'churned' (0)" in state.message
    report = state.result()
    assert report.outcome == "skipped" and report.challenger_version is None

    small = make_churn_data(0, rows=60)
    small.to_parquet(path, index=False)
    state = continuous_training("churn", DataSource(uri=str(path), time_column="event_time"), churn_features,
                                fast_trainer, retrain_policy=RetrainPolicy(min_training_rows=100),
                                return_state=True, **common)
    assert state.name == "Skipped" and "holds 60 rows, fewer than the retrain policy's min_training_rows" \
        in state.message
    assert find_model("churn", mlflow_server=mlflow_server, workspace=workspace) is None


def test_promoted_model_is_refit_on_its_whole_window_and_lineage_says_so(
        churn_source, churn_features, fast_trainer, policy, mlflow_server, workspace):
    from prefect_mlops.blocks import RetrainPolicy

    common = {"mlflow_server": mlflow_server, "workspace": str(workspace.root)}
    refit = continuous_training("churn", churn_source, churn_features, fast_trainer, policy=policy,
                                window=period_window(0), **common)
    champion = find_model("churn", mlflow_server=mlflow_server, workspace=workspace)
    assert refit.outcome == "promoted" and champion.lineage.refit
    assert champion.model.source.endswith("/refit-model")
    pipeline = mlflow_server.load_model(champion.model.source, workspace)
    assert pipeline.predict_proba is not None  # the refit pipeline loads and scores
    kept = continuous_training("plain", churn_source, churn_features, fast_trainer, policy=policy,
                               window=period_window(0), retrain_policy=RetrainPolicy(refit_full_window=False),
                               **common)
    plain = find_model("plain", mlflow_server=mlflow_server, workspace=workspace)
    assert kept.outcome == "promoted" and not plain.lineage.refit and plain.model.source.endswith("/model")


def test_a_drift_the_profile_explains_retrains_and_the_learned_suite_follows_the_champion(
        churn_source, churn_features, fast_trainer, policy, mlflow_server, workspace):
    import json

    common = {"mlflow_server": mlflow_server, "workspace": str(workspace.root)}
    continuous_training("churn", churn_source, churn_features, fast_trainer, policy=policy,
                        window=period_window(0), **common)
    suite = workspace.root / "suites" / "churn.json"
    learned = json.loads(suite.read_text())
    # Period 2's shifted customers miss the learned profile but not the contract: the retraining goes ahead.
    again = continuous_training("churn", churn_source, churn_features, fast_trainer, policy=policy,
                                window=period_window(2), force=True, **common)
    assert again.outcome == "promoted", again.message
    evolved = json.loads(suite.read_text())
    assert evolved["meta"]["learned_version"] == again.champion_version
    assert evolved["expectations"] != learned["expectations"]
    assert list((suite.parent / "history").glob("churn.v*.json"))
    # The suite was learned while the challenger trained, and is the one learning it afterwards gives.
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, TaskRunFilter, TaskRunFilterName

    from prefect_mlops.tasks.validate import _widened_contract, learn_suite_from

    run_id = mlflow_server.client(workspace).get_model_version("churn", again.champion_version).tags[
        "prefect_mlops.flow_run_id"]
    with get_client(sync_client=True) as client:
        ahead = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])),
                                      task_run_filter=TaskRunFilter(name=TaskRunFilterName(any_=["learn-suite-churn"])))
    assert len(ahead) == 1 and ahead[0].state.is_completed()
    dataset = find_model("churn", mlflow_server=mlflow_server, workspace=workspace).lineage.dataset
    assert evolved["expectations"] == _widened_contract(
        learned["expectations"], learn_suite_from(dataset, name="churn")["expectations"])


def test_a_run_saves_and_loads_its_models_in_the_copy_and_never_imports_skops_itself(
        churn_source, churn_features, fast_trainer, policy, mlflow_server, workspace, monkeypatch):
    """skops' import is the forked copy's (`prefect_mlops.model_io`): the run's own process never pays it."""
    import sys

    import pytest
    import yaml

    from prefect_mlops import model_io

    if not model_io.enabled():
        pytest.skip("no model-files process on this platform")
    for name in [name for name in sys.modules if name == "skops" or name.startswith("skops.")]:
        monkeypatch.delitem(sys.modules, name)  # as in a fresh flow-run process; restored after the test
    report = continuous_training("churn", churn_source, churn_features, fast_trainer, policy=policy,
                                 window=period_window(0), mlflow_server=mlflow_server,
                                 workspace=str(workspace.root))
    assert report.outcome == "promoted"
    assert "skops.io" not in sys.modules
    # The challenger saved and loaded for evaluation, refit, saved and loaded for deploy's smoke test.
    assert model_io._copy is not None and model_io._copy.served >= 4
    champion = find_model("churn", mlflow_server=mlflow_server, workspace=workspace)
    meta = yaml.safe_load((Path(champion.model.source.removeprefix("file://")) / "MLmodel").read_text())
    assert meta["flavors"]["sklearn"]["serialization_format"] == "skops"
