"""The Arrow push-down engine behind `validate`: GX's results for a suite, computed on an Arrow table.

For the expectation types that `learn_suite` writes (row count, column exists, type checks, not null,
between, in set, value lengths, and a timestamp column's min and max), the metrics GX would compute
on a pandas frame (row and null counts, unexpected counts, the first unexpected values and their row
numbers, the column's pandas dtype, its min and max) are computed with `pyarrow.compute`, and GX's
own expectation classes turn them into GX `ExpectationValidationResult`s: GX decides success
(`mostly`) and formats the result, so the table is the one GX gives. Every Arrow type has its missing
count and dtype pushed down; numbers, strings, booleans and timestamps (with or without a zone) the
rest. Any other expectation runs in GX: on the pandas frame of the whole data, or, when that would be a
sample (`run_suite_on_batches`'s `frame_rows`), batch by batch for per-row (map) expectations, their
counts summed. If GX reports an error on the whole frame, the whole suite is re-run in GX, so error
rows look exactly as GX orders them. `bench/gx_equivalence.py` compares the engines row for row.
"""
from __future__ import annotations

import datetime
import os
from typing import TYPE_CHECKING, Any

from prefect_mlops.errors import ConfigError
from prefect_mlops.tasks import _gx_rules

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    import pandas as pd
    import pyarrow as pa


def gx_validate(frame: pd.DataFrame, suite_json: dict[str, Any]) -> list[Any]:
    """GX's `ExpectationValidationResult`s of a suite on a pandas frame, in GX's order."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    batch = (
        context.data_sources.add_pandas("prefect-mlops")
        .add_dataframe_asset("frame")
        .add_batch_definition_whole_dataframe("whole")
    )
    try:
        suite = context.suites.add(gx.ExpectationSuite(**{**suite_json, "name": "suite"}))
    except Exception as exc:  # GX raises several types for a malformed suite
        raise ConfigError(f"suite {suite_json.get('name')!r} is not a valid GX suite: {exc}") from exc
    result = gx.ValidationDefinition(data=batch, suite=suite, name="validation").run(
        batch_parameters={"dataframe": frame}
    )
    return list(result.results)


def suite_expectations(suite_json: dict[str, Any]) -> list[Any]:
    """GX's expectation objects of a suite (GX JSON); `ConfigError` when GX cannot read it."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx

    try:
        return gx.ExpectationSuite(**{**suite_json, "name": "suite"}).expectations
    except Exception as exc:  # GX raises several types for a malformed suite
        raise ConfigError(f"suite {suite_json.get('name')!r} is not a valid GX suite: {exc}") from exc


def run_suite_on_table(
    table: pa.Table,
    suite_json: dict[str, Any],
    *,
    load_frame: Callable[[], pd.DataFrame] | None = None,
) -> list[Any]:
    """GX's results of a suite on an Arrow table: the same, in the same order, as `gx_validate(table.to_pandas())`.

    The standard expectations' metrics are computed with pyarrow and judged by GX's rules (without
    GX when the whole suite allows, `_judged_by`); the rest run in GX on the pandas frame (`load_frame()`, else
    `table.to_pandas()`), which is only built when some expectation needs it.
    """
    native = _gx_rules.expectations(suite_json)
    measured = native or suite_expectations(suite_json)
    try:
        facts = _ArrowFacts(table)
        found: list[dict[str, Any] | None] | None = [_metrics(e, facts) for e in measured]
    except Exception:  # anything unforeseen in the fast path: GX does it all, as before
        found = None

    def judge(expectations: list[Any]) -> dict[int, Any]:
        return {i: _judged(e, m, facts) for i, (e, m) in enumerate(zip(expectations, found, strict=True))
                if m is not None}

    expectations, pushed = _judged_by(native, suite_json, judge if found is not None else None)
    return _assemble(expectations, suite_json, pushed,
                     load_frame if load_frame is not None else table.to_pandas)[0]


def run_suite_on_batches(
    batches: Iterable[pa.RecordBatch],
    suite_json: dict[str, Any],
    *,
    load_frame: Callable[[], pd.DataFrame],
    frame_rows: int | None = None,
    again: Callable[[list[str]], Iterable[pa.RecordBatch]] | None = None,
    check_rest: Callable[[list[dict[str, Any]]], None] | None = None,
) -> tuple[list[Any], set[int]]:
    """GX's results of a suite on a stream of record batches, and the positions of those GX computed on a frame.

    The push-down metrics (row and null counts, unexpected counts, the first unexpected values
    and their row numbers, a timestamp column's min and max) are summed, concatenated or reduced
    batch by batch, so memory does not grow with the rows, and GX's expectation classes judge the
    totals: the same results as `run_suite_on_table` on the whole table. Expectations that cannot be
    pushed down run in GX on `load_frame()`, built only when one needs it. When the data has more
    than `frame_rows` rows (so `load_frame()` would be a sample) and `again(columns)` streams the
    data a second time, GX's per-row (map) expectations run in GX batch by batch instead, their
    counts summed: every row is judged. `check_rest` sees the expectations left for the frame
    before it is built (and may refuse them).
    """
    native = _gx_rules.expectations(suite_json)
    streamed = _Streamed(native or suite_expectations(suite_json))
    judge: Callable[[list[Any]], dict[int, Any]] | None = streamed.finish
    try:
        for batch in batches:
            streamed.add(batch)
    except Exception:  # anything unforeseen in the fast path: GX does it all, as before
        judge = None
    expectations, pushed = _judged_by(native, suite_json, judge)
    left = [i for i in range(len(expectations)) if pushed.get(i) is None]
    if pushed and left and again is not None and frame_rows is not None and streamed.rows > frame_rows:
        pushed.update(_per_batch(expectations, suite_json, left, again, streamed))
    return _assemble(expectations, suite_json, pushed, load_frame, check_rest,
                     streamed.rows if streamed.schema is not None else None)


_TYPE_CHECKS = ("expect_column_values_to_be_in_type_list", "expect_column_values_to_be_of_type")


def _judged_by(native: list[Any] | None, suite_json: dict[str, Any],
               judge: Callable[[list[Any]], dict[int, Any]] | None) -> tuple[list[Any], dict[int, Any]]:
    """The expectations and their pushed-down results: judged by GX's rules without GX (`native`) when every
    expectation has its metrics and is judged that way; otherwise GX reads the suite and judges every
    expectation from the same metrics. `judge(expectations)`: the results from the metrics (None: there are no
    metrics, GX computes everything)."""
    if native and judge is not None:
        try:
            pushed = judge(native)
        except Exception:  # a rule that cannot judge these values: GX judges them
            pushed = {}
        if all(pushed.get(i) is not None for i in range(len(native))):
            return native, pushed
    expectations = suite_expectations(suite_json)
    try:
        return expectations, judge(expectations) if judge is not None else {}
    except Exception:  # anything unforeseen in the fast path: GX does it all, as before
        return expectations, {}


def _per_batch(expectations: list[Any], suite_json: dict[str, Any], indices: list[int],
               again: Callable[[list[str]], Iterable[pa.RecordBatch]], streamed: _Streamed) -> dict[int, Any]:
    """GX's results of the column map expectations among `indices`, run by GX batch by batch on frames of the
    whole data's dtypes, their counts summed and the first unexpected values kept: every row judged, in
    memory of one batch. Expectations GX answers from the dtype alone (a type list on a non-object column)
    give one answer whatever the batch. Others, and any GX reports an error for, are left out."""
    from great_expectations.expectations.expectation import ColumnMapExpectation

    schema = streamed.schema
    maps = [i for i in indices if isinstance(expectations[i], ColumnMapExpectation)
            and set(expectations[i].configuration.kwargs) <= {"column", "mostly", "value_set", "type_list", "type_",
                                                               "min_value", "max_value", "strict_min", "strict_max",
                                                               "regex", "regex_list", "match_on", "batch_id"}
            and expectations[i].configuration.kwargs.get("column") in schema.names]
    if not maps:
        return {}
    dtypes = _whole_dtypes(schema, streamed.dtypes or {}, streamed.nulls)
    columns = list(dict.fromkeys(expectations[i].configuration.kwargs["column"] for i in maps))
    sub = {**suite_json, "expectations": [suite_json["expectations"][i] for i in maps]}
    order = [maps[j] for j in _gx_order([expectations[i] for i in maps], range(len(maps)))]
    parts: dict[int, list[dict[str, Any]] | None] = {i: [] for i in maps}
    offset = 0
    for batch in again(columns):
        frame = batch.to_pandas()
        for name in frame.columns:
            wanted = dtypes.get(name)
            if wanted is not None and frame[name].dtype != wanted:
                frame[name] = frame[name].astype(wanted)
        seen = dict(frame.dtypes.items())
        frame.index = range(offset, offset + len(frame))  # GX reports these as the unexpected rows' numbers
        offset += len(frame)
        results = gx_validate(frame, sub)
        if len(results) != len(order):
            return {}
        for i, result in zip(order, results, strict=True):
            if parts[i] is None:
                continue
            if _raised(result) or result.expectation_config.type != expectations[i].configuration.type:
                parts[i] = None
            else:
                parts[i].append({"success": result.success, **result.result})
    out = {}
    for i, found in parts.items():
        if found:
            column = expectations[i].configuration.kwargs["column"]
            out[i] = _summed(expectations[i], found, seen[column])
    return {i: r for i, r in out.items() if r is not None}


def _whole_dtypes(schema: pa.Schema, dtypes: dict[str, Any], nulls: dict[str, int]) -> dict[str, Any]:
    """The numpy dtypes `read_frame` gives the whole data: integers with a null anywhere become floats,
    booleans objects. Extension dtypes (categories, time zones) are left as each batch reads them."""
    import numpy as np

    out = {}
    for name in schema.names:
        dtype = dtypes.get(name)
        if not isinstance(dtype, np.dtype):
            continue
        if nulls.get(name) and dtype.kind in "iu":
            dtype = np.dtype("float64")
        elif nulls.get(name) and dtype.kind == "b":
            dtype = np.dtype(object)
        out[name] = dtype
    return out


def _summed(expectation: Any, found: list[dict[str, Any]], dtype: Any) -> Any:
    """One GX result from the batches' results of a column map expectation (None when they do not add up)."""
    if expectation.configuration.type in _TYPE_CHECKS and all("unexpected_count" not in r for r in found):
        # Judged from the column's dtype, the same in every batch.
        first = {k: v for k, v in found[0].items() if k != "success"}
        if any({k: v for k, v in r.items() if k != "success"} != first for r in found):
            return None
        return _judge_as(expectation, found[0]["success"], first)
    if any("unexpected_count" not in r or "element_count" not in r for r in found):
        return None
    metric = expectation.map_metric
    values = [v for r in found for v in r.get("partial_unexpected_list") or []][:_PARTIAL]
    rows = [v for r in found for v in r.get("partial_unexpected_index_list") or []][:_PARTIAL]
    metrics = {"table.row_count": sum(r["element_count"] for r in found),
               "column_values.nonnull.unexpected_count": sum(r.get("missing_count") or 0 for r in found),
               **_map(metric, sum(r["unexpected_count"] for r in found), values, rows)}
    if expectation.configuration.type in _TYPE_CHECKS:  # an object column: GX checks each value's type
        metrics["table.column_types"] = [{"name": expectation.configuration.kwargs["column"], "type": dtype}]
        metrics[_ENGINE] = True
    return _judge(expectation, {k: v for k, v in metrics.items() if k != _ENGINE}, engine=_engine(metrics))


def _judge_as(expectation: Any, success: bool, result: dict[str, Any]) -> Any:
    from great_expectations.core.expectation_validation_result import ExpectationValidationResult

    return ExpectationValidationResult(success=success, result=result,
                                       expectation_config=expectation.configuration)


def _assemble(expectations: list[Any], suite_json: dict[str, Any], pushed: dict[int, Any],
              load_frame: Callable[[], pd.DataFrame],
              check_rest: Callable[[list[dict[str, Any]]], None] | None = None,
              rows: int | None = None) -> tuple[list[Any], set[int]]:
    """The pushed-down results and GX's for the rest, in GX's order; and the positions GX computed.
    `rows`: the data's rows, when known (a frame with fewer is a sample)."""
    rest = [i for i in range(len(expectations)) if pushed.get(i) is None]
    if not rest:
        by_index = pushed
    else:
        if check_rest is not None:
            check_rest([suite_json["expectations"][i] for i in rest])
        frame = load_frame()
        rest_json = {**suite_json, "expectations": [suite_json["expectations"][i] for i in rest]}
        rest_results = gx_validate(frame, rest_json)
        order = _gx_order(expectations, rest)
        if len(rest_results) != len(rest) or any(_raised(r) for r in rest_results) or any(
                r.expectation_config.type != expectations[i].configuration.type
                or r.expectation_config.kwargs.get("column") != expectations[i].configuration.kwargs.get("column")
                for i, r in zip(order, rest_results, strict=True)):
            if rows is not None and len(frame) < rows:
                # A sample: the whole suite must not be judged on it; each of GX's results goes to its own
                # expectation, wherever GX listed it.
                by_index = {**pushed, **_matched(expectations, rest, rest_results, suite_json)}
            else:
                # GX lists errors first: let it validate and order the whole suite.
                results = gx_validate(frame, suite_json)
                return results, set(range(len(results)))
        else:
            by_index = {**pushed, **dict(zip(order, rest_results, strict=True))}
    ordered = _gx_order(expectations, range(len(expectations)))
    return [by_index[i] for i in ordered], {n for n, i in enumerate(ordered) if i in rest}


def _matched(expectations: list[Any], rest: list[int], results: list[Any],
             suite_json: dict[str, Any]) -> dict[int, Any]:
    """GX's results for the expectations at `rest`, matched by type and column."""
    out: dict[int, Any] = {}
    for result in results:
        key = (result.expectation_config.type, result.expectation_config.kwargs.get("column"))
        i = next((i for i in rest if i not in out and (expectations[i].configuration.type,
                  expectations[i].configuration.kwargs.get("column")) == key), None)
        if i is not None:
            out[i] = result
    if len(out) != len(rest):
        missing = [expectations[i].configuration.type for i in rest if i not in out]
        raise ConfigError(f"suite {suite_json.get('name')!r}: GX gave no result for {missing} on its sample of "
                          "the data; validate with engine=\"gx\" (PREFECT_MLOPS_GX_PUSHDOWN=0) to run the whole suite "
                          "in GX")
    return out


def _gx_order(expectations: list[Any], indices: Any) -> list[int]:
    """GX validates expectations grouped by column, columns in order of first appearance."""
    groups: dict[str, list[int]] = {}
    for i in indices:
        column = expectations[i].configuration.kwargs.get("column")
        groups.setdefault(column if isinstance(column, str) else "_nocolumn", []).append(i)
    return [i for group in groups.values() for i in group]


def _raised(result: Any) -> bool:
    info = result.exception_info or {}
    return bool(info.get("raised_exception")) or any(
        isinstance(v, dict) and v.get("raised_exception") for v in info.values())


_MAP_KWARGS = {"column", "mostly"}
_BOUNDS = {"min_value", "max_value", "strict_min", "strict_max"}
_PUSHABLE: dict[str, set[str]] = {
    "expect_table_row_count_to_be_between": _BOUNDS,
    "expect_column_to_exist": {"column"},
    "expect_column_values_to_be_in_type_list": _MAP_KWARGS | {"type_list"},
    "expect_column_values_to_be_of_type": _MAP_KWARGS | {"type_"},
    "expect_column_values_to_not_be_null": _MAP_KWARGS,
    "expect_column_values_to_be_between": _MAP_KWARGS | _BOUNDS,
    "expect_column_values_to_be_in_set": _MAP_KWARGS | {"value_set"},
    "expect_column_value_lengths_to_be_between": _MAP_KWARGS | _BOUNDS,
    "expect_column_min_to_be_between": {"column"} | _BOUNDS,
    "expect_column_max_to_be_between": {"column"} | _BOUNDS,
}
_PARTIAL = 20  # GX's partial_unexpected_count in the SUMMARY result format


def _pandas_dtypes(schema: pa.Schema) -> dict[str, Any] | None:
    """The dtypes `read_frame` gives, from pandas' own mapping of the schema; None when not handled here.

    The columns whose nulls change the dtype (integers become floats, booleans objects) are
    corrected by `_kind` once the nulls are counted.
    """
    import pandas as pd

    names = list(schema.names)
    empty = schema.empty_table().to_pandas()
    if len(set(names)) != len(names) or list(empty.columns) != names or pd.get_option("future.infer_string"):
        return None
    return dict(empty.dtypes.items())


def _kind(arrow_type: Any, dtype: Any, nulls: int) -> str | None:
    """'float', 'int', 'string', 'bool' or 'datetime' for the types handled here; None otherwise."""
    import numpy as np
    import pyarrow as pa

    if pa.types.is_float64(arrow_type) and dtype == np.float64:
        return "float"
    if pa.types.is_int64(arrow_type) and dtype == np.int64:
        return "float" if nulls else "int"
    if (pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type)) and isinstance(dtype, np.dtype) \
            and dtype.kind == "O":
        return "string"
    if pa.types.is_boolean(arrow_type) and dtype == np.bool_ and not nulls:
        return "bool"
    if pa.types.is_timestamp(arrow_type) and str(dtype).startswith("datetime64["):  # with or without a zone
        return "datetime"
    if dtype is not None and not pa.types.is_nested(arrow_type):
        return "other"  # any other type: its missing count and its dtype are pushed down, GX judges the rest
    return None


def _final_dtype(kind: str | None, dtype: Any, nulls: int = 0) -> Any:
    """The whole data's pandas dtype: integers with a null read as float64, booleans with a null as object."""
    import numpy as np

    if kind == "float":
        return np.dtype("float64")
    if kind == "other" and nulls and isinstance(dtype, np.dtype) and dtype.kind in "iub":
        return np.dtype("float64") if dtype.kind in "iu" else np.dtype(object)
    return dtype


class _ArrowFacts:
    """What GX's pandas metrics would see of each column, computed from the Arrow table once.

    `offset`: the table's first row in the data (a record batch of a stream), added to the row
    numbers; `dtypes`: the data's pandas dtypes, when already known.
    """

    def __init__(self, table: pa.Table, *, offset: int = 0, dtypes: dict[str, Any] | None = None) -> None:
        self.table = table
        self.rows = table.num_rows
        self.offset = offset
        self.columns = list(table.column_names)
        self._dtypes = dtypes if dtypes is not None else (_pandas_dtypes(table.schema) or {})
        self.supported = bool(self._dtypes) or not self.columns
        self._missing: dict[str, Any] = {}

    def kind(self, column: str) -> str | None:
        """'float', 'int', 'string', 'bool' or 'datetime' for the types handled here; None otherwise."""
        if not self.supported or column not in self._dtypes:
            return None
        return _kind(self.table.schema.field(column).type, self._dtypes[column], self.table.column(column).null_count)

    def dtype(self, column: str) -> Any:
        return _final_dtype(self.kind(column), self._dtypes[column], self.table.column(column).null_count)

    def _floating(self, column: str) -> bool:
        """pandas reads NaN as missing in float columns (any width)."""
        import pyarrow as pa

        return self.kind(column) == "float" or pa.types.is_floating(self.table.schema.field(column).type)

    def missing(self, column: str) -> Any:
        """Boolean mask of the values pandas reads as missing (null, and NaN in float columns)."""
        import pyarrow.compute as pc

        if column not in self._missing:
            values = self.table.column(column)
            self._missing[column] = pc.is_null(values, nan_is_null=self._floating(column))
        return self._missing[column]

    def missing_count(self, column: str) -> int:
        import pyarrow.compute as pc

        if not self._floating(column):
            return self.table.column(column).null_count
        return int(pc.sum(self.missing(column)).as_py() or 0)

    def first(self, column: str, mask: Any) -> tuple[Any, list[int]]:
        """The first unexpected values (Arrow; `_boxed` boxes them as pandas would) and their row numbers."""
        import pyarrow as pa
        import pyarrow.compute as pc

        positions = pc.indices_nonzero(mask.combine_chunks() if isinstance(mask, pa.ChunkedArray) else mask)
        positions = positions.slice(0, _PARTIAL)
        values = self.table.column(column).take(positions)
        values = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
        return values, [self.offset + int(p) for p in positions.to_pylist()]


def _boxed(metrics: dict[str, Any], dtype: Any) -> dict[str, Any]:
    """The metrics as GX's pandas engine gives them: unexpected values boxed as iterating the pandas
    column (of `dtype`) boxes them, a timestamp's min or max as a pandas `Timestamp` (or NaT)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    out = dict(metrics)
    for key, value in metrics.items():
        if key.endswith(".unexpected_values") and isinstance(value, pa.Array):
            values = value.to_pandas()
            if values.dtype != dtype:
                values = values.astype(dtype)
            out[key] = list(values)
        elif key in ("column.min", "column.max") and isinstance(value, pa.Array):
            extreme = pc.min_max(value)["min" if key == "column.min" else "max"]
            out[key] = pa.array([extreme], type=value.type).to_pandas().iloc[0]  # keeps nanoseconds; null: NaT
    return out


def _merge(total: dict[str, Any] | None, part: dict[str, Any]) -> dict[str, Any]:
    """Two batches' metrics of one expectation as one: counts add, the first unexpected values and
    rows concatenate (the first `_PARTIAL` kept), a min or max keeps each batch's for the end."""
    import pyarrow as pa

    if total is None:
        return dict(part)
    out = dict(total)
    for key, value in part.items():
        if key == "table.row_count" or key.endswith(".unexpected_count"):
            out[key] = total[key] + value
        elif key.endswith(".unexpected_values"):
            out[key] = pa.concat_arrays([total[key], value]).slice(0, _PARTIAL) if len(total[key]) < _PARTIAL \
                else total[key]
        elif key.endswith(".unexpected_index_list"):
            out[key] = (total[key] + value)[:_PARTIAL]
        elif key in ("column.min", "column.max"):
            out[key] = pa.concat_arrays([total[key], value])
    return out


class _Streamed:
    """The push-down metrics of a suite's expectations, merged over the record batches of a stream."""

    def __init__(self, expectations: list[Any]) -> None:
        self.expectations = expectations
        self.metrics: dict[int, dict[str, Any] | None] = {}
        self.dtypes: dict[str, Any] | None = None
        self.schema: Any = None
        self.nulls: dict[str, int] = {}
        self.rows = 0

    def add(self, batch: pa.RecordBatch) -> None:
        import pyarrow as pa

        if self.schema is None:
            self.schema, self.dtypes = batch.schema, _pandas_dtypes(batch.schema) or {}
        facts = _ArrowFacts(pa.Table.from_batches([batch]), offset=self.rows, dtypes=self.dtypes)
        for column in facts.columns:
            self.nulls[column] = self.nulls.get(column, 0) + batch.column(column).null_count
        for i, expectation in enumerate(self.expectations):
            if i in self.metrics and self.metrics[i] is None:
                continue  # GX computes it
            part = _metrics(expectation, facts)
            self.metrics[i] = None if part is None else _merge(self.metrics.get(i), part)
        self.rows += batch.num_rows

    def finish(self, expectations: list[Any] | None = None) -> dict[int, Any]:
        """GX's results for the expectations pushed down in every batch (None for the others), judged as
        `expectations` (the ones the metrics were computed for, or GX's of the same suite) judge them."""
        expectations = self.expectations if expectations is None else expectations
        if self.schema is None:
            return {}  # no batch: GX sees the (empty) frame itself
        out: dict[int, Any] = {}
        for i, metrics in self.metrics.items():
            if metrics is None:
                continue
            expectation = expectations[i]
            column = expectation.configuration.kwargs.get("column")
            metrics = {k: v for k, v in metrics.items() if k != _ENGINE}
            dtype = None
            if isinstance(column, str) and column in self.schema.names \
                    and expectation.configuration.type != "expect_column_to_exist":
                kind = _kind(self.schema.field(column).type, self.dtypes.get(column), self.nulls[column]) \
                    if self.dtypes else None
                if kind is None:
                    continue  # e.g. booleans that have nulls in some batch: GX judges the column
                dtype = _final_dtype(kind, self.dtypes[column], self.nulls[column])
                if (kind == "other" or expectation.configuration.type == "expect_column_values_to_be_of_type") \
                        and "table.column_types" in metrics and _per_value(dtype):
                    continue  # e.g. booleans with a null in another batch: GX checks each value's type
                if "table.column_types" in metrics:
                    metrics["table.column_types"] = [{"name": column, "type": dtype}]
            out[i] = _judge(expectation, _boxed(metrics, dtype), engine=_engine(self.metrics[i]))
        return out


_ENGINE = "_engine"  # a metrics key saying GX's pandas engine must judge (type checks read its dtypes)


def _engine(metrics: dict[str, Any] | None) -> bool:
    """Whether GX's pandas engine must judge (GX's type checks read its dtypes)."""
    return bool(metrics and metrics.get(_ENGINE))


def _pushed_down(expectation: Any, facts: _ArrowFacts) -> Any:
    """GX's result for one expectation from Arrow metrics, or None when GX must compute it itself."""
    metrics = _metrics(expectation, facts)
    return None if metrics is None else _judged(expectation, metrics, facts)


def _judged(expectation: Any, metrics: dict[str, Any], facts: _ArrowFacts) -> Any:
    """GX's result for one expectation from its Arrow metrics on a whole table."""
    column = expectation.configuration.kwargs.get("column")
    dtype = facts.dtype(column) if isinstance(column, str) and facts.kind(column) else None
    return _judge(expectation, _boxed({k: v for k, v in metrics.items() if k != _ENGINE}, dtype),
                  engine=_engine(metrics))


def _metrics(expectation: Any, facts: _ArrowFacts) -> dict[str, Any] | None:
    """The metrics GX needs to judge one expectation, from Arrow, or None when GX must compute it itself."""
    config = expectation.configuration
    kwargs, kind = dict(config.kwargs), config.type
    allowed = _PUSHABLE.get(kind)
    if allowed is None or set(kwargs) - allowed or any(isinstance(v, dict) for v in kwargs.values()):
        return None  # another expectation type, suite parameters, row conditions, result formats...
    if kind == "expect_table_row_count_to_be_between":
        return {"table.row_count": facts.rows}
    column = kwargs.get("column")
    if kind == "expect_column_to_exist":
        return {"table.columns": facts.columns} if isinstance(column, str) else None
    column_kind = facts.kind(column) if isinstance(column, str) else None
    if column_kind is None:
        return None
    return _COLUMN_RULES[kind](expectation, facts, column, column_kind, kwargs)


def _not_null(expectation: Any, facts: _ArrowFacts, column: str, _kind: str, _kwargs: dict[str, Any]) -> Any:
    missing = facts.missing(column)
    count = facts.missing_count(column)
    values, rows = facts.first(column, missing) if count else (_none(facts, column), [])
    return {"table.row_count": facts.rows, **_map("column_values.nonnull", count, values, rows)}


def _type_list(expectation: Any, facts: _ArrowFacts, column: str, kind: str, kwargs: dict[str, Any]) -> Any:
    if kind == "other" and _per_value(facts.dtype(column)):
        return None  # object values (dates, booleans with nulls...): GX checks each value's type
    metrics: dict[str, Any] = {"table.column_types": [{"name": column, "type": facts.dtype(column)}], _ENGINE: True}
    if kind == "string":  # object dtype: GX checks each value's Python type
        types = kwargs.get("type_list")
        if not isinstance(types, list) or not any(str(t).lower() in ("str", "string_types") for t in types):
            return None  # the values are all str: other type lists need GX's own per-value check
        metrics.update(_column_map(facts, column, "column_values.in_type_list", None))
    return metrics


def _of_type(expectation: Any, facts: _ArrowFacts, column: str, kind: str, kwargs: dict[str, Any]) -> Any:
    """A column's dtype against `type_`: GX reads the dtype, except for object columns (each value's type)."""
    if _per_value(facts.dtype(column)):
        return None
    return {"table.column_types": [{"name": column, "type": facts.dtype(column)}], _ENGINE: True}


def _per_value(dtype: Any) -> bool:
    """Whether GX checks the type of each value (an object column) rather than the column's dtype."""
    import numpy as np

    return isinstance(dtype, np.dtype) and dtype.kind == "O"


def _outside(values: Any, kwargs: dict[str, Any], *, kinds: type | tuple[type, ...]) -> Any:
    """The mask of `values` outside [min_value, max_value] (strict as asked), or None when GX must judge."""
    import pyarrow.compute as pc

    low, high = kwargs.get("min_value"), kwargs.get("max_value")
    if not all(v is None or (isinstance(v, kinds) and not isinstance(v, bool)) for v in (low, high)) \
            or (low is None and high is None) or (low is not None and high is not None and low > high):
        return None
    outside = None
    if low is not None:
        outside = (pc.less_equal if kwargs.get("strict_min") else pc.less)(values, low)
    if high is not None:
        above = (pc.greater_equal if kwargs.get("strict_max") else pc.greater)(values, high)
        outside = above if outside is None else pc.or_(outside, above)
    return outside


def _between(expectation: Any, facts: _ArrowFacts, column: str, kind: str, kwargs: dict[str, Any]) -> Any:
    if kind not in ("int", "float"):
        return None
    outside = _outside(facts.table.column(column), kwargs, kinds=(int, float))
    if outside is None:
        return None
    return _column_map(facts, column, "column_values.between", outside)


def _lengths(expectation: Any, facts: _ArrowFacts, column: str, kind: str, kwargs: dict[str, Any]) -> Any:
    import pyarrow.compute as pc

    if kind != "string":  # GX measures `str(value)`: only str values have the length Arrow counts
        return None
    outside = _outside(pc.utf8_length(facts.table.column(column)), kwargs, kinds=int)
    if outside is None:
        return None
    return _column_map(facts, column, "column_values.value_length.between", outside)


def _in_set(expectation: Any, facts: _ArrowFacts, column: str, kind: str, kwargs: dict[str, Any]) -> Any:
    import pyarrow as pa
    import pyarrow.compute as pc

    value_set = kwargs.get("value_set")
    wanted = {"string": str, "bool": bool}.get(kind)
    if wanted is None or not isinstance(value_set, list) or not value_set \
            or not all(type(v) is wanted for v in value_set):
        return None
    values = facts.table.column(column)
    inside = pc.is_in(values, value_set=pa.array(value_set, type=values.type))
    return _column_map(facts, column, "column_values.in_set", pc.invert(inside))


def _extreme(expectation: Any, facts: _ArrowFacts, column: str, kind: str, kwargs: dict[str, Any]) -> Any:
    """A timestamp column's min or max, as the pandas `Timestamp` (or NaT) GX's `column.min/max` gives."""
    import pyarrow as pa
    import pyarrow.compute as pc

    bounds = (kwargs.get("min_value"), kwargs.get("max_value"))
    if kind != "datetime" or bounds == (None, None) or \
            not all(v is None or isinstance(v, str | datetime.datetime) for v in bounds):
        return None  # GX reads ISO strings as datetimes; other bounds it judges itself
    metric = "column.min" if expectation.configuration.type == "expect_column_min_to_be_between" else "column.max"
    values = facts.table.column(column)
    extreme = pc.min_max(values)["min" if metric == "column.min" else "max"]
    return {metric: pa.array([extreme], type=values.type)}  # `_boxed` makes it GX's Timestamp


_COLUMN_RULES: dict[str, Callable[..., Any]] = {
    "expect_column_values_to_not_be_null": _not_null,
    "expect_column_values_to_be_in_type_list": _type_list,
    "expect_column_values_to_be_of_type": _of_type,
    "expect_column_values_to_be_between": _between,
    "expect_column_value_lengths_to_be_between": _lengths,
    "expect_column_values_to_be_in_set": _in_set,
    "expect_column_min_to_be_between": _extreme,
    "expect_column_max_to_be_between": _extreme,
}


def _column_map(facts: _ArrowFacts, column: str, metric: str, unexpected: Any) -> dict[str, Any]:
    """The metrics of a column map expectation: nulls are not judged, as in GX (`filter_column_isnull`)."""
    import pyarrow.compute as pc

    if unexpected is None:  # nothing unexpected among the non-null values
        count, values, rows = 0, _none(facts, column), []
    else:
        # Nulls compare as null and NaN as False; either way a missing value is not judged.
        unexpected = pc.and_kleene(pc.fill_null(unexpected, False), pc.invert(facts.missing(column)))
        count = int(pc.sum(unexpected).as_py() or 0)
        values, rows = facts.first(column, unexpected) if count else (_none(facts, column), [])
    return {"table.row_count": facts.rows, "column_values.nonnull.unexpected_count": facts.missing_count(column),
            **_map(metric, count, values, rows)}


def _none(facts: _ArrowFacts, column: str) -> Any:
    """No values, typed like the column (so batches' values concatenate)."""
    import pyarrow as pa

    return pa.array([], type=facts.table.schema.field(column).type)


def _map(metric: str, count: int, values: list[Any], rows: list[int]) -> dict[str, Any]:
    return {f"{metric}.unexpected_count": count, f"{metric}.unexpected_values": values,
            f"{metric}.unexpected_index_list": rows, f"{metric}.unexpected_index_query": None}


def _judge(expectation: Any, metrics: dict[str, Any], engine: bool = False) -> Any:
    """GX's own verdict and result dict for `metrics`, as its validator would build them (GX's rules without
    GX for an expectation of `_gx_rules`)."""
    if isinstance(expectation, _gx_rules.Expectation):
        return expectation.judge(metrics)
    from great_expectations.expectations.expectation import parse_result_format

    execution_engine = None
    if engine:
        from great_expectations.execution_engine import PandasExecutionEngine

        execution_engine = PandasExecutionEngine()
    runtime = {"result_format": parse_result_format("SUMMARY")}
    return expectation._build_evr(expectation._validate(metrics=metrics, runtime_configuration=runtime,
                                                        execution_engine=execution_engine))
