"""Validate: check a dataset against a Great Expectations suite, read from JSON or learned from data.

GX 1.x has no profiler, so `learn_suite` writes one from reference data: column types,
nullability, numeric ranges with a tolerance, category sets and a row-count band. The
learned suite is saved as GX JSON beside the data so a person can review and edit it.

Validating a snapshot runs the suite in one pass over the Arrow table: for the expectation
types that `learn_suite` writes (row count, column exists, type list, not null, between,
in set), the metrics GX would compute on a pandas frame (row and null counts, unexpected
counts, the first unexpected values and their row numbers, the column's pandas dtype) are
computed with `pyarrow.compute`, and GX's own expectation classes turn them into GX
`ExpectationValidationResult`s: GX decides success (`mostly`) and formats the result, so the
table is the one GX gives. Any other expectation, a column of another type, or anything
unusual runs in GX on the pandas frame as before; if GX reports an error, the whole suite is
re-run in GX, so error rows look exactly as GX orders them. Set PREFECT_MLOPS_GX_PUSHDOWN=0
to run every expectation in GX (1M rows x 20 columns, one core: about 10 s against 0.5 s).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prefect import task
from prefect.artifacts import create_table_artifact
from pydantic import BaseModel, Field

from prefect_mlops.errors import ConfigError, DataValidationError
from prefect_mlops.log import run_logger
from prefect_mlops.refs import DatasetRef, artifact_key
from prefect_mlops.workspace import Workspace, read_frame, read_table

if TYPE_CHECKING:
    from collections.abc import Callable

    import pandas as pd
    import pyarrow as pa

PUSHDOWN_ENV = "PREFECT_MLOPS_GX_PUSHDOWN"
PUSHDOWN = os.environ.get(PUSHDOWN_ENV, "1").strip().lower() not in ("0", "false", "no", "off")
"""Compute the metrics of the standard expectations with pyarrow (see the module docstring)."""


class ExpectationOutcome(BaseModel):
    """One row of the validation table."""

    column: str | None = Field(description="Column checked; empty for table-level expectations.")
    expectation: str = Field(description="GX expectation type.")
    observed: str = Field(description="What was seen, in words.")
    passed: bool


class ValidationReport(BaseModel):
    """The result of validating one dataset against one suite."""

    dataset: DatasetRef
    suite_name: str
    suite_path: str
    passed: bool
    outcomes: list[ExpectationOutcome]

    @property
    def failures(self) -> list[ExpectationOutcome]:
        """The expectations that failed."""
        return [o for o in self.outcomes if not o.passed]


def learn_suite(
    frame: pd.DataFrame,
    *,
    name: str,
    range_tolerance: float = 0.5,
    max_categories: int = 50,
    row_count_band: tuple[float, float] = (0.2, 5.0),
    mostly: float = 0.99,
) -> dict[str, Any]:
    """Learn a GX expectation suite (as GX's JSON dict) from reference data.

    Numeric ranges widen by `range_tolerance` times the observed span on each side; a
    column with at most `max_categories` distinct values gets a value set.

    Example:
        ```python
        import pandas as pd
        from prefect_mlops.tasks.validate import learn_suite
        suite = learn_suite(pd.DataFrame({"x": [1.0, 2.0], "c": ["a", "b"]}), name="demo")
        assert {e["type"] for e in suite["expectations"]} >= {"expect_column_values_to_be_in_set"}
        ```
    """
    import pandas as pd

    expectations: list[dict[str, Any]] = []

    def expect(kind: str, **kwargs: Any) -> None:
        expectations.append({"type": kind, "kwargs": kwargs, "meta": {"learned": True}})

    rows = len(frame)
    expect(
        "expect_table_row_count_to_be_between",
        min_value=max(1, math.floor(rows * row_count_band[0])),
        max_value=math.ceil(rows * row_count_band[1]),
    )
    for column in frame.columns:
        series = frame[column]
        expect("expect_column_to_exist", column=column)
        expect("expect_column_values_to_be_in_type_list", column=column, type_list=_type_family(series))
        null_share = float(series.isna().mean())
        if null_share == 0:
            expect("expect_column_values_to_not_be_null", column=column)
        elif null_share < 1:
            expect("expect_column_values_to_not_be_null", column=column,
                   mostly=round(max(0.0, 1 - 2 * null_share - 0.01), 4))
        values = series.dropna()
        if values.empty:
            continue
        if pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series):
            low, high = float(values.min()), float(values.max())
            pad = range_tolerance * ((high - low) or abs(high) or 1.0)
            expect("expect_column_values_to_be_between", column=column,
                   min_value=low - pad, max_value=high + pad, mostly=mostly)
        elif not pd.api.types.is_datetime64_any_dtype(series):
            distinct = values.unique()
            if len(distinct) <= max_categories:
                expect("expect_column_values_to_be_in_set", column=column,
                       value_set=sorted(_plain(v) for v in distinct), mostly=mostly)
    return {"name": name, "expectations": expectations, "meta": {"learned_from_rows": rows}}


def validate_dataset(
    dataset: DatasetRef,
    *,
    suite_path: str | None = None,
    reference: DatasetRef | None = None,
    warn_only: bool = False,
    workspace: Workspace | None = None,
) -> ValidationReport:
    """Validate `dataset` with a GX suite and return the per-expectation table.

    The suite is read from `suite_path` when that file exists; otherwise it is learned from
    `reference` (or from `dataset` itself on a first run) and saved to `suite_path`, or to
    the workspace's `suites/` folder. Raises `DataValidationError` listing every failed
    expectation unless `warn_only`.
    """
    workspace = workspace or Workspace()
    path = Path(suite_path) if suite_path else workspace.folder("suites") / f"{dataset.name}.json"
    if path.exists():
        suite_json = _read_suite(path)
    elif suite_path and not suite_path.endswith(".json"):
        raise ConfigError(f"suite {suite_path}: expected a .json file written by GX or by learn_suite")
    else:
        learn_from = reference or dataset
        suite_json = learn_suite(read_frame(learn_from), name=dataset.name)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(suite_json, indent=2, default=str))
        os.replace(tmp, path)
    if PUSHDOWN:
        outcomes = run_suite_on_table(read_table(dataset), suite_json, load_frame=lambda: read_frame(dataset))
    else:
        outcomes = run_suite(read_frame(dataset), suite_json)
    report = ValidationReport(
        dataset=dataset, suite_name=suite_json.get("name", path.stem), suite_path=str(path),
        passed=all(o.passed for o in outcomes), outcomes=outcomes,
    )
    if not report.passed and not warn_only:
        raise DataValidationError(describe_failures(report))
    return report


def run_suite(frame: pd.DataFrame, suite_json: dict[str, Any]) -> list[ExpectationOutcome]:
    """Run a suite (GX JSON) on a frame with an ephemeral GX context."""
    return [_outcome(result) for result in _gx_validate(frame, suite_json)]


def _gx_validate(frame: pd.DataFrame, suite_json: dict[str, Any]) -> list[Any]:
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


def _outcome(result: Any) -> ExpectationOutcome:
    return ExpectationOutcome(
        column=result.expectation_config.kwargs.get("column"),
        expectation=result.expectation_config.type,
        observed=_observed(result.result, result.exception_info),
        passed=bool(result.success),
    )


def run_suite_on_table(
    table: pa.Table,
    suite_json: dict[str, Any],
    *,
    load_frame: Callable[[], pd.DataFrame] | None = None,
) -> list[ExpectationOutcome]:
    """Run a suite on an Arrow table: the same rows, in the same order, as `run_suite(table.to_pandas())`.

    The standard expectations' metrics are computed with pyarrow and judged by GX's own
    expectation classes; the rest run in GX on the pandas frame (`load_frame()`, else
    `table.to_pandas()`), which is only built when some expectation needs it.
    """
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx

    try:
        expectations = gx.ExpectationSuite(**{**suite_json, "name": "suite"}).expectations
    except Exception as exc:  # GX raises several types for a malformed suite
        raise ConfigError(f"suite {suite_json.get('name')!r} is not a valid GX suite: {exc}") from exc
    frame: pd.DataFrame | None = None

    def pandas_frame() -> pd.DataFrame:
        nonlocal frame
        if frame is None:
            frame = load_frame() if load_frame is not None else table.to_pandas()
        return frame

    try:
        facts = _ArrowFacts(table)
        pushed = {i: _pushed_down(e, facts) for i, e in enumerate(expectations)}
    except Exception:  # anything unforeseen in the fast path: GX does it all, as before
        pushed = {}
    rest = [i for i in range(len(expectations)) if pushed.get(i) is None]
    if not rest:
        by_index = pushed
    else:
        rest_json = {**suite_json, "expectations": [suite_json["expectations"][i] for i in rest]}
        rest_results = _gx_validate(pandas_frame(), rest_json)
        order = _gx_order(expectations, rest)
        if len(rest_results) != len(rest) or any(_raised(r) for r in rest_results) or any(
                r.expectation_config.type != expectations[i].configuration.type
                or r.expectation_config.kwargs.get("column") != expectations[i].configuration.kwargs.get("column")
                for i, r in zip(order, rest_results, strict=True)):
            # GX lists errors first: let it validate and order the whole suite.
            return [_outcome(r) for r in _gx_validate(pandas_frame(), suite_json)]
        by_index = {**pushed, **dict(zip(order, rest_results, strict=True))}
    return [_outcome(by_index[i]) for i in _gx_order(expectations, range(len(expectations)))]


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
_PUSHABLE: dict[str, set[str]] = {
    "expect_table_row_count_to_be_between": {"min_value", "max_value", "strict_min", "strict_max"},
    "expect_column_to_exist": {"column"},
    "expect_column_values_to_be_in_type_list": _MAP_KWARGS | {"type_list"},
    "expect_column_values_to_not_be_null": _MAP_KWARGS,
    "expect_column_values_to_be_between": _MAP_KWARGS | {"min_value", "max_value", "strict_min", "strict_max"},
    "expect_column_values_to_be_in_set": _MAP_KWARGS | {"value_set"},
}
_PARTIAL = 20  # GX's partial_unexpected_count in the SUMMARY result format


class _ArrowFacts:
    """What GX's pandas metrics would see of each column, computed from the Arrow table once."""

    def __init__(self, table: pa.Table) -> None:
        import pandas as pd

        self.table = table
        self.rows = table.num_rows
        self.columns = list(table.column_names)
        # The dtypes `read_frame` gives: pandas' own mapping of the schema, then the columns whose
        # nulls change the dtype (integers become floats, booleans objects).
        empty = table.schema.empty_table().to_pandas()
        self.supported = (len(set(self.columns)) == len(self.columns) and list(empty.columns) == self.columns
                          and not pd.get_option("future.infer_string"))
        self._dtypes = dict(empty.dtypes.items()) if self.supported else {}
        self._missing: dict[str, Any] = {}

    def kind(self, column: str) -> str | None:
        """'float', 'int', 'string', 'bool' or 'datetime' for the types handled here; None otherwise."""
        import numpy as np
        import pyarrow as pa

        if not self.supported or column not in self._dtypes:
            return None
        kind, dtype = self.table.schema.field(column).type, self._dtypes[column]
        nulls = self.table.column(column).null_count
        if pa.types.is_float64(kind) and dtype == np.float64:
            return "float"
        if pa.types.is_int64(kind) and dtype == np.int64:
            return "float" if nulls else "int"
        if (pa.types.is_string(kind) or pa.types.is_large_string(kind)) and isinstance(dtype, np.dtype) \
                and dtype.kind == "O":
            return "string"
        if pa.types.is_boolean(kind) and dtype == np.bool_ and not nulls:
            return "bool"
        if pa.types.is_timestamp(kind) and kind.tz is None and str(dtype).startswith("datetime64["):
            return "datetime"
        return None

    def dtype(self, column: str) -> Any:
        import numpy as np

        return np.dtype("float64") if self.kind(column) == "float" else self._dtypes[column]

    def missing(self, column: str) -> Any:
        """Boolean mask of the values pandas reads as missing (null, and NaN in float columns)."""
        import pyarrow.compute as pc

        if column not in self._missing:
            values = self.table.column(column)
            self._missing[column] = pc.is_null(values, nan_is_null=self.kind(column) == "float")
        return self._missing[column]

    def missing_count(self, column: str) -> int:
        import pyarrow.compute as pc

        if self.kind(column) != "float":
            return self.table.column(column).null_count
        return int(pc.sum(self.missing(column)).as_py() or 0)

    def first(self, column: str, mask: Any) -> tuple[list[Any], list[int]]:
        """The first unexpected values, boxed as iterating the pandas column boxes them, and their rows."""
        import pyarrow as pa
        import pyarrow.compute as pc

        positions = pc.indices_nonzero(mask.combine_chunks() if isinstance(mask, pa.ChunkedArray) else mask)
        positions = positions.slice(0, _PARTIAL)
        values = self.table.column(column).take(positions).to_pandas()
        if values.dtype != self.dtype(column):
            values = values.astype(self.dtype(column))
        return list(values), [int(p) for p in positions.to_pylist()]


def _pushed_down(expectation: Any, facts: _ArrowFacts) -> Any:
    """GX's result for one expectation from Arrow metrics, or None when GX must compute it itself."""
    config = expectation.configuration
    kwargs, kind = dict(config.kwargs), config.type
    allowed = _PUSHABLE.get(kind)
    if allowed is None or set(kwargs) - allowed or any(isinstance(v, dict) for v in kwargs.values()):
        return None  # another expectation type, suite parameters, row conditions, result formats...
    if kind == "expect_table_row_count_to_be_between":
        return _judge(expectation, {"table.row_count": facts.rows})
    column = kwargs.get("column")
    if kind == "expect_column_to_exist":
        return _judge(expectation, {"table.columns": facts.columns}) if isinstance(column, str) else None
    column_kind = facts.kind(column) if isinstance(column, str) else None
    if column_kind is None:
        return None
    if kind == "expect_column_values_to_not_be_null":
        missing = facts.missing(column)
        count = facts.missing_count(column)
        values, rows = facts.first(column, missing) if count else ([], [])
        return _judge(expectation, {"table.row_count": facts.rows, **_map("column_values.nonnull", count,
                                                                          values, rows)})
    if kind == "expect_column_values_to_be_in_type_list":
        from great_expectations.execution_engine import PandasExecutionEngine

        metrics = {"table.column_types": [{"name": column, "type": facts.dtype(column)}]}
        if column_kind == "string":  # object dtype: GX checks each value's Python type
            types = kwargs.get("type_list")
            if not isinstance(types, list) or not any(str(t).lower() in ("str", "string_types") for t in types):
                return None  # the values are all str: other type lists need GX's own per-value check
            metrics.update(_column_map(facts, column, "column_values.in_type_list", None))
        return _judge(expectation, metrics, engine=PandasExecutionEngine())
    if kind == "expect_column_values_to_be_between":
        low, high = kwargs.get("min_value"), kwargs.get("max_value")
        numbers = all(v is None or (isinstance(v, int | float) and not isinstance(v, bool)) for v in (low, high))
        if column_kind not in ("int", "float") or not numbers or (low is None and high is None) \
                or (low is not None and high is not None and low > high):
            return None
        import pyarrow.compute as pc

        values = facts.table.column(column)
        outside = None
        if low is not None:
            outside = (pc.less_equal if kwargs.get("strict_min") else pc.less)(values, low)
        if high is not None:
            above = (pc.greater_equal if kwargs.get("strict_max") else pc.greater)(values, high)
            outside = above if outside is None else pc.or_(outside, above)
        return _judge(expectation, _column_map(facts, column, "column_values.between", outside))
    if kind == "expect_column_values_to_be_in_set":
        value_set = kwargs.get("value_set")
        wanted = {"string": str, "bool": bool}.get(column_kind)
        if wanted is None or not isinstance(value_set, list) or not value_set \
                or not all(type(v) is wanted for v in value_set):
            return None
        import pyarrow as pa
        import pyarrow.compute as pc

        values = facts.table.column(column)
        inside = pc.is_in(values, value_set=pa.array(value_set, type=values.type))
        return _judge(expectation, _column_map(facts, column, "column_values.in_set", pc.invert(inside)))
    return None


def _column_map(facts: _ArrowFacts, column: str, metric: str, unexpected: Any) -> dict[str, Any]:
    """The metrics of a column map expectation: nulls are not judged, as in GX (`filter_column_isnull`)."""
    import pyarrow.compute as pc

    if unexpected is None:  # nothing unexpected among the non-null values
        count, values, rows = 0, [], []
    else:
        # Nulls compare as null and NaN as False; either way a missing value is not judged.
        unexpected = pc.and_kleene(pc.fill_null(unexpected, False), pc.invert(facts.missing(column)))
        count = int(pc.sum(unexpected).as_py() or 0)
        values, rows = facts.first(column, unexpected) if count else ([], [])
    return {"table.row_count": facts.rows, "column_values.nonnull.unexpected_count": facts.missing_count(column),
            **_map(metric, count, values, rows)}


def _map(metric: str, count: int, values: list[Any], rows: list[int]) -> dict[str, Any]:
    return {f"{metric}.unexpected_count": count, f"{metric}.unexpected_values": values,
            f"{metric}.unexpected_index_list": rows, f"{metric}.unexpected_index_query": None}


def _judge(expectation: Any, metrics: dict[str, Any], engine: Any = None) -> Any:
    """GX's own verdict and result dict for `metrics`, as its validator would build them."""
    from great_expectations.expectations.expectation import parse_result_format

    runtime = {"result_format": parse_result_format("SUMMARY")}
    return expectation._build_evr(expectation._validate(metrics=metrics, runtime_configuration=runtime,
                                                        execution_engine=engine))


def describe_failures(report: ValidationReport) -> str:
    """One message listing every failed expectation, naming the dataset and the suite."""
    lines = [
        f"dataset {report.dataset.name!r} ({report.dataset.uri}) failed "
        f"{len(report.failures)} of {len(report.outcomes)} expectations of suite {report.suite_path}:"
    ]
    lines += [f"  - {o.column or '(table)'}: {o.expectation}: {o.observed}" for o in report.failures]
    lines.append("Fix the data at its source, or review the suite file if the data is right.")
    return "\n".join(lines)


def _read_suite(path: Path) -> dict[str, Any]:
    try:
        suite = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"suite {path}: not readable JSON ({exc})") from exc
    if not isinstance(suite, dict) or "expectations" not in suite:
        raise ConfigError(f"suite {path}: expected a GX suite object with an 'expectations' list")
    return suite


def _type_family(series: pd.Series) -> list[str]:
    import pandas as pd

    kind = series.dtype
    if pd.api.types.is_bool_dtype(kind):
        return ["bool", "boolean"]
    if pd.api.types.is_integer_dtype(kind) or pd.api.types.is_float_dtype(kind):
        # Integers that gain a null become floats: accept the whole numeric family.
        return ["int8", "int16", "int32", "int64", "Int64", "float32", "float64", "Float64"]
    if pd.api.types.is_datetime64_any_dtype(kind):
        return [str(kind), "datetime64[ns]", "datetime64[us]", "datetime64[ms]"]
    return ["object", "string", "str", "category"]


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def _observed(result: dict[str, Any], exception: dict[str, Any] | None) -> str:
    raised = [info for info in (exception or {}).values() if isinstance(info, dict) and info.get("raised_exception")]
    if raised or (exception or {}).get("raised_exception"):
        message = (raised[0] if raised else exception).get("exception_message", "error")
        return f"could not run: {str(message).splitlines()[0][:200]}"
    if result.get("unexpected_percent") is not None:
        sample = ", ".join(map(str, (result.get("partial_unexpected_list") or [])[:5]))
        return f"{result['unexpected_percent']:.2f}% unexpected" + (f" (e.g. {sample})" if sample else "")
    if "observed_value" in result:
        return f"observed {result['observed_value']}"
    return "ok"


@task(name="validate", task_run_name="validate-{dataset.name}")
def validate(
    dataset: DatasetRef,
    suite_path: str | None = None,
    reference: DatasetRef | None = None,
    warn_only: bool = False,
    workspace: str | None = None,
) -> ValidationReport:
    """Validate a dataset (see `validate_dataset`) and publish the table as a Prefect artifact."""
    logger = run_logger()
    # Validate in warn-only mode first so the table is published before the run fails.
    report = validate_dataset(
        dataset, suite_path=suite_path, reference=reference, warn_only=True, workspace=Workspace(workspace)
    )
    create_table_artifact(
        key=artifact_key("validation", dataset.name),
        table=[o.model_dump() for o in report.outcomes],
        description=f"Validation of {dataset.short()} against {report.suite_path}: "
        f"{'passed' if report.passed else f'{len(report.failures)} failed'}",
    )
    if report.passed:
        logger.info("%s passed %s expectations", dataset.short(), len(report.outcomes))
    elif warn_only:
        logger.warning(describe_failures(report))
    else:
        raise DataValidationError(describe_failures(report))
    return report
