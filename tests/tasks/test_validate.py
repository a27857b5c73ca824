"""validate: contract and profile, learned suites as GX JSON, suite evolution, valid types, warn-only mode."""

from __future__ import annotations

import datetime as dt
import decimal
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from prefect import flow

from prefect_mlops.blocks import DataSource
from prefect_mlops.errors import ConfigError, DataValidationError
from prefect_mlops.tasks.ingest import ingest_dataset
from prefect_mlops.tasks.validate import (
    engine_from_env,
    evolve_suite,
    learn_suite,
    learn_suite_from,
    suite_digest,
    update_suite,
    validate,
    validate_dataset,
)


@pytest.fixture
def reference(workspace):
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"amount": rng.uniform(10, 20, 200), "plan": rng.choice(["a", "b"], 200),
                          "age": rng.integers(18, 70, 200)})
    return workspace.write_snapshot(frame, name="orders"), frame


def _winter(rows: int = 300, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "temperature": rng.uniform(-12, 6, rows),
        "day": np.arange(rows, dtype="int64"),  # index-like: grows every period
        "age": rng.integers(18, 70, rows),
        "plan": pd.Categorical(rng.choice(["basic", "pro"], rows)),
        "city": rng.choice(["oslo", "rome"], rows),
        "when": pd.date_range("2024-01-01", periods=rows, freq="h").astype("datetime64[us]"),
    })


def _summer(rows: int = 300) -> pd.DataFrame:
    rng = np.random.default_rng(1)
    frame = _winter(rows, seed=1)
    return frame.assign(temperature=rng.uniform(18, 36, rows), day=np.arange(rows) + 20 * rows,
                        city=rng.choice(["oslo", "rome", "lima"], rows),
                        when=pd.date_range("2024-07-01", periods=rows, freq="h").astype("datetime64[us]"))


def _roles(suite):
    return {(e["type"], e["kwargs"].get("column"), e["meta"]["role"]) for e in suite["expectations"]}


def test_learned_suite_splits_contract_from_profile(reference):
    _, frame = reference
    suite = learn_suite(frame, name="orders", range_tolerance=0.5)
    roles = _roles(suite)
    assert ("expect_table_row_count_to_be_between", None, "contract") in roles
    assert ("expect_table_row_count_to_be_between", None, "profile") in roles
    assert ("expect_column_values_to_be_in_set", "plan", "profile") in roles
    assert ("expect_column_values_to_not_be_null", "amount", "contract") in roles
    assert ("expect_column_values_to_be_in_type_list", "age", "contract") in roles
    assert ("expect_column_value_lengths_to_be_between", "plan", "contract") in roles
    between = {e["meta"]["role"]: e["kwargs"] for e in suite["expectations"]
               if e["type"] == "expect_column_values_to_be_between" and e["kwargs"]["column"] == "amount"}
    span = frame.amount.max() - frame.amount.min()
    assert between["profile"]["min_value"] == pytest.approx(frame.amount.min() - 0.5 * span)
    assert between["profile"]["max_value"] == pytest.approx(frame.amount.max() + 0.5 * span)
    assert between["contract"]["min_value"] < -1000 and between["contract"]["max_value"] > 1000
    assert "mostly" not in between["contract"]
    assert suite["meta"]["digest"] == suite_digest(suite["expectations"])


def test_first_run_learns_and_saves_the_suite_then_reuses_it(reference, workspace):
    ref, _ = reference
    report = validate_dataset(ref, workspace=workspace)
    assert report.passed and len(report.outcomes) > 8 and not report.profile_deviations
    saved = json.loads((workspace.root / "suites" / "orders.json").read_text())
    assert saved["name"] == "orders" and saved["expectations"]
    # An expectation a person adds has no role: it is contract, and it blocks.
    saved["expectations"].append({"type": "expect_column_values_to_be_between",
                                  "kwargs": {"column": "amount", "min_value": 100, "max_value": 200}})
    (workspace.root / "suites" / "orders.json").write_text(json.dumps(saved))
    with pytest.raises(DataValidationError, match="amount: expect_column_values_to_be_between"):
        validate_dataset(ref, workspace=workspace)


def test_hand_written_suite_without_roles_still_blocks(reference, workspace):
    ref, _ = reference
    path = workspace.root / "hand.json"
    path.write_text(json.dumps({"name": "hand", "expectations": [
        {"type": "expect_column_values_to_be_in_set", "kwargs": {"column": "plan", "value_set": ["a"]}}]}))
    with pytest.raises(DataValidationError, match=r"plan: expect_column_values_to_be_in_set: .*unexpected"):
        validate_dataset(ref, suite_path=str(path), workspace=workspace)
    report = validate_dataset(ref, suite_path=str(path), warn_only=True, workspace=workspace)
    assert [(o.column, o.role, o.passed) for o in report.outcomes] == [("plan", "contract", False)]


def test_drifted_but_plausible_data_passes_with_its_deviations_reported(workspace):
    path = str(workspace.root / "weather.json")
    validate_dataset(workspace.write_snapshot(_winter(), name="weather"), suite_path=path, workspace=workspace)
    summer = workspace.write_snapshot(_summer(), name="weather")
    for engine in ("arrow", "gx"):
        report = validate_dataset(summer, suite_path=path, workspace=workspace, engine=engine)
        assert report.passed and not report.failures
        deviations = {(o.column, o.expectation) for o in report.profile_deviations}
        assert deviations == {("temperature", "expect_column_values_to_be_between"),
                              ("day", "expect_column_values_to_be_between"),
                              ("city", "expect_column_values_to_be_in_set")}
        assert all(o.role == "profile" for o in report.profile_deviations)


@pytest.mark.parametrize(("column", "value", "expectation"), [
    ("age", 1e23, "expect_column_values_to_be_between"),
    ("plan", "x" * 2**20, "expect_column_value_lengths_to_be_between"),
    ("city", "y" * 2**20, "expect_column_value_lengths_to_be_between"),
    ("when", pd.Timestamp("2500-01-01").as_unit("us"), "expect_column_max_to_be_between"),
], ids=["age-1e23", "category-1MiB", "string-1MiB", "year-2500"])
def test_impossible_values_fail_the_contract_naming_the_column(workspace, column, value, expectation):
    path = str(workspace.root / "weather.json")
    winter = _winter()
    validate_dataset(workspace.write_snapshot(winter, name="weather"), suite_path=path, workspace=workspace)
    bad = _summer()
    if column == "plan":
        bad[column] = pd.Categorical([value, *bad[column][1:]])
    else:
        bad[column] = bad[column].astype("float64" if column == "age" else bad[column].dtype)
        bad.loc[7, column] = value
    ref = workspace.write_snapshot(bad, name="weather")
    for engine in ("arrow", "gx"):
        with pytest.raises(DataValidationError, match=f"{column}: {expectation}") as caught:
            validate_dataset(ref, suite_path=path, workspace=workspace, engine=engine)
        assert len(str(caught.value).encode()) < 10_000


def test_failure_lists_every_failed_contract_expectation_with_dataset_and_suite(reference, workspace):
    ref, frame = reference
    suite_path = workspace.root / "orders-suite.json"
    validate_dataset(ref, suite_path=str(suite_path), workspace=workspace)
    bad = frame.copy()
    bad.loc[:20, "amount"] = np.nan
    bad.loc[:5, "plan"] = "zzz"  # a new category: a profile deviation, not a failure
    bad["age"] = bad["age"].astype("float64")
    bad.loc[3, "age"] = -1e12
    bad_ref = workspace.write_snapshot(bad, name="orders")
    with pytest.raises(DataValidationError, match="failed 2 of") as caught:
        validate_dataset(bad_ref, suite_path=str(suite_path), workspace=workspace)
    message = str(caught.value)
    assert "dataset 'orders'" in message and str(suite_path) in message
    assert "amount: expect_column_values_to_not_be_null" in message
    assert "age: expect_column_values_to_be_between" in message and "-1000000000000" in message
    assert "plan: expect_column_values_to_be_in_set" not in message
    assert "(1 profile deviation as well" in message


def test_warn_only_returns_the_failures_without_raising(reference, workspace):
    ref, frame = reference
    suite_path = workspace.root / "s.json"
    validate_dataset(ref, suite_path=str(suite_path), workspace=workspace)
    bad_ref = workspace.write_snapshot(frame.assign(plan="n" * 5000), name="orders")
    report = validate_dataset(bad_ref, suite_path=str(suite_path), warn_only=True, workspace=workspace)
    assert not report.passed
    assert [(o.column, o.expectation) for o in report.failures] == [
        ("plan", "expect_column_value_lengths_to_be_between")]
    assert [(o.column, o.expectation) for o in report.profile_deviations] == [
        ("plan", "expect_column_values_to_be_in_set")]
    assert all(len(o.observed) < 1000 for o in report.outcomes)


def test_malformed_suite_file_is_a_config_error_naming_the_file(reference, workspace):
    ref, _ = reference
    path = workspace.root / "broken.json"
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="broken.json"):
        validate_dataset(ref, suite_path=str(path), workspace=workspace)
    with pytest.raises(ConfigError, match="engine 'pandas'"):
        validate_dataset(ref, workspace=workspace, engine="pandas")


def test_engine_is_read_from_the_environment_at_call_time(monkeypatch):
    monkeypatch.delenv("PREFECT_MLOPS_GX_PUSHDOWN", raising=False)
    assert engine_from_env() == "arrow"
    for off in ("0", "false", "FALSE", " no "):
        monkeypatch.setenv("PREFECT_MLOPS_GX_PUSHDOWN", off)
        assert engine_from_env() == "gx"
    monkeypatch.setenv("PREFECT_MLOPS_GX_PUSHDOWN", "1")
    assert engine_from_env() == "arrow"


def test_task_publishes_the_table_and_fails_the_run_on_bad_data(reference, workspace, monkeypatch):
    ref, frame = reference
    suite_path = str(workspace.root / "t.json")
    validate_dataset(ref, suite_path=suite_path, workspace=workspace)
    bad_ref = workspace.write_snapshot(frame.assign(amount=-1e9), name="orders")

    @flow
    def check(dataset):
        return validate(dataset, suite_path=suite_path, workspace=str(workspace.root))

    state = check(bad_ref, return_state=True)
    assert state.is_failed() and "expect_column_values_to_be_between" in state.message
    monkeypatch.setenv("PREFECT_MLOPS_GX_PUSHDOWN", "0")  # the same verdict with every expectation in GX
    ok = validate.fn(ref, suite_path=suite_path, workspace=str(workspace.root))
    assert ok.passed and all(o.role in ("contract", "profile") for o in ok.outcomes)


def test_evolve_suite_relearns_a_learned_suite_and_keeps_the_previous_one(workspace):
    path = workspace.root / "suites" / "weather.json"
    winter = workspace.write_snapshot(_winter(), name="weather")
    validate_dataset(winter, workspace=workspace)
    before = path.read_bytes()
    summer = workspace.write_snapshot(_summer(), name="weather")
    update = evolve_suite(str(path), summer, version="2", workspace=workspace)
    assert update.updated and update.version == "2" and "re-learned" in update.reason
    assert update.history_path == str(path.parent / "history" / "weather.v0.json")
    assert (path.parent / "history" / "weather.v0.json").read_bytes() == before
    suite = json.loads(path.read_text())
    assert suite["meta"]["learned_version"] == "2" and suite["meta"]["digest"] == suite_digest(suite["expectations"])
    assert not validate_dataset(summer, suite_path=str(path), workspace=workspace).profile_deviations
    # The contract only widened: winter data is still accepted.
    assert validate_dataset(winter, suite_path=str(path), workspace=workspace).passed
    old = {(e["type"], e["kwargs"].get("column")): e["kwargs"] for e in json.loads(before)["expectations"]
           if e["meta"]["role"] == "contract"}
    new = {(e["type"], e["kwargs"].get("column")): e["kwargs"] for e in suite["expectations"]
           if e["meta"]["role"] == "contract"}
    key = ("expect_column_values_to_be_between", "temperature")
    assert new[key]["min_value"] <= old[key]["min_value"] and new[key]["max_value"] >= old[key]["max_value"]
    # A second promotion keeps version 2 in the history.
    again = evolve_suite(str(path), winter, version="3", workspace=workspace)
    assert again.updated and again.history_path.endswith("weather.v2.json")


def test_evolve_suite_never_overwrites_a_suite_a_person_edited(workspace):
    path = workspace.root / "suites" / "weather.json"
    winter = workspace.write_snapshot(_winter(), name="weather")
    validate_dataset(winter, workspace=workspace)
    suite = json.loads(path.read_text())
    for expectation in suite["expectations"]:  # a person tightens a learned range
        if expectation["type"] == "expect_column_values_to_be_between" and expectation["meta"]["role"] == "profile":
            expectation["kwargs"]["max_value"] = 1.0
    path.write_text(json.dumps(suite, indent=4))
    edited = path.read_bytes()
    summer = workspace.write_snapshot(_summer(), name="weather")
    update = evolve_suite(str(path), summer, version="2", workspace=workspace)
    assert not update.updated and "edited by a person" in update.reason
    assert path.read_bytes() == edited and not (path.parent / "history").exists()
    # A suite with no learned meta at all (written by hand, or by an older learn_suite) is kept too.
    hand = workspace.root / "hand.json"
    hand.write_text(json.dumps({"name": "hand", "expectations": []}))
    update = evolve_suite(str(hand), summer, version="2", workspace=workspace)
    assert not update.updated and "not a learned suite" in update.reason and hand.read_text().endswith("[]}")
    # Nothing is learned for a suite that is kept: not ahead, not at the update (an unreadable snapshot is not read).
    from prefect_mlops.refs import DatasetRef
    from prefect_mlops.tasks.validate import learn_suite_ahead

    gone = DatasetRef(**{**summer.model_dump(), "uri": str(workspace.root / "no-such.arrow")})
    assert learn_suite_ahead.fn(gone, str(path), str(workspace.root)) is None
    assert "edited by a person" in evolve_suite(str(path), gone, version="3", workspace=workspace).reason


def test_update_suite_task_learns_a_missing_suite_and_reports_it(workspace):
    summer = workspace.write_snapshot(_summer(), name="weather")

    @flow
    def promote():
        return update_suite(None, summer, "1", workspace=str(workspace.root))

    update = promote()
    assert update.updated and "no suite yet" in update.reason
    assert json.loads((workspace.root / "suites" / "weather.json").read_text())["meta"]["learned_version"] == "1"


def test_the_suite_learned_ahead_is_the_one_update_suite_writes_and_a_failed_one_is_learned_again(workspace):
    from prefect_mlops.refs import DatasetRef
    from prefect_mlops.tasks.validate import learn_suite_ahead

    winter = workspace.write_snapshot(pd.DataFrame({"t": [-5.0, 0.0, 3.0]}), name="weather")
    path = validate_dataset(winter, workspace=workspace).suite_path
    summer = workspace.write_snapshot(_summer(), name="weather")
    gone = DatasetRef(**{**summer.model_dump(), "uri": str(workspace.root / "no-such.arrow")})

    @flow
    def promote():
        ahead = learn_suite_ahead.submit(summer)
        failed = learn_suite_ahead.submit(gone)  # unreadable: None, and update_suite learns it itself
        return ahead.result(), failed.result(), update_suite(path, summer, "2", workspace=str(workspace.root),
                                                             learned=failed)

    ahead, failed, update = promote()
    assert failed is None and update.updated
    written = json.loads(Path(path).read_text())
    assert ahead["expectations"] == learn_suite_from(summer, name="weather")["expectations"]
    assert written["meta"]["learned_version"] == "2"
    again = evolve_suite(str(workspace.root / "copy.json"), summer, version="3", workspace=workspace, learned=ahead)
    assert again.updated and json.loads(Path(again.path).read_text())["meta"]["learned_version"] == "3"


def _arrow_batch(kind: str, seed: int, rows: int = 40) -> pa.Array:
    rng = np.random.default_rng(seed)
    start = dt.datetime(2024, 1, 1) + dt.timedelta(days=30 * seed)
    if kind == "timestamp-utc":
        return pa.array([start + dt.timedelta(hours=i) for i in range(rows)], pa.timestamp("us", tz="UTC"))
    if kind == "date32":
        return pa.array([start.date() + dt.timedelta(days=i) for i in range(rows)], pa.date32())
    if kind == "decimal128":
        return pa.array([decimal.Decimal(f"{v:.2f}") for v in rng.uniform(0, 100, rows)], pa.decimal128(9, 2))
    if kind == "dictionary":
        return pa.array(rng.choice(["red", "green", "blue"], rows)).dictionary_encode()
    if kind.startswith("uint"):
        top = {"uint8": 250, "uint16": 60_000, "uint32": 4_000_000_000, "uint64": 2**63 + 10**6}[kind]
        return pa.array([top, *(int(v) for v in rng.integers(0, 200, rows - 1))], getattr(pa, kind)())
    if kind == "large_string":
        return pa.array(rng.choice(["north", "south"], rows), pa.large_string())
    if kind == "float32":
        return pa.array(rng.normal(size=rows), pa.float32())
    if kind == "int64-with-nulls":
        return pa.array([None if i % 6 == 0 else int(v) for i, v in enumerate(rng.integers(0, 99, rows))])
    raise AssertionError(kind)


_PANDAS_KINDS = {
    "category": lambda rng, n: pd.Categorical(rng.choice(["basic", "pro"], n)),
    "Int64": lambda rng, n: pd.array([None if i % 5 == 0 else int(v) for i, v in enumerate(rng.integers(0, 9, n))],
                                     dtype="Int64"),
    "boolean": lambda rng, n: pd.array([None if i % 4 == 0 else bool(v) for i, v in enumerate(rng.random(n) < .5)],
                                       dtype="boolean"),
    "string": lambda rng, n: pd.array([None if i % 3 == 0 else str(v) for i, v in enumerate(rng.choice(["a", "b"], n))],
                                      dtype="string"),
}


@pytest.mark.parametrize("kind", [
    "timestamp-utc", "date32", "decimal128", "dictionary", "uint8", "uint16", "uint32", "uint64", "large_string",
    "float32", "int64-with-nulls", *_PANDAS_KINDS,
])
def test_valid_types_pass_a_suite_learned_from_themselves_and_a_fresh_batch(workspace, tmp_path, kind):
    """Arrow types arrive through a Parquet source and ingest; pandas extension types through write_snapshot."""
    def batch(seed: int):
        if kind in _PANDAS_KINDS:
            rng = np.random.default_rng(seed)
            return workspace.write_snapshot(pd.DataFrame({"v": _PANDAS_KINDS[kind](rng, 40), "n": np.arange(40)}),
                                            name="typed")
        path = tmp_path / f"{kind}-{seed}.parquet"
        pq.write_table(pa.table({"v": _arrow_batch(kind, seed), "n": pa.array(np.arange(40))}), path)
        return ingest_dataset(DataSource(uri=str(path)), name="typed", workspace=workspace)

    suite_path = str(workspace.root / "typed.json")
    first, fresh = batch(0), batch(1)
    validate_dataset(first, suite_path=suite_path, workspace=workspace)
    for ref in (first, fresh):
        for engine in ("arrow", "gx"):
            report = validate_dataset(ref, suite_path=suite_path, workspace=workspace, engine=engine, warn_only=True)
            assert report.passed, [(o.expectation, o.observed) for o in report.failures]
