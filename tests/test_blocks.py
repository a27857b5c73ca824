"""Blocks: Prefect's standard Block checks, saving and loading with secrets kept secret."""

from __future__ import annotations

import re

import pytest
from prefect.testing.standard_test_suites import BlockStandardTestSuite
from pydantic import ValidationError

import prefect_mlops.blocks
from prefect_mlops.blocks import ComputeRoute, DataSource, MlflowServer, ModelPolicy


def our_blocks() -> list[type]:
    """Every Block type this package registers, found through Prefect's registry, not a hand-kept list."""
    from prefect.blocks.core import Block
    from prefect.utilities.dispatch import get_registry_for_type

    return sorted((b for b in get_registry_for_type(Block).values()
                   if b.__module__.startswith(prefect_mlops.blocks.__name__)), key=lambda b: b.__name__)


def test_every_exported_block_is_in_the_standard_suite():
    assert {b.__name__ for b in our_blocks()} >= {"ComputeRoute", "DataSource", "MlflowServer", "ModelPolicy",
                                                  "RetrainPolicy"}


@pytest.mark.parametrize("block", our_blocks())
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


@pytest.mark.parametrize(("make", "message"), [
    (lambda: DataSource(uri="x.csv", time_colum="t"), r"DataSource: unknown key 'time_colum' \(did you mean "
                                                      r"'time_column'\?\)"),
    (lambda: MlflowServer(tracking_url="http://mlflow:5000"), r"did you mean 'tracking_uri'"),
    (lambda: ModelPolicy(slice_floor={"roc_auc": 0.6}), r"unknown key 'slice_floor' \(did you mean 'slice_floors'"),
    (lambda: ComputeRoute(work_pool="gpu", gpu=1), r"ComputeRoute: unknown key 'gpu'.*valid keys are .*gpu_count"),
    (lambda: ModelPolicy.model_validate({"floors": {}, "sample_weight": "w"}), r"unknown key 'sample_weight'"),
])
def test_an_unknown_key_is_refused_naming_the_closest_valid_one(make, message):
    with pytest.raises(ValidationError, match=message):
        make()


@pytest.mark.parametrize(("floors", "message"), [
    ({"accuracy": 1.5}, r"floors\['accuracy'\] = 1.5 is outside the range of accuracy \[0.0, 1.0\]"),
    ({"roc_auc": -0.1}, r"outside the range of roc_auc"),
    ({"rmse": -1.0}, r"floors\['rmse'\] = -1.0 is outside the range of rmse \[0.0, inf\]"),
    ({"r2": 1.2}, r"outside the range of r2"),
])
def test_a_floor_outside_the_metric_range_is_refused(floors, message):
    with pytest.raises(ValidationError, match=message):
        ModelPolicy(floors=floors)
    with pytest.raises(ValidationError, match=message.replace("floors", "slice_floors", 1)):
        ModelPolicy(slice_floors=floors)


def test_blocks_with_prefect_metadata_round_trip_through_save_load_and_flow_parameters():
    from prefect import flow

    ComputeRoute(work_pool="gpu", gpu_count=1).save("gpu-route", overwrite=True)
    ModelPolicy(floors={"roc_auc": 0.7}).save("strict", overwrite=True)
    route, policy = ComputeRoute.load("gpu-route"), ModelPolicy.load("strict")
    assert route.gpu_count == 1 and policy.floors == {"roc_auc": 0.7}
    dumped = policy.model_dump()
    assert dumped["block_type_slug"] == "prefect-mlops-model-policy"
    assert ModelPolicy.model_validate(dumped).floors == {"roc_auc": 0.7}

    @flow(validate_parameters=True)
    def echo(policy: ModelPolicy, source: DataSource) -> tuple[ModelPolicy, DataSource]:
        return policy, source

    got_policy, got_source = echo(policy, DataSource(uri="data.csv"))
    assert got_policy.floors == {"roc_auc": 0.7} and got_source.uri == "data.csv"
