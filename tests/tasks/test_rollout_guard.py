"""The rollout's own checks: what may become champion, which steps are a rollout, and where the token lives."""

from __future__ import annotations

import pytest

from prefect_mlops.errors import ConfigError, DeployError
from prefect_mlops.flows.progressive_rollout import progressive_rollout
from prefect_mlops.tasks.reconcile import CANARY, CHAMPION, FAILED, SHARE_TAG, STATUS_TAG, read_aliases
from prefect_mlops.tasks.rollout import (
    GATE_TAG,
    TOKEN_ENV,
    check_steps,
    promote_canary,
    read_history,
    service_token,
    set_share,
)
from tests.tasks.test_reconcile import NAME, client, make_versions  # noqa: F401 (a fixture)


@pytest.fixture
def hand_set(client, tmp_path):  # noqa: F811
    """v1 champion; v2 put at @canary by hand, never gated."""
    (first,) = make_versions(client, tmp_path, 1)
    (second,) = make_versions(client, tmp_path, 1, tags={"prefect_mlops.trained_by": "someone, by hand"})
    client.set_registered_model_alias(NAME, CHAMPION, first)
    client.set_registered_model_alias(NAME, CANARY, second)
    client.set_registered_model_tag(NAME, SHARE_TAG, "0.05")
    return first, second


def test_a_hand_set_canary_that_was_never_gated_is_not_promoted_nor_given_traffic(client, hand_set, mlflow_server,  # noqa: F811
                                                                                  workspace):
    first, second = hand_set
    with pytest.raises(DeployError, match=rf"refusing to promote @canary v{second}: it carries no passed gate"):
        promote_canary(NAME, "looked fine", mlflow_server=mlflow_server, workspace=workspace)
    with pytest.raises(DeployError, match=rf"refusing to raise the traffic share to 25% of @canary v{second}"):
        set_share(NAME, 0.25, "more", mlflow_server=mlflow_server, workspace=workspace)
    assert read_aliases(client, NAME)[CHAMPION] == first
    assert client.get_registered_model(NAME).tags[SHARE_TAG] == "0.05"
    assert read_history(client, NAME) == []

    client.set_model_version_tag(NAME, second, GATE_TAG, "passed")
    client.set_model_version_tag(NAME, second, STATUS_TAG, FAILED)
    with pytest.raises(DeployError, match=rf"refusing to promote @canary v{second}: it is tagged .*=failed"):
        promote_canary(NAME, "looked fine", mlflow_server=mlflow_server, workspace=workspace)
    assert read_aliases(client, NAME)[CHAMPION] == first

    client.delete_model_version_tag(NAME, second, STATUS_TAG)  # gated and not failed: now it may go on
    assert promote_canary(NAME, "looked fine", mlflow_server=mlflow_server,
                          workspace=workspace).champion_version == second
    assert read_aliases(client, NAME)[CHAMPION] == second


@pytest.mark.parametrize(("steps", "says"), [
    ([], "is empty"),
    ([1.0], "no watched share below 1.0"),
    ([0.05, 0.25], "does not end with 1.0"),
    ([0.25, 0.05, 1.0], "not strictly increasing"),
    ([0.25, 0.25, 1.0], "not strictly increasing"),
    ([0.0, 1.0], r"outside \(0, 1\]"),
    ([0.5, 1.5], r"outside \(0, 1\]"),
])
def test_steps_that_would_promote_without_evidence_are_refused_before_anything_moves(steps, says):
    with pytest.raises(ConfigError, match=rf"parameter steps=.*{says}.*: expected a non-empty, strictly increasing"):
        progressive_rollout.fn(model_name="churn", service_url="http://127.0.0.1:9", steps=steps)
    assert check_steps([0.05, 0.25, 1.0]) == [0.05, 0.25, 1.0]


def test_the_service_token_is_no_flow_parameter_but_read_on_the_worker(monkeypatch):
    fields = progressive_rollout.parameters.properties
    assert "token" not in fields and fields["token_secret"]["anyOf"][0]["type"] == "string"
    monkeypatch.setenv(TOKEN_ENV, "s3cr3t-from-the-worker")
    assert service_token() == "s3cr3t-from-the-worker"
    monkeypatch.delenv(TOKEN_ENV)
    assert service_token() is None


def test_the_service_token_comes_from_a_secret_block_by_name():
    from prefect.blocks.system import Secret

    Secret(value="s3cr3t-in-a-block").save("serve-token-test", overwrite=True)
    assert service_token("serve-token-test") == "s3cr3t-in-a-block"
    with pytest.raises(ConfigError, match=r"token_secret='no-such-block': no Secret block of that name"):
        service_token("no-such-block")
