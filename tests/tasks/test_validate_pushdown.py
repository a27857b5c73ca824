"""The Arrow push-down in validate gives exactly the table GX gives, on clean and broken data."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from prefect_mlops.tasks import _gx_arrow
from prefect_mlops.tasks.validate import learn_suite, run_suite, run_suite_on_table

ROOT = Path(__file__).resolve().parents[2]


def test_pushdown_matches_gx_row_for_row_on_broken_data():
    rng = np.random.default_rng(3)
    clean = pd.DataFrame({"x": rng.normal(size=500), "n": rng.integers(0, 9, 500),
                          "c": rng.choice(["a", "b"], 500)})
    suite = learn_suite(clean, name="t")
    broken = clean.copy()
    broken.loc[:30, "x"] = np.nan
    broken.loc[40:60, "x"] = 1e6
    broken.loc[:9, "c"] = "zzz"
    for frame in (clean, broken):
        pushed = run_suite_on_table(pa.Table.from_pandas(frame, preserve_index=False), suite)
        assert pushed == run_suite(frame, suite)
    assert not all(o.passed for o in run_suite(broken, suite))


@pytest.mark.parametrize("case", ["clean", "1MiB-string", "year-2500", "age-1e23", "timestamps-missing"])
def test_contract_checks_are_pushed_down_and_match_gx(tmp_path, case):
    rng = np.random.default_rng(5)
    rows = 300
    clean = pd.DataFrame({"age": rng.integers(18, 70, rows).astype("float64"),
                          "city": rng.choice(["oslo", "rome"], rows),
                          "when": pd.date_range("2024-01-01", periods=rows, freq="h").astype("datetime64[us]")})
    suite = learn_suite(clean, name="t")
    frame = clean.copy()
    if case == "1MiB-string":
        frame.loc[4, "city"] = "z" * 2**20
    elif case == "year-2500":
        frame.loc[9, "when"] = pd.Timestamp("2500-06-01").as_unit("us")
    elif case == "age-1e23":
        frame.loc[2, "age"] = 1e23
    elif case == "timestamps-missing":
        frame["when"] = pd.Series(pd.NaT, index=frame.index, dtype="datetime64[us]")
    path = tmp_path / "data.parquet"
    frame.to_parquet(path, index=False)
    table = pq.read_table(path)
    expected = run_suite(pd.read_parquet(path), suite)
    assert run_suite_on_table(table, suite, load_frame=lambda: pd.read_parquet(path)) == expected
    facts = _gx_arrow._ArrowFacts(table)
    expectations = _gx_arrow.suite_expectations(suite)
    pushed = {e.configuration.type for e in expectations if _gx_arrow._pushed_down(e, facts) is not None}
    assert {"expect_column_value_lengths_to_be_between", "expect_column_min_to_be_between",
            "expect_column_max_to_be_between"} <= pushed
    failed = {(o.column, o.expectation) for o in expected if not o.passed and o.role == "contract"}
    assert failed == {"clean": set(), "1MiB-string": {("city", "expect_column_value_lengths_to_be_between")},
                      "year-2500": {("when", "expect_column_max_to_be_between")},
                      "age-1e23": {("age", "expect_column_values_to_be_between")},
                      "timestamps-missing": {("when", "expect_column_values_to_not_be_null"),
                                             ("when", "expect_column_min_to_be_between"),
                                             ("when", "expect_column_max_to_be_between")}}[case]


def test_equivalence_script_over_thirty_suite_and_data_cases():
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "gx_equivalence.py")], capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "all equal" in done.stdout
