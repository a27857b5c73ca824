"""Check that validating a snapshot with the Arrow push-down gives exactly GX's table.

For a set of frames (clean, and broken in the ways the learned suite catches) and suites
(learned, hand-edited, with expectations that only GX runs), compare
`run_suite_on_table(table)` with `run_suite(frame)` (every expectation in GX): the rows,
their order, and for every pushed-down expectation GX's whole result dict; and the same for the
streamed push-down (`run_suite_on_batches`) over batches of 700 rows, so that a column's nulls,
unexpected values and extremes fall in different batches; and the path above GX_FRAME_ROWS, where
GX runs the per-row expectations that are not pushed down batch by batch (batches of 1,500 rows).
The data has the types read natively (int64, float64, strings, bools, timestamps) and the others
(a time-zoned timestamp, a categorical, int32, float32, a nullable bool).

    python bench/gx_equivalence.py          # exits 1 on the first difference
"""

from __future__ import annotations

import copy
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq


def reference(rows: int = 3000, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    usage = rng.normal(40, 12, rows)
    usage[rng.random(rows) < 0.03] = np.nan
    return pd.DataFrame({
        "when": pd.date_range("2024-01-01", periods=rows, freq="min"),
        "amount": rng.uniform(10, 20, rows), "usage": usage, "calls": rng.poisson(2, rows),
        "plan": rng.choice(["basic", "plus", "pro"], rows), "flag": rng.random(rows) < 0.3,
        "region": pd.Series(rng.choice(["n", "s", None], rows, p=[0.5, 0.49, 0.01]), dtype=object),
        "label": rng.integers(0, 2, rows),
        # Types read through GX batch by batch (or pushed down after normalising), not natively:
        "at": pd.date_range("2024-01-01", periods=rows, freq="min", tz="UTC"),
        "kind": pd.Categorical(rng.choice(["a", "b", "c"], rows)),
        "count32": rng.integers(0, 50, rows).astype("int32"),
        "ratio32": rng.uniform(0, 1, rows).astype("float32"),
        "ok": pd.array(rng.random(rows) < 0.5, dtype="boolean"),
    })


def broken(frame: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The frame, broken in the ways a learned suite catches (and some it does not)."""
    cases = {"clean": frame}
    f = frame.copy()
    f.loc[5:400, "amount"] = np.nan
    f.loc[3:30, "usage"] = 1e6
    f.loc[7, "usage"] = -1e6
    cases["nulls-and-outliers"] = f
    f = frame.copy()
    f.loc[2:60, "plan"] = "enterprise"
    f.loc[70:75, "plan"] = None
    f.loc[1:900, "region"] = "east"
    cases["unknown-categories"] = f
    f = frame.copy()
    f["calls"] = f["calls"].astype("float64")
    f.loc[10:200, "calls"] = np.nan  # an integer column that gained nulls: float in pandas
    cases["int-with-nulls"] = f
    f = frame.copy()
    f.loc[0:500, "when"] = pd.NaT
    cases["timestamps-missing"] = f
    cases["few-rows"] = frame.head(10).copy()
    f = frame.copy()
    f["amount"] = f["amount"].astype(str)  # numbers arrive as text
    cases["number-as-text"] = f
    cases["column-dropped"] = frame.drop(columns=["plan"])
    f = frame.copy()
    f.loc[:, "label"] = 7
    cases["constant-out-of-range"] = f
    f = frame.copy()
    f["calls"] = pd.array(f["calls"], dtype="Int64")
    f.loc[5:50, "calls"] = pd.NA
    f.loc[60:70, "calls"] = 99
    cases["int-nulls-no-pandas-metadata"] = f  # written by pyarrow alone: int64 with nulls, read as float64
    f = frame.copy()
    late = [700, 1_600, 2_999]  # nulls and bad values in both batches of 1,500 rows, none in the first 700
    f.loc[late, "at"] = pd.NaT
    f.loc[late, "ok"] = pd.NA
    f.loc[late, "count32"] = 10**6
    f.loc[late, "ratio32"] = np.nan
    f["kind"] = f["kind"].cat.add_categories(["zz"])
    f.loc[late, "kind"] = "zz"
    cases["typed-nulls-and-outliers"] = f
    f = frame.copy()
    f.loc[100:110, "at"] = pd.Timestamp("2200-01-01", tz="UTC")
    f["count32"] = f["count32"].astype("float32")  # a type change
    cases["typed-year-2200-and-type-change"] = f
    return cases


def suites(frame: pd.DataFrame) -> dict[str, dict[str, Any]]:
    from prefect_mlops.tasks.validate import learn_suite

    learned = learn_suite(frame, name="orders")
    edited = copy.deepcopy(learned)
    edited["expectations"] += [
        {"type": "expect_column_values_to_be_between", "kwargs": {"column": "amount", "min_value": 12,
                                                                  "max_value": 18, "strict_min": True}},
        {"type": "expect_column_values_to_be_between", "kwargs": {"column": "calls", "max_value": 3}},
        {"type": "expect_column_values_to_be_in_type_list", "kwargs": {"column": "plan", "type_list": ["int"]}},
        {"type": "expect_column_values_to_match_regex", "kwargs": {"column": "plan", "regex": "^p"}},
        {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "usage", "mostly": 0.999}},
        {"type": "expect_column_values_to_be_in_set", "kwargs": {"column": "flag", "value_set": [True]}},
        {"type": "expect_column_mean_to_be_between", "kwargs": {"column": "amount", "min_value": 0,
                                                                "max_value": 100}},
        {"type": "expect_column_to_exist", "kwargs": {"column": "not-there"}},
    ]
    only_standard = copy.deepcopy(learned)
    only_standard["expectations"].insert(0, {"type": "expect_column_values_to_be_between",
                                             "kwargs": {"column": "usage", "min_value": 0, "max_value": 60,
                                                        "mostly": 0.9}})
    return {"learned": learned, "edited": edited, "learned+reordered": only_standard}


def same(a: Any, b: Any) -> bool:
    """Equal, printed the same (5 is not 5.0 in the table), NaN and NaT equal to themselves."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if str(a) != str(b):
        return False
    if a is pd.NA and b is pd.NA:  # NA == NA is NA, not a bool
        return True
    try:
        return bool(a == b) or bool(pd.isna(a) and pd.isna(b))
    except (TypeError, ValueError):
        return False


def check() -> list[str]:
    import great_expectations as gx

    from prefect_mlops.tasks import _gx_arrow as engine
    from prefect_mlops.tasks import _gx_rules as rules
    from prefect_mlops.tasks import validate as v

    problems, pushed_count, cases, streamed_count, batched_count, native_count = [], 0, 0, 0, 0, 0
    base = reference()
    folder = Path(tempfile.mkdtemp(prefix="gx-equivalence-"))
    for suite_name, suite in suites(base).items():
        expectations = gx.ExpectationSuite(**{**suite, "name": "suite"}).expectations
        for case, frame in broken(base).items():
            cases += 1
            path = folder / f"{case}.parquet"
            if case.endswith("no-pandas-metadata"):
                table = pa.Table.from_pandas(frame, preserve_index=False)
                pq.write_table(table.replace_schema_metadata(None), path)
            else:
                frame.to_parquet(path, index=False)
            table = pq.read_table(path)
            read_back = pd.read_parquet(path)
            expected = v.run_suite(read_back, suite)
            got = v.run_suite_on_table(table, suite, load_frame=lambda p=path: pd.read_parquet(p))
            if [o.model_dump() for o in got] != [o.model_dump() for o in expected]:
                diff = [(g.model_dump(), e.model_dump()) for g, e in zip(got, expected, strict=False)
                        if g != e][:3]
                problems.append(f"{suite_name}/{case}: tables differ ({len(got)} vs {len(expected)} rows): {diff}")
                continue
            # The result dicts of the pushed-down expectations, against GX's for the same expectation.
            gx_results = engine.gx_validate(read_back, suite)
            streamed, by_gx = engine.run_suite_on_batches(table.to_batches(max_chunksize=700), suite,
                                                          load_frame=lambda p=path: pd.read_parquet(p))
            streamed_count += len(streamed) - len(by_gx)
            if len(streamed) != len(gx_results) or any(
                    m.success != t.success or m.expectation_config.type != t.expectation_config.type
                    or not same(_plain(m.result), _plain(t.result))
                    for m, t in zip(streamed, gx_results, strict=False)):
                diff = [(m.expectation_config.type, m.result, t.result) for m, t in
                        zip(streamed, gx_results, strict=False) if not same(_plain(m.result), _plain(t.result))][:2]
                problems.append(f"{suite_name}/{case}: streamed results differ from GX's: {diff}")
            # GX batch by batch for what is not pushed down (as above GX_FRAME_ROWS), the frame for aggregates.
            batched, on_frame = engine.run_suite_on_batches(
                table.to_batches(max_chunksize=700), suite, load_frame=lambda p=path: pd.read_parquet(p),
                frame_rows=1_000, again=lambda columns, t=table: t.select(columns).to_batches(max_chunksize=1_500))
            batched_count += len(batched) - len(on_frame)
            if len(batched) != len(gx_results) or any(
                    m.success != t.success or m.expectation_config.type != t.expectation_config.type
                    or not same(_plain(m.result), _plain(t.result))
                    for m, t in zip(batched, gx_results, strict=False)):
                diff = [(m.expectation_config.type, m.expectation_config.kwargs.get("column"), m.result, t.result)
                        for m, t in zip(batched, gx_results, strict=False)
                        if not same(_plain(m.result), _plain(t.result))][:2]
                problems.append(f"{suite_name}/{case}: batch-by-batch results differ from GX's: {diff}")
            facts = engine._ArrowFacts(table)
            by_config = {}
            for result in gx_results:
                kwargs = {k: v for k, v in result.expectation_config.kwargs.items() if k != "batch_id"}
                key = json.dumps([result.expectation_config.type, kwargs],
                                 sort_keys=True, default=str)
                by_config.setdefault(key, result)
            # GX's rules without GX (`_gx_rules`), expectation by expectation, on the whole table and on batches.
            subset = {**suite, "expectations": [e for e in suite["expectations"]
                                                if rules.expectations({"expectations": [e]})]}
            native = rules.expectations(subset) or []
            twins = gx.ExpectationSuite(**{**subset, "name": "suite"}).expectations if native else []
            streamed_native = engine._Streamed(native)
            for batch in table.to_batches(max_chunksize=700):
                streamed_native.add(batch)
            by_stream = streamed_native.finish()
            for i, (expectation, twin) in enumerate(zip(native, twins, strict=True)):
                key = json.dumps([twin.configuration.type, twin.configuration.kwargs], sort_keys=True, default=str)
                theirs = by_config.get(key)
                for how, mine in (("whole", engine._pushed_down(expectation, facts)), ("batches", by_stream.get(i))):
                    if mine is None:
                        continue
                    native_count += 1
                    if theirs is None or mine.success != theirs.success or not same(
                            _plain(mine.result), _plain(theirs.result)):
                        problems.append(f"{suite_name}/{case}: {key}: GX's rules without GX ({how}) {mine.success} "
                                        f"{mine.result} vs GX {theirs and theirs.success} {theirs and theirs.result}")
            for expectation in expectations:
                mine = engine._pushed_down(expectation, facts)
                if mine is None:
                    continue
                pushed_count += 1
                key = json.dumps([expectation.configuration.type, expectation.configuration.kwargs],
                                 sort_keys=True, default=str)
                theirs = by_config.get(key)
                if theirs is None or mine.success != theirs.success or not same(
                        _plain(mine.result), _plain(theirs.result)):
                    problems.append(f"{suite_name}/{case}: {key}: pushed-down {mine.success} {mine.result} vs "
                                    f"GX {theirs and theirs.success} {theirs and theirs.result}")
    print(f"{cases} suite x data cases, {pushed_count} pushed-down, {streamed_count} streamed pushed-down and "
          f"{batched_count} streamed pushed-down or GX-batch-by-batch results and {native_count} results of GX's "
          f"rules without GX compared with GX's: "
          f"{'all equal' if not problems else f'{len(problems)} differences'}")
    return problems


def _plain(value: Any) -> Any:
    """Numpy scalars as Python ones, so that equal values compare equal."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, pa.Scalar):
        return value.as_py()
    return value


if __name__ == "__main__":
    found = check()
    for line in found:
        print(" -", line[:2000])
    sys.exit(1 if found else 0)
