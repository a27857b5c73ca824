"""register and deploy: no blessing no promotion, all-or-nothing alias moves, rollback, smoke tests."""

from __future__ import annotations

import json

import pytest
from mlflow import MlflowClient

from prefect_mlops.blocks import MlflowServer, ModelPolicy
from prefect_mlops.errors import ChampionMovedError, DeployError, GateNotPassedError, RegistryError
from prefect_mlops.tasks.deploy import CHAMPION, PREVIOUS, promote, read_aliases, roll_back
from prefect_mlops.tasks.reconcile import STATUS_REASON_TAG, STATUS_TAG, read_record, reconcile_model
from prefect_mlops.tasks.register import CHALLENGER, register_version
from prefect_mlops.tasks.score import score_dataset
from prefect_mlops.workspace import read_frame
from tests.http_stub import stub_server
from tests.tasks.stages import promote_cycle, train_and_judge


def aliases(server, workspace):
    return read_aliases(server.client(workspace), "churn")


def test_first_promotion_sets_champion_and_tags_the_lineage(first, mlflow_server, workspace):
    assert aliases(mlflow_server, workspace) == {CHAMPION: "1"}
    version = mlflow_server.client(workspace).get_model_version("churn", "1")
    assert version.tags["prefect_mlops.gate"] == "passed"
    assert version.tags["prefect_mlops.data.fingerprint"] == first.features.dataset.fingerprint
    assert json.loads(version.tags["prefect_mlops.lineage"])["data"]["rows"] == first.features.dataset.rows
    # The verdict and the hold-out metrics in words, in the version's description.
    assert version.description.startswith(f"Gate passed: {first.verdict.main_reason}")
    assert f"roc_auc {first.evaluation.challenger.overall['roc_auc']:.4f}" in version.description


def test_register_refuses_a_rejected_verdict(churn_source, churn_features, fast_trainer, mlflow_server, workspace,
                                             window0):
    cycle = train_and_judge(churn_source, churn_features, fast_trainer, server=mlflow_server, workspace=workspace,
                            window=window0, policy=ModelPolicy(floors={"roc_auc": 0.999}))
    assert not cycle.verdict.passed
    with pytest.raises(GateNotPassedError, match="register refused: the gate rejected run"):
        register_version(cycle.trained, cycle.verdict, mlflow_server=mlflow_server, workspace=workspace)
    with pytest.raises(GateNotPassedError, match="needs a gate verdict"):
        register_version(cycle.trained, None, mlflow_server=mlflow_server, workspace=workspace)
    assert mlflow_server.client(workspace).search_model_versions("name='churn'") == []


def test_a_verdict_for_another_run_does_not_bless_this_one(first, churn_source, churn_features, fast_trainer,
                                                           mlflow_server, workspace):
    other = train_and_judge(churn_source, churn_features, fast_trainer, server=mlflow_server, workspace=workspace)
    with pytest.raises(GateNotPassedError, match="the verdict judged run"):
        register_version(other.trained, first.verdict, mlflow_server=mlflow_server, workspace=workspace)


def test_second_promotion_keeps_the_previous_champion_and_rollback_swaps_them(
        first, churn_source, churn_features, fast_trainer, mlflow_server, workspace):
    second = train_and_judge(churn_source, churn_features, fast_trainer, server=mlflow_server, workspace=workspace,
                             window="2024-02-01/2024-04-01", policy=ModelPolicy(max_drop=1.0))
    promotion = promote_cycle(second, server=mlflow_server, workspace=workspace)
    assert (promotion.champion_version, promotion.previous_version) == ("2", "1")
    assert aliases(mlflow_server, workspace) == {CHAMPION: "2", PREVIOUS: "1"}
    back = roll_back("churn", mlflow_server=mlflow_server, workspace=workspace)
    assert back.champion_version == "1" and aliases(mlflow_server, workspace) == {CHAMPION: "1", PREVIOUS: "2"}
    roll_back("churn", mlflow_server=mlflow_server, workspace=workspace)
    assert aliases(mlflow_server, workspace) == {CHAMPION: "2", PREVIOUS: "1"}


def test_rollback_without_a_previous_champion_says_so(first, mlflow_server, workspace):
    with pytest.raises(DeployError, match="has no @previous-champion to roll back to"):
        roll_back("churn", mlflow_server=mlflow_server, workspace=workspace)
    assert aliases(mlflow_server, workspace) == {CHAMPION: "1"}


def test_failure_after_the_champion_alias_moved_restores_every_alias(
        first, churn_source, churn_features, fast_trainer, mlflow_server, workspace, monkeypatch):
    second = train_and_judge(churn_source, churn_features, fast_trainer, server=mlflow_server, workspace=workspace,
                             window="2024-02-01/2024-04-01", policy=ModelPolicy(max_drop=1.0))
    model = register_version(second.trained, second.verdict, mlflow_server=mlflow_server, workspace=workspace)
    before = aliases(mlflow_server, workspace)
    assert before == {CHAMPION: "1", CHALLENGER: "2"}

    # Fault injection on the real registry: the last alias change (dropping @challenger) fails once,
    # after @previous-champion and @champion have already moved; the restore then goes through.
    real_delete = MlflowClient.delete_registered_model_alias
    calls = []

    def fail_once(self, name, alias):
        calls.append(alias)
        if len(calls) == 1:
            raise RuntimeError("registry went away")
        return real_delete(self, name, alias)
    monkeypatch.setattr(MlflowClient, "delete_registered_model_alias", fail_once)
    with pytest.raises(DeployError, match="moving aliases failed .*registry went away.*aliases restored"):
        promote(model, second.evaluation, second.verdict, mlflow_server=mlflow_server, workspace=workspace)
    monkeypatch.undo()
    assert aliases(mlflow_server, workspace) == before


def test_smoke_test_catches_a_challenger_alias_that_moved(first, churn_source, churn_features, fast_trainer,
                                                          mlflow_server, workspace):
    second = train_and_judge(churn_source, churn_features, fast_trainer, server=mlflow_server, workspace=workspace,
                             window="2024-02-01/2024-04-01", policy=ModelPolicy(max_drop=1.0))
    model = register_version(second.trained, second.verdict, mlflow_server=mlflow_server, workspace=workspace)
    mlflow_server.client(workspace).set_registered_model_alias("churn", CHALLENGER, "1")
    with pytest.raises(DeployError, match="@challenger points to version 1, not 2"):
        promote(model, second.evaluation, second.verdict, mlflow_server=mlflow_server, workspace=workspace)
    assert aliases(mlflow_server, workspace)[CHAMPION] == "1"


def test_unreachable_mlflow_at_register_names_the_server_and_moves_nothing(first, mlflow_server, workspace):
    from tests.conftest import free_port

    down = mlflow_server.model_copy(update={"tracking_uri": f"http://127.0.0.1:{free_port()}"})
    with pytest.raises(RegistryError, match=r"MLflow server http://127\.0\.0\.1:\d+ is unreachable"):
        register_version(first.trained, first.verdict, mlflow_server=down, workspace=workspace)
    assert aliases(mlflow_server, workspace) == {CHAMPION: "1"}


def test_batch_scoring_reports_unseen_categories_and_the_model_version(first, mlflow_server, workspace, tmp_path):
    import pandas as pd

    rows = read_frame(first.features.dataset).head(50).assign(plan="enterprise")
    ref = workspace.write_snapshot(rows, name="to-score")
    out = tmp_path / "scores" / "out.parquet"
    result = score_dataset(ref, model_name="churn", output_uri=str(out), mlflow_server=mlflow_server,
                           workspace=workspace)
    assert result.unseen_categories == {"plan": ["enterprise"]} and result.model_version == "1"
    scored = pd.read_parquet(out)
    assert len(scored) == 50 and set(scored["model_version"]) == {"1"}
    assert {"prediction", "proba_0", "proba_1"} <= set(scored.columns)
    assert scored["proba_1"].between(0, 1).all()


@pytest.fixture
def stale(first, churn_source, churn_features, fast_trainer, mlflow_server, workspace):
    """Two challengers judged against champion v1; the first of them is then promoted to v2."""
    kwargs = dict(server=mlflow_server, workspace=workspace, window="2024-02-01/2024-04-01",
                  policy=ModelPolicy(max_drop=1.0))
    winner = train_and_judge(churn_source, churn_features, fast_trainer, **kwargs)
    late = train_and_judge(churn_source, churn_features, fast_trainer, **kwargs)
    assert winner.verdict.champion_version == late.verdict.champion_version == "1"
    promote_cycle(winner, server=mlflow_server, workspace=workspace)
    return late


def test_deploy_refuses_a_challenger_judged_against_a_champion_that_moved(stale, mlflow_server, workspace):
    model = register_version(stale.trained, stale.verdict, mlflow_server=mlflow_server, workspace=workspace)
    with pytest.raises(ChampionMovedError, match=r"the champion is now v2, not v1 that version 3 was evaluated "
                                                 r"against .*nothing was promoted"):
        promote(model, stale.evaluation, stale.verdict, mlflow_server=mlflow_server, workspace=workspace)
    assert aliases(mlflow_server, workspace) == {CHAMPION: "2", PREVIOUS: "1", CHALLENGER: "3"}


def test_a_registration_whose_cleanup_fails_says_the_version_was_tagged_failed(
        first, churn_source, churn_features, fast_trainer, mlflow_server, workspace, monkeypatch):
    second = train_and_judge(churn_source, churn_features, fast_trainer, server=mlflow_server, workspace=workspace,
                             window="2024-02-01/2024-04-01", policy=ModelPolicy(max_drop=1.0))

    def down(*_args):
        raise RuntimeError("connection refused")
    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", down)
    monkeypatch.setattr(MlflowClient, "delete_model_version", down)
    with pytest.raises(RegistryError, match=r"connection refused\. version 2 could not be deleted \(connection "
                                            r"refused\): tagged prefect_mlops.status=failed; check") as caught:
        register_version(second.trained, second.verdict, mlflow_server=mlflow_server, workspace=workspace)
    assert "Nothing was registered" not in str(caught.value)
    monkeypatch.undo()
    version = mlflow_server.client(workspace).get_model_version("churn", "2")
    assert version.tags[STATUS_TAG] == "failed" and "connection refused" in version.tags[STATUS_REASON_TAG]
    assert aliases(mlflow_server, workspace) == {CHAMPION: "1"}


class Terminated(BaseException):
    """Stands in for Prefect's TerminationSignal: SIGTERM turned into a BaseException."""


def test_sigterm_between_alias_writes_restores_every_alias_and_still_stops_the_run(
        first, churn_source, churn_features, fast_trainer, mlflow_server, workspace, monkeypatch):
    second = train_and_judge(churn_source, churn_features, fast_trainer, server=mlflow_server, workspace=workspace,
                             window="2024-02-01/2024-04-01", policy=ModelPolicy(max_drop=1.0))
    model = register_version(second.trained, second.verdict, mlflow_server=mlflow_server, workspace=workspace)
    real = MlflowClient.set_registered_model_alias
    calls = []

    def terminated_after_the_first(self, name, alias, version):
        calls.append(alias)
        if len(calls) == 2:
            raise Terminated("SIGTERM")
        return real(self, name, alias, version)
    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", terminated_after_the_first)
    with pytest.raises(Terminated, match="SIGTERM"):
        promote(model, second.evaluation, second.verdict, mlflow_server=mlflow_server, workspace=workspace)
    monkeypatch.undo()
    assert calls[:2] == [CHAMPION, PREVIOUS]
    assert aliases(mlflow_server, workspace) == {CHAMPION: "1", CHALLENGER: "2"}
    client = mlflow_server.client(workspace)
    assert read_record(client, "churn").state == "undone"
    # No run is promoting version 2 any more: the reconciler drops its @challenger and tags it failed.
    assert reconcile_model(client, "churn").failed_versions == ["2"]
    assert aliases(mlflow_server, workspace) == {CHAMPION: "1"}
    assert client.get_model_version("churn", "2").tags[STATUS_TAG] == "failed"


def test_rollback_from_champion_equal_to_previous_repairs_first_and_never_restores_a_version_onto_itself(
        first, mlflow_server, workspace):
    client = mlflow_server.client(workspace)
    client.set_registered_model_alias("churn", PREVIOUS, "1")  # the state an interrupted older release left
    with pytest.raises(DeployError, match="has no @previous-champion to roll back to"):
        roll_back("churn", mlflow_server=mlflow_server, workspace=workspace)
    assert aliases(mlflow_server, workspace) == {CHAMPION: "1"}


def test_smoke_test_mismatch_shows_the_rows_that_differ(first, churn_source, churn_features, fast_trainer,
                                                        mlflow_server, workspace):
    import pandas as pd

    second = train_and_judge(churn_source, churn_features, fast_trainer, server=mlflow_server, workspace=workspace,
                             window="2024-02-01/2024-04-01", policy=ModelPolicy(max_drop=1.0))
    sample = pd.read_parquet(second.evaluation.smoke_sample_uri)
    sample.loc[[0, 3], "__prediction__"] = 1 - sample.loc[[0, 3], "__prediction__"]
    sample.to_parquet(second.evaluation.smoke_sample_uri)
    model = register_version(second.trained, second.verdict, mlflow_server=mlflow_server, workspace=workspace)
    with pytest.raises(DeployError, match=r"differ from evaluation's on 2 of \d+ rows \(row 0: served .*, "
                                          r"evaluated .*; row 3: served"):
        promote(model, second.evaluation, second.verdict, mlflow_server=mlflow_server, workspace=workspace)
    assert aliases(mlflow_server, workspace)[CHAMPION] == "1"


def test_a_missing_model_artifact_names_the_version_the_alias_and_the_uri(
        first, churn_source, churn_features, fast_trainer, mlflow_server, workspace):
    import shutil

    second = train_and_judge(churn_source, churn_features, fast_trainer, server=mlflow_server, workspace=workspace,
                             window="2024-02-01/2024-04-01", policy=ModelPolicy(max_drop=1.0))
    model = register_version(second.trained, second.verdict, mlflow_server=mlflow_server, workspace=workspace)
    source = mlflow_server.client(workspace).get_model_version("churn", "2").source
    local = mlflow_server.client(workspace).get_model_version_download_uri("churn", "2")
    shutil.rmtree(local.removeprefix("file://"))
    with pytest.raises(DeployError, match=rf"'churn' version 2 \(@challenger\): the model at {source} could not be "
                                          r"loaded .*the model was not promoted"):
        promote(model, second.evaluation, second.verdict, mlflow_server=mlflow_server, workspace=workspace)
    assert aliases(mlflow_server, workspace)[CHAMPION] == "1"


def test_the_rollback_hook_says_what_it_left_when_the_delete_fails(
        first, churn_source, churn_features, fast_trainer, mlflow_server, workspace, monkeypatch):
    from prefect_mlops.tasks.register import unregister_version

    second = train_and_judge(churn_source, churn_features, fast_trainer, server=mlflow_server, workspace=workspace,
                             window="2024-02-01/2024-04-01", policy=ModelPolicy(max_drop=1.0))
    model = register_version(second.trained, second.verdict, mlflow_server=mlflow_server, workspace=workspace)

    def refuse(self, name, version):
        raise RuntimeError("server went away")
    monkeypatch.setattr(MlflowClient, "delete_model_version", refuse)
    left = unregister_version(model, mlflow_server, workspace, reason="rolled back: deploy failed")
    assert left == "version 2 could not be deleted (server went away): tagged prefect_mlops.status=failed"
    monkeypatch.undo()
    assert unregister_version(model, mlflow_server, workspace) == "version 2 was deleted"


def test_a_full_disk_while_loading_the_challenger_names_the_path(first, churn_source, churn_features, fast_trainer,
                                                                 mlflow_server, workspace, monkeypatch):
    import errno

    from prefect_mlops.blocks import MlflowServer

    second = train_and_judge(churn_source, churn_features, fast_trainer, server=mlflow_server, workspace=workspace,
                             window="2024-02-01/2024-04-01", policy=ModelPolicy(max_drop=1.0))
    model = register_version(second.trained, second.verdict, mlflow_server=mlflow_server, workspace=workspace)

    def full(self, source, workspace=None, **options):  # a full disk cannot be made safely in a test
        raise OSError(errno.ENOSPC, "No space left on device", "/tmp/spool/model.pkl")
    monkeypatch.setattr(MlflowServer, "load_model", full)
    with pytest.raises(DeployError, match=r"version 2 \(@challenger\): no space left on the device holding "
                                          r"/tmp/spool/model.pkl: free space there and retry"):
        promote(model, second.evaluation, second.verdict, mlflow_server=mlflow_server, workspace=workspace)
    assert aliases(mlflow_server, workspace)[CHAMPION] == "1"


@pytest.fixture
def refusing_server():
    """A tracking server whose /health answers and whose API refuses every credential (HTTP 401)."""
    with stub_server(lambda method, path: (200 if path == "/health" else 401, {}, b"OK")) as url:
        yield url


def test_a_refused_password_at_deploy_is_said_as_such_not_as_unreachable(refusing_server, workspace):
    from prefect_mlops.refs import ModelRef
    from prefect_mlops.tasks.gate import GateVerdict
    from prefect_mlops.tasks.rollout import start_trial

    model = ModelRef(name="churn", version="2", run_id="r2", source="file:///nowhere")
    verdict = GateVerdict(passed=True, model_name="churn", challenger_run_id="r2", champion_version="1",
                          primary_metric="roc_auc", rules=[])
    wrong = MlflowServer(tracking_uri=refusing_server, username="admin", password="wr0ng-password")
    said = rf"MLflow server {refusing_server} refused the credentials of user 'admin' \(HTTP 401\): the password is"
    with pytest.raises(DeployError, match=rf"cannot promote 'churn' version 2: {said}.*; @champion was not moved"):
        promote(model, None, verdict, mlflow_server=wrong, workspace=workspace)
    with pytest.raises(DeployError, match=rf"cannot put 'churn' version 2 on trial as @canary: {said}.*no alias "
                                          "was moved") as caught:
        start_trial(model, None, verdict, strategy="canary", mlflow_server=wrong, workspace=workspace)
    assert "unreachable" not in str(caught.value) and "wr0ng-password" not in str(caught.value)
