"""Validate: check a dataset against a Great Expectations suite, read from JSON or learned from data.

GX 1.x has no profiler, so `learn_suite` writes one from reference data: column types,
nullability, numeric ranges with a tolerance, category sets and a row-count band. The
learned suite is saved as GX JSON beside the data so a person can review and edit it.
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
from prefect_mlops.workspace import Workspace, read_frame

if TYPE_CHECKING:
    import pandas as pd


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
    return [
        ExpectationOutcome(
            column=outcome.expectation_config.kwargs.get("column"),
            expectation=outcome.expectation_config.type,
            observed=_observed(outcome.result, outcome.exception_info),
            passed=bool(outcome.success),
        )
        for outcome in result.results
    ]


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
