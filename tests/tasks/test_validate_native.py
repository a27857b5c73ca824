"""A suite of standard expectations is judged with GX's rules without importing GX, and gives GX's table."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest

from prefect_mlops.tasks import _gx_rules
from prefect_mlops.tasks import validate as v
from prefect_mlops.workspace import read_frame


def frame(rows: int = 2_000, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    usage = rng.normal(40, 12, rows)
    usage[rng.random(rows) < 0.03] = np.nan
    return pd.DataFrame({
        "when": pd.date_range("2024-01-01", periods=rows, freq="min").astype("datetime64[us]"),
        "amount": rng.uniform(10, 20, rows), "usage": usage, "calls": rng.poisson(2, rows),
        "plan": rng.choice(["basic", "plus", "pro"], rows), "flag": rng.random(rows) < 0.3,
        "region": pd.Series(rng.choice(["n", "s", None], rows, p=[0.5, 0.49, 0.01]), dtype=object),
    })


def broken(clean: pd.DataFrame) -> pd.DataFrame:
    f = clean.copy()
    f.loc[5:400, "amount"] = np.nan
    f.loc[3:30, "usage"] = 1e6
    f.loc[:9, "plan"] = "zzz" * 500
    f.loc[12, "when"] = pd.Timestamp("2600-01-01").as_unit("us")
    f.loc[20:1500, "region"] = "east"
    return f


def edited(suite: dict) -> dict:
    """The learned suite plus a person's standard expectations (strict bounds, mostly, other type lists)."""
    return {**suite, "expectations": [*suite["expectations"],
        {"type": "expect_column_values_to_be_between", "kwargs": {"column": "amount", "min_value": 12,
                                                                  "max_value": 18, "strict_min": True}},
        {"type": "expect_column_values_to_be_between", "kwargs": {"column": "calls", "max_value": 3}},
        {"type": "expect_column_values_to_be_in_type_list", "kwargs": {"column": "plan", "type_list": ["int"]}},
        {"type": "expect_column_values_to_be_in_type_list", "kwargs": {"column": "calls",
                                                                       "type_list": ["float", "Int64Dtype"]}},
        {"type": "expect_column_values_to_be_of_type", "kwargs": {"column": "amount", "type_": "float64"}},
        {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "usage", "mostly": 0.999}},
        {"type": "expect_column_values_to_be_in_set", "kwargs": {"column": "flag", "value_set": [True]}},
        {"type": "expect_table_row_count_to_be_between", "kwargs": {"min_value": 10, "max_value": 100,
                                                                    "strict_max": True}},
        {"type": "expect_column_to_exist", "kwargs": {"column": "not-there"}}]}


@pytest.mark.parametrize("suite_kind", ["learned", "edited"])
@pytest.mark.parametrize("data_kind", ["clean", "broken"])
def test_the_table_without_gx_is_gxs_table(workspace, suite_kind, data_kind):
    clean = frame()
    suite = v.learn_suite(clean, name="orders")
    suite = suite if suite_kind == "learned" else edited(suite)
    assert _gx_rules.expectations(suite) is not None  # every expectation is judged without GX
    data = clean if data_kind == "clean" else broken(clean)
    ref = workspace.write_snapshot(data, name="orders")
    without_gx = v.run_suite_streamed(ref, suite)
    assert [o.model_dump() for o in without_gx] == [o.model_dump() for o in v.run_suite(read_frame(ref), suite)]
    failed = {(o.column, o.expectation) for o in without_gx if not o.passed}
    if suite_kind == "learned" and data_kind == "clean":
        assert not failed
    if data_kind == "broken":  # the breakage is seen, as GX sees it
        assert {("plan", "expect_column_value_lengths_to_be_between"), ("when", "expect_column_max_to_be_between"),
                ("usage", "expect_column_values_to_be_between")} <= failed


@pytest.mark.parametrize("frame_rows", [250_000, 100])
def test_validating_a_learned_suite_does_not_import_great_expectations(tmp_path, frame_rows):
    # 100: the data is larger than GX's frame would be, the path where GX would run per batch.
    code = textwrap.dedent(f"""
        import sys, numpy as np, pandas as pd
        from prefect_mlops.tasks import validate
        from prefect_mlops.tasks.validate import validate_dataset
        from prefect_mlops.workspace import Workspace
        validate.GX_FRAME_ROWS = {frame_rows}
        ws = Workspace({str(tmp_path)!r})
        rng = np.random.default_rng(0)
        data = pd.DataFrame({{"x": rng.normal(size=500), "c": rng.choice(["a", "b"], 500),
                             "t": pd.date_range("2024-01-01", periods=500, freq="h")}})
        first = validate_dataset(ws.write_snapshot(data, name="d"), workspace=ws)
        data.loc[3, "x"] = 1e9
        second = validate_dataset(ws.write_snapshot(data, name="d"), workspace=ws, warn_only=True)
        print(first.passed, second.passed, [o.column for o in second.failures],
              "great_expectations" in sys.modules)
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["True", "False", "['x']", "False"]


@pytest.mark.parametrize("expectation", [
    {"type": "expect_column_values_to_match_regex", "kwargs": {"column": "plan", "regex": "^p"}},
    {"type": "expect_column_values_to_be_between", "kwargs": {"column": "amount", "min_value": 1,
                                                              "row_condition": "amount>2"}},
    {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "usage", "mostly": "0.9"}},
    {"type": "expect_column_values_to_be_between", "kwargs": {"column": "amount", "min_value": 5, "max_value": 1}},
    {"type": "expect_column_max_to_be_between", "kwargs": {"column": "when", "max_value": "next year"}},
    {"type": "expect_column_values_to_be_in_set", "kwargs": {"column": "calls", "value_set": [1, 2]}},
    {"type": "expect_table_row_count_to_be_between", "kwargs": {"min_value": 1.5}},
])
def test_anything_gx_might_read_otherwise_goes_to_gx_with_the_whole_suite(workspace, expectation):
    clean = frame(600)
    suite = v.learn_suite(clean, name="orders")
    suite = {**suite, "expectations": [*suite["expectations"], {**expectation, "meta": {"role": "profile"}}]}
    assert _gx_rules.expectations(suite) is None
    ref = workspace.write_snapshot(broken(clean), name="orders")
    try:
        expected = [o.model_dump() for o in v.run_suite(read_frame(ref), suite)]
    except v.ConfigError:  # GX refuses the suite: so does validate, the same way
        with pytest.raises(v.ConfigError, match="not a valid GX suite"):
            v.run_suite_streamed(ref, suite)
        return
    assert [o.model_dump() for o in v.run_suite_streamed(ref, suite)] == expected


def test_a_suite_with_unknown_keys_is_read_by_gx():
    suite = {"name": "s", "expectations": [], "data_asset_type": "x"}
    assert _gx_rules.expectations(suite) is None
    extra = {"name": "s", "expectations": [{"type": "expect_column_to_exist", "kwargs": {"column": "a"},
                                            "rendered_content": []}]}
    assert _gx_rules.expectations(extra) is None
    plain = json.loads(json.dumps({"name": "s", "expectations": [
        {"type": "expect_column_to_exist", "kwargs": {"column": "a"}, "meta": {"role": "contract"}, "id": "1"}]}))
    assert [e.configuration.type for e in _gx_rules.expectations(plain)] == ["expect_column_to_exist"]


TYPE_NAMES = ["int", "float", "str", "bool", "int64", "float64", "float32", "object", "datetime64[ns]",
              "datetime64[us]", "Int64Dtype", "BooleanDtype", "StringDtype", "Timestamp", "bytes", "number"]


def random_case(seed: int) -> tuple[pd.DataFrame, dict]:
    """A frame with gaps and outliers, and a suite of standard expectations with arguments drawn at random."""
    rng = np.random.default_rng(seed)
    rows = int(rng.integers(0, 400)) if seed % 7 else 0
    amount = rng.normal(10, 3, rows)
    amount[rng.random(rows) < rng.uniform(0, 0.3)] = np.nan
    words = np.array(["a", "bb", "ccc", "dddd", "x" * 40])
    text = pd.Series(rng.choice(words, rows), dtype=object)
    text[rng.random(rows) < 0.1] = None
    when = pd.Series(pd.date_range("2024-01-01", periods=rows, freq="h"), dtype="datetime64[us]")
    frame = pd.DataFrame({"amount": amount, "count": rng.integers(-5, 50, rows), "text": text,
                          "flag": rng.random(rows) < 0.4, "when": when})
    expectations = []
    for _ in range(int(rng.integers(3, 15))):
        column = str(rng.choice(frame.columns))
        kind = str(rng.choice(["to_exist", "not_null", "between", "in_set", "lengths", "type_list", "of_type",
                               "row_count", "min", "max"]))
        kwargs: dict = {"column": column}
        mostly = {} if rng.random() < 0.5 else {"mostly": float(np.round(rng.uniform(0, 1), 3))}
        bounds = {}
        low, high = sorted(float(v) for v in rng.normal(10, 6, 2))
        if rng.random() < 0.8:
            bounds["min_value"] = int(low) if column == "count" else low
        if rng.random() < 0.8 or not bounds:
            bounds["max_value"] = int(high) + 1 if column == "count" else high
        for flag in ("strict_min", "strict_max"):
            if rng.random() < 0.3:
                bounds[flag] = bool(rng.random() < 0.5)
        if kind == "to_exist":
            kwargs["column"] = column if rng.random() < 0.8 else "missing"
            entry = ("expect_column_to_exist", kwargs)
        elif kind == "not_null":
            entry = ("expect_column_values_to_not_be_null", {**kwargs, **mostly})
        elif kind == "between" and column in ("amount", "count"):
            entry = ("expect_column_values_to_be_between", {**kwargs, **mostly, **bounds})
        elif kind == "in_set" and column in ("text", "flag"):
            pool = list(words) if column == "text" else [True, False]
            chosen = [pool[i] for i in sorted(set(rng.integers(0, len(pool), 3)))]
            entry = ("expect_column_values_to_be_in_set", {**kwargs, **mostly, "value_set": chosen})
        elif kind == "lengths" and column == "text":
            entry = ("expect_column_value_lengths_to_be_between",
                     {**kwargs, **mostly, "min_value": int(rng.integers(0, 3)), "max_value": int(rng.integers(2, 45))})
        elif kind == "type_list":
            names = [str(n) for n in rng.choice(TYPE_NAMES, int(rng.integers(1, 4)), replace=False)]
            entry = ("expect_column_values_to_be_in_type_list", {**kwargs, **mostly, "type_list": names})
        elif kind == "of_type" and column != "text":
            entry = ("expect_column_values_to_be_of_type", {**kwargs, "type_": str(rng.choice(TYPE_NAMES))})
        elif kind == "row_count":
            entry = ("expect_table_row_count_to_be_between",
                     {"min_value": int(rng.integers(0, 200)), "max_value": int(rng.integers(200, 500))})
        elif kind in ("min", "max") and column == "when":
            edge = str(pd.Timestamp("2024-01-01") + pd.Timedelta(hours=int(rng.integers(-10, 400))))
            key = "min_value" if rng.random() < 0.5 else "max_value"
            entry = (f"expect_column_{kind}_to_be_between", {**kwargs, key: edge.replace(" ", "T")})
        else:
            continue
        expectations.append({"type": entry[0], "kwargs": entry[1], "meta": {"role": str(rng.choice(
            ["contract", "profile"]))}})
    return frame, {"name": f"random-{seed}", "expectations": expectations}


@pytest.mark.parametrize("seed", range(24))
def test_random_suites_on_random_data_give_gxs_table(workspace, seed):
    frame, suite = random_case(seed)
    ref = workspace.write_snapshot(frame, name="random")
    expected = [o.model_dump() for o in v.run_suite(read_frame(ref), suite)]
    got = [o.model_dump() for o in v.run_suite_streamed(ref, suite)]
    assert got == expected


def test_most_random_cases_are_judged_without_gx(workspace, monkeypatch):
    """The random cases above exercise the rules without GX, not only GX's own path."""
    from prefect_mlops.tasks import _gx_arrow

    calls = []
    read_by_gx = _gx_arrow.suite_expectations
    monkeypatch.setattr(_gx_arrow, "suite_expectations", lambda suite: calls.append(1) or read_by_gx(suite))
    native = 0
    for seed in range(24):
        frame, suite = random_case(seed)
        calls.clear()
        v.run_suite_streamed(workspace.write_snapshot(frame, name="random"), suite)
        native += not calls
    assert native >= 12


@pytest.mark.parametrize("bound", ["2020-01-01", "20200101", "2020-01-01T00", "2020-01-01T00:00:00,5",
                                   "20200101T000000"])
def test_a_timestamp_bound_gx_reads_otherwise_is_judged_by_gx(workspace, bound):
    """GX reads a date alone as a date and digits as a float (and refuses some ISO forms Python takes)."""
    suite = {"name": "t", "expectations": [{"type": "expect_column_min_to_be_between",
                                            "kwargs": {"column": "t", "min_value": bound}}]}
    assert _gx_rules.expectations(suite) is None
    frame = pd.DataFrame({"t": pd.to_datetime(["2021-01-01", "2021-06-01"])})
    ref = workspace.write_snapshot(frame, name="t")
    try:
        expected = [o.model_dump() for o in v.run_suite(read_frame(ref), suite)]
    except v.ConfigError:
        with pytest.raises(v.ConfigError, match="not a valid GX suite"):
            v.run_suite_streamed(ref, suite)
        return
    assert [o.model_dump() for o in v.run_suite_streamed(ref, suite)] == expected


def test_integer_bounds_compare_as_gx_compares_them(workspace):
    """GX holds a values-between bound as a float: an int64 column beyond 2**53 compares in float64."""
    frame = pd.DataFrame({"x": np.array([2**53 + 1, 5, 2**63 - 1], dtype="int64")})
    suite = {"name": "t", "expectations": [
        {"type": "expect_column_values_to_be_between", "kwargs": {"column": "x", "max_value": 2**53}},
        {"type": "expect_column_values_to_be_between", "kwargs": {"column": "x", "max_value": 2**63 - 2}}]}
    assert _gx_rules.expectations(suite) is not None
    ref = workspace.write_snapshot(frame, name="t")
    assert [o.model_dump() for o in v.run_suite_streamed(ref, suite)] == \
        [o.model_dump() for o in v.run_suite(read_frame(ref), suite)]


@pytest.mark.parametrize("suite", [
    {"name": "s", "meta": 0, "expectations": []},
    {"name": "s", "expectations": [{"type": "expect_column_to_exist", "kwargs": {"column": "a"}, "meta": 0}]},
    {"name": "s", "expectations": [{"type": "expect_column_to_exist", "kwargs": {"column": "a"}, "id": {"x": 1}}]},
    {"name": "s", "expectations": [{"kwargs": {"column": "a"}}]},
    {"name": "s", "expectations": [{"type": ["expect_column_to_exist"], "kwargs": {"column": "a"}}]},
])
def test_a_malformed_suite_is_left_to_gx_to_refuse_or_read(suite):
    assert _gx_rules.expectations(suite) is None
