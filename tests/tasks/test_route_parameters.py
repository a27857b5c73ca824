"""A routed training run receives the MLflow Server block as a reference whenever it holds a secret."""

from __future__ import annotations

import pytest

from prefect_mlops.blocks import MlflowServer
from prefect_mlops.errors import ConfigError
from prefect_mlops.tasks.route import block_parameter, pinned_server
from prefect_mlops.workspace import Workspace


@pytest.mark.parametrize("secret", [{"token": "t0ken"}, {"username": "admin", "password": "p4ss"}],
                         ids=["token", "password"])
def test_a_saved_block_holding_a_secret_travels_as_a_reference(secret, tmp_path):
    name = f"route-{'-'.join(secret)}"
    MlflowServer(**secret).save(name, overwrite=True)
    saved = MlflowServer.load(name)
    assert block_parameter(pinned_server(saved, str(tmp_path))) == {
        "$ref": {"block_document_id": str(saved._block_document_id)}}
    with pytest.raises(ConfigError, match="MlflowServer holds a secret and is not saved: save the block"):
        block_parameter(pinned_server(MlflowServer(**secret), str(tmp_path)))


def test_a_block_without_secrets_travels_by_value_with_its_uri_pinned(tmp_path):
    sent = block_parameter(pinned_server(MlflowServer(), str(tmp_path)))
    assert sent["tracking_uri"] == MlflowServer().uri(Workspace(str(tmp_path)))
