"""validate: learned suites as GX JSON, suites from files, the per-expectation table, warn-only mode."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from prefect import flow

from prefect_mlops.errors import ConfigError, DataValidationError
from prefect_mlops.tasks.validate import learn_suite, validate, validate_dataset


@pytest.fixture
def reference(workspace):
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"amount": rng.uniform(10, 20, 200), "plan": rng.choice(["a", "b"], 200),
                          "age": rng.integers(18, 70, 200)})
    return workspace.write_snapshot(frame, name="orders"), frame


def test_learned_suite_covers_types_nulls_ranges_categories_and_row_count(reference):
    _, frame = reference
    suite = learn_suite(frame, name="orders", range_tolerance=0.5)
    kinds = {(e["type"], e["kwargs"].get("column")) for e in suite["expectations"]}
    assert ("expect_table_row_count_to_be_between", None) in kinds
    assert ("expect_column_values_to_be_in_set", "plan") in kinds
    assert ("expect_column_values_to_not_be_null", "amount") in kinds
    between = next(e for e in suite["expectations"] if e["type"] == "expect_column_values_to_be_between"
                   and e["kwargs"]["column"] == "amount")["kwargs"]
    span = frame.amount.max() - frame.amount.min()
    assert between["min_value"] == pytest.approx(frame.amount.min() - 0.5 * span)
    assert between["max_value"] == pytest.approx(frame.amount.max() + 0.5 * span)


def test_first_run_learns_and_saves_the_suite_then_reuses_it(reference, workspace):
    ref, _ = reference
    report = validate_dataset(ref, workspace=workspace)
    assert report.passed and len(report.outcomes) > 8
    saved = json.loads((workspace.root / "suites" / "orders.json").read_text())
    assert saved["name"] == "orders" and saved["expectations"]
    saved["expectations"].append({"type": "expect_column_values_to_be_between",
                                  "kwargs": {"column": "amount", "min_value": 100, "max_value": 200}})
    (workspace.root / "suites" / "orders.json").write_text(json.dumps(saved))
    with pytest.raises(DataValidationError, match="amount: expect_column_values_to_be_between"):
        validate_dataset(ref, workspace=workspace)


def test_failure_lists_every_failed_expectation_with_dataset_and_suite(reference, workspace):
    ref, frame = reference
    suite_path = workspace.root / "orders-suite.json"
    validate_dataset(ref, suite_path=str(suite_path), workspace=workspace)
    bad = frame.copy()
    bad.loc[:20, "amount"] = np.nan
    bad.loc[:5, "plan"] = "zzz"
    bad_ref = workspace.write_snapshot(bad, name="orders")
    with pytest.raises(DataValidationError, match="failed") as caught:
        validate_dataset(bad_ref, suite_path=str(suite_path), workspace=workspace)
    message = str(caught.value)
    assert "dataset 'orders'" in message and str(suite_path) in message
    assert "amount: expect_column_values_to_not_be_null" in message
    assert "plan: expect_column_values_to_be_in_set" in message and "zzz" in message


def test_warn_only_returns_the_failures_without_raising(reference, workspace):
    ref, frame = reference
    suite_path = workspace.root / "s.json"
    validate_dataset(ref, suite_path=str(suite_path), workspace=workspace)
    bad_ref = workspace.write_snapshot(frame.assign(plan="new"), name="orders")
    report = validate_dataset(bad_ref, suite_path=str(suite_path), warn_only=True, workspace=workspace)
    assert not report.passed
    assert [(o.column, o.expectation) for o in report.failures] == [("plan", "expect_column_values_to_be_in_set")]


def test_malformed_suite_file_is_a_config_error_naming_the_file(reference, workspace):
    ref, _ = reference
    path = workspace.root / "broken.json"
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="broken.json"):
        validate_dataset(ref, suite_path=str(path), workspace=workspace)


def test_task_publishes_the_table_and_fails_the_run_on_bad_data(reference, workspace):
    ref, frame = reference
    suite_path = str(workspace.root / "t.json")
    validate_dataset(ref, suite_path=suite_path, workspace=workspace)
    bad_ref = workspace.write_snapshot(frame.assign(amount=-1e9), name="orders")

    @flow
    def check(dataset):
        return validate(dataset, suite_path=suite_path, workspace=str(workspace.root))

    state = check(bad_ref, return_state=True)
    assert state.is_failed() and "expect_column_values_to_be_between" in state.message
    ok = validate.fn(ref, suite_path=suite_path, workspace=str(workspace.root))
    assert ok.passed
