"""The promotion record, the reconciler and the per-model lock, on a real MLflow SQLite registry."""

from __future__ import annotations

import threading

import pytest
from mlflow import MlflowClient

from prefect_mlops.errors import ModelBusyError
from prefect_mlops.tasks.reconcile import (
    CHALLENGER,
    CHAMPION,
    FAILED,
    PREVIOUS,
    PROMOTED,
    RECORD_TAG,
    STATUS_REASON_TAG,
    STATUS_TAG,
    PromotionRecord,
    discard_version,
    lock_name,
    model_lock,
    read_aliases,
    read_record,
    reconcile_model,
    write_record,
)

NAME = "churn"
MANAGED = {"prefect_mlops.gate": "passed"}


@pytest.fixture
def client(mlflow_server, workspace) -> MlflowClient:
    return mlflow_server.client(workspace)


def make_versions(client: MlflowClient, tmp_path, count: int, tags: dict[str, str] | None = None) -> list[str]:
    try:
        client.create_registered_model(NAME)
    except Exception:  # a second call in one test: the model exists
        pass
    made = []
    for _ in range(count):
        source = tmp_path / "model"
        source.mkdir(exist_ok=True)
        made.append(str(client.create_model_version(NAME, source=str(source), tags=tags or MANAGED).version))
    return made


def status(client: MlflowClient, version: str) -> str | None:
    return client.get_model_version(NAME, version).tags.get(STATUS_TAG)


def test_a_pending_promotion_cut_between_alias_writes_is_undone(client, tmp_path):
    make_versions(client, tmp_path, 2)
    client.set_registered_model_alias(NAME, CHAMPION, "1")
    client.set_registered_model_alias(NAME, CHALLENGER, "2")
    record = PromotionRecord.start("promote", "2", before={CHAMPION: "1", CHALLENGER: "2"},
                                   after={CHAMPION: "2", PREVIOUS: "1"})
    write_record(client, NAME, record)
    client.set_registered_model_alias(NAME, CHAMPION, "2")  # the process died after this write

    report = reconcile_model(client, NAME)

    assert read_aliases(client, NAME) == {CHAMPION: "1"}  # the challenger alias went: that run is over
    assert status(client, "2") == FAILED
    assert "interrupted" in client.get_model_version(NAME, "2").tags[STATUS_REASON_TAG]
    assert read_record(client, NAME).state == "undone"
    assert any(f"undid interrupted promote {record.id}" in a for a in report.actions), report.actions
    assert reconcile_model(client, NAME).actions == []  # settled: a second pass finds nothing


def test_a_pending_promotion_whose_aliases_all_moved_is_completed(client, tmp_path):
    make_versions(client, tmp_path, 2)
    record = PromotionRecord.start("promote", "2", before={CHAMPION: "1", CHALLENGER: "2"},
                                   after={CHAMPION: "2", PREVIOUS: "1"})
    write_record(client, NAME, record)
    client.set_registered_model_alias(NAME, CHAMPION, "2")
    client.set_registered_model_alias(NAME, PREVIOUS, "1")  # died before marking the record done

    report = reconcile_model(client, NAME)

    assert read_aliases(client, NAME) == {CHAMPION: "2", PREVIOUS: "1"}
    assert read_record(client, NAME).state == "done" and status(client, "2") == PROMOTED
    assert report.actions == [f"completed promote {record.id}: champion is version 2"]


def test_versions_left_without_alias_or_status_are_tagged_failed_and_reported(client, tmp_path):
    make_versions(client, tmp_path, 1)  # v1: the champion
    make_versions(client, tmp_path, 1, tags={**MANAGED, "prefect_mlops.promoted_from": "none"})  # v2: retired
    make_versions(client, tmp_path, 1)  # v3: a run died after create_model_version
    make_versions(client, tmp_path, 1, tags={"owner": "someone"})  # v4: not ours
    make_versions(client, tmp_path, 1)  # v5: @challenger of a run that died before deploy
    client.set_registered_model_alias(NAME, CHAMPION, "1")
    client.set_registered_model_alias(NAME, CHALLENGER, "5")

    report = reconcile_model(client, NAME)

    assert sorted(report.failed_versions) == ["3", "5"]
    assert [status(client, v) for v in "12345"] == [None, None, FAILED, None, FAILED]
    assert "no alias and no status" in client.get_model_version(NAME, "3").tags[STATUS_REASON_TAG]
    assert read_aliases(client, NAME) == {CHAMPION: "1"}
    assert "version 3 left by an interrupted run: no alias and no status: tagged prefect_mlops.status=failed" \
        in report.actions
    assert "registry consistent" in reconcile_model(client, NAME).summary()


def test_previous_champion_on_the_champion_itself_is_pointed_back(client, tmp_path):
    make_versions(client, tmp_path, 1)
    make_versions(client, tmp_path, 1, tags={**MANAGED, "prefect_mlops.promoted_from": "1"})
    client.set_registered_model_alias(NAME, CHAMPION, "2")
    client.set_registered_model_alias(NAME, PREVIOUS, "2")
    report = reconcile_model(client, NAME)
    assert read_aliases(client, NAME) == {CHAMPION: "2", PREVIOUS: "1"}
    assert "set to version 1" in report.actions[0]


def test_a_model_that_does_not_exist_needs_nothing(client):
    assert reconcile_model(client, "never-registered").actions == []
    assert read_record(client, "never-registered") is None


def test_discard_says_tagged_failed_when_the_delete_fails(client, tmp_path, monkeypatch):
    (version,) = make_versions(client, tmp_path, 1)

    def refuse(self, name, version):
        raise RuntimeError("server went away")
    monkeypatch.setattr(MlflowClient, "delete_model_version", refuse)
    left = discard_version(client, NAME, version, "registration failed: boom")
    assert left == "version 1 could not be deleted (server went away): tagged prefect_mlops.status=failed"
    assert status(client, version) == FAILED


def test_the_record_is_a_json_tag_on_the_registered_model(client, tmp_path):
    make_versions(client, tmp_path, 1)
    record = PromotionRecord.start("promote", "1", before={}, after={CHAMPION: "1"})
    write_record(client, NAME, record)
    raw = client.get_registered_model(NAME).tags[RECORD_TAG]
    assert PromotionRecord.model_validate_json(raw) == record
    assert "promote" in record.describe() and "{champion: v1}" in record.describe()


def test_the_model_lock_is_a_one_slot_global_limit_that_a_second_holder_waits_for():
    from prefect import get_client

    errors: list[BaseException] = []

    def second() -> None:
        try:
            with model_lock("lock-test", timeout=2):
                pass
        except BaseException as exc:  # handed to the test thread
            errors.append(exc)

    with model_lock("lock-test"):
        with get_client(sync_client=True) as client:
            limit = client.read_global_concurrency_limit_by_name(lock_name("lock-test"))
        assert (limit.name, limit.limit, limit.active_slots) == ("prefect-mlops-model-lock-test", 1, 1)
        thread = threading.Thread(target=second)
        thread.start()
        thread.join(60)
    assert len(errors) == 1 and isinstance(errors[0], ModelBusyError), errors
    with pytest.raises(ModelBusyError, match="another run has held the lock 'prefect-mlops-model-lock-test'"):
        raise errors[0]
    with model_lock("lock-test", timeout=10):  # released: the next holder gets it at once
        pass


def test_a_version_left_after_a_failed_delete_is_taken_off_trial(client, tmp_path, monkeypatch):
    from prefect_mlops.tasks.reconcile import CANARY, SHADOW, SHARE_TAG
    from prefect_mlops.tasks.rollout import on_trial_allowed

    first, second = make_versions(client, tmp_path, 2)
    client.set_registered_model_alias(NAME, CHAMPION, first)
    client.set_registered_model_alias(NAME, CANARY, second)
    client.set_registered_model_alias(NAME, SHADOW, second)
    client.set_registered_model_tag(NAME, SHARE_TAG, "0.25")
    client.set_model_version_tag(NAME, second, "prefect_mlops.gate", "passed")

    def refuse(self, name, version):
        raise RuntimeError("server went away")
    monkeypatch.setattr(MlflowClient, "delete_model_version", refuse)
    left = discard_version(client, NAME, second, "deploy rolled back: boom")
    assert left.endswith("tagged prefect_mlops.status=failed; @canary and @shadow removed"), left
    model = client.get_registered_model(NAME)
    assert {alias: str(v) for alias, v in model.aliases.items()} == {CHAMPION: first}
    assert SHARE_TAG not in (model.tags or {})
    refused = on_trial_allowed(client.get_model_version(NAME, second).tags)
    assert refused is not None and "failed" in refused and "deploy rolled back: boom" in refused
