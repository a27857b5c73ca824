"""Every flow's parameters render as a typed form in the Prefect UI: the OpenAPI schema that Prefect
builds from the signature and docstring has a description for every parameter, the defaults,
enums for the choices and nested models (and Blocks) as definitions."""

from __future__ import annotations

from typing import Any

import pytest

from prefect_mlops.flows import batch_score, continuous_training, drift_monitor, rollback, train_on_pool

FLOWS = [continuous_training, drift_monitor, rollback, batch_score, train_on_pool]


def schema(flow: Any) -> dict[str, Any]:
    return flow.parameters.model_dump()


def resolve(node: dict[str, Any], definitions: dict[str, Any]) -> dict[str, Any]:
    """The definition a property points to, through `$ref` or an optional's `anyOf`."""
    for option in [node, *node.get("anyOf", [])]:
        if "$ref" in option:
            return definitions[option["$ref"].rsplit("/", 1)[-1]]
    return node


@pytest.mark.parametrize("flow", FLOWS, ids=lambda f: f.name)
def test_every_parameter_has_a_description_and_a_position(flow):
    properties = schema(flow)["properties"]
    assert properties, f"{flow.name} has no parameters"
    missing = [name for name, spec in properties.items() if not spec.get("description")]
    assert not missing, f"{flow.name}: parameters without a docstring description: {missing}"
    assert sorted(spec["position"] for spec in properties.values()) == list(range(len(properties)))


@pytest.mark.parametrize("flow", FLOWS, ids=lambda f: f.name)
def test_nested_models_fields_are_described_too(flow):
    found = schema(flow)
    for name, definition in found.get("definitions", {}).items():
        undocumented = [field for field, spec in definition.get("properties", {}).items()
                        if not spec.get("description")]
        allowed = {"Lineage": {"model_name", "dataset", "features", "trainer", "suite_path", "code_version",
                               "git_commit", "packages", "flow_run_id", "created_at"},
                   "FeatureSet": {"dataset", "spec", "train_rows", "holdout_rows"}}
        assert set(undocumented) <= allowed.get(name, set()), f"{flow.name}: {name} fields {undocumented}"


@pytest.mark.parametrize("flow", FLOWS, ids=lambda f: f.name)
def test_optional_plain_parameters_render_as_inputs_not_as_a_none_branch(flow):
    # The UI opens an `anyOf [X, null]` with the default None on its null tab: 'Property is type "None"'.
    found = schema(flow)
    forms = {flow.name: found["properties"]} | {name: definition.get("properties", {}) for name, definition
                                               in found.get("definitions", {}).items()
                                               if name in ("FeatureSpec", "TrainerSpec")}
    none_tabs = [f"{form}.{name}" for form, properties in forms.items() for name, spec in properties.items()
                 if spec.get("default", "unset") is None and {"type": "null"} in spec.get("anyOf", [])
                 and not any("$ref" in option for option in spec["anyOf"])]
    assert not none_tabs, f"{flow.name}: {none_tabs} open on the None branch"


def test_nested_forms_keep_the_declared_field_order():
    # The server's JSON column may reorder keys (PostgreSQL's JSONB: shortest first); the UI sorts by position.
    definitions = schema(continuous_training)["definitions"]
    for model, first in (("FeatureSpec", "target"), ("TrainerSpec", "estimator")):
        fields = definitions[model]["properties"]
        order = sorted(fields, key=lambda name: fields[name]["position"])
        assert order[0] == first and order == list(fields), f"{model}: {order}"
    features = definitions["FeatureSpec"]["properties"]
    assert features["target"]["position"] < features["seed"]["position"]


def test_suite_path_and_workspace_are_described_text_inputs():
    properties = schema(continuous_training)["properties"]
    for name in ("suite_path", "workspace"):
        assert properties[name]["type"] == "string" and properties[name]["default"] is None
        assert len(properties[name]["description"]) > 60, properties[name]["description"]


def test_continuous_training_form_types_defaults_enums_and_nested_models():
    found = schema(continuous_training)
    properties, definitions = found["properties"], found["definitions"]
    assert found["required"] == ["model_name", "source", "features"]
    assert properties["model_name"]["type"] == "string"
    assert properties["warn_only"] == {**properties["warn_only"], "type": "boolean", "default": False}
    assert properties["window"]["default"] is None
    assert properties["trainer"]["default"]["estimator"] == "sklearn.ensemble.HistGradientBoostingClassifier"

    features = resolve(properties["features"], definitions)
    assert features["properties"]["task"]["enum"] == ["classification", "regression"]
    assert features["properties"]["holdout_fraction"]["default"] == 0.2
    assert features["properties"]["numeric"]["type"] == "array"
    trainer = resolve(properties["trainer"], definitions)
    assert trainer["properties"]["kind"]["enum"] == ["sklearn", "torch"]
    assert "Compute route label" in trainer["properties"]["label"]["description"]

    # Blocks render as block pickers: their definitions carry the block type's slug.
    assert resolve(properties["source"], definitions)["block_type_slug"] == "prefect-mlops-data-source"
    policy = resolve(properties["policy"], definitions)
    assert policy["block_type_slug"] == "prefect-mlops-model-policy"
    assert policy["properties"]["first_run"]["enum"] == ["promote", "reject"]
    assert resolve(properties["mlflow_server"], definitions)["block_type_slug"] == "prefect-mlops-mlflow-server"


def test_drift_monitor_and_train_on_pool_forms():
    drift = schema(drift_monitor)["properties"]
    # Empty by default: the retrain policy's drift_share applies.
    assert drift["drift_share"]["default"] is None
    assert drift["drift_share"]["type"] == "number"
    assert resolve(drift["retrain_policy"], schema(drift_monitor)["definitions"])["block_type_slug"] == \
        "prefect-mlops-retrain-policy"
    assert drift["retrain"]["default"] is False

    found = schema(train_on_pool)
    assert found["required"] == ["features", "trainer", "lineage"]
    feature_set = resolve(found["properties"]["features"], found["definitions"])
    assert resolve(feature_set["properties"]["dataset"], found["definitions"])["properties"]["fingerprint"]
    lineage = resolve(found["properties"]["lineage"], found["definitions"])
    assert "params_digest" in lineage["required"]


def test_rollback_and_batch_score_defaults():
    assert schema(rollback)["properties"]["reason"]["default"] == ""
    batch = schema(batch_score)
    assert batch["properties"]["alias"]["default"] == "champion"
    assert batch["required"] == ["model_name", "source", "output_uri"]
