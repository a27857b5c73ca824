"""Validate: check a dataset against a Great Expectations suite, read from JSON or learned from data.

A suite holds two roles of expectation, marked in each expectation's `meta`:

- the **contract** blocks a run: the columns exist, keep their type family and their nulls, and
  hold no impossible values (numbers far beyond any plausible scale, strings longer than any
  seen by an order of magnitude, timestamps before 1900 or years ahead), and the table has rows;
- the **profile** describes the reference (numeric ranges with a tolerance, category sets, a
  row-count band). A deviation is reported, never blocks: drift is judged by the drift stage, and
  a retraining that drift starts must not be stopped by the reference it is meant to replace.

An expectation without a role (one a person wrote) is contract. GX 1.x has no profiler, so
`learn_suite` writes the suite; it is saved as GX JSON so a person can review and edit it.
`evolve_suite` re-learns a learned suite from a new champion's training data, keeping the previous
version under `history/`, and never touches a suite a person edited.

The suite runs on the snapshot's Arrow table (`engine="arrow"`, see `_gx_arrow`) or in GX on the
pandas frame (`engine="gx"`); both give GX's table. The task reads PREFECT_MLOPS_GX_PUSHDOWN
(0/false: "gx") at call time.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from pydantic import BaseModel, Field

from prefect_mlops.errors import ConfigError, DataValidationError
from prefect_mlops.log import run_logger
from prefect_mlops.refs import DatasetRef, artifact_key
from prefect_mlops.tasks import _gx_arrow
from prefect_mlops.workspace import Workspace, iter_batches, read_frame, write_atomic

if TYPE_CHECKING:
    from collections.abc import Callable

    import pandas as pd
    import pyarrow as pa

Engine = Literal["arrow", "gx"]
Role = Literal["contract", "profile"]
ENGINE_ENV = "PREFECT_MLOPS_GX_PUSHDOWN"
CONTRACT_FACTOR = 100
"""Impossible numbers lie beyond the reference's scale (max of span, |min|, |max|, 1) times this, on either side."""
LENGTH_FACTOR, MIN_MAX_LENGTH = 10, 1000
FUTURE_YEARS = 10
"""A timestamp may lie this many years past the later of the reference's last year and this year."""
_INT64 = (-(2**63), 2**63 - 1)
GX_FRAME_ROWS = 250_000
"""Expectations the push-down cannot compute run in GX on a pandas frame of the whole data up to this many rows.
Above it GX's per-row (map) expectations run batch by batch (batches of this many rows) with their counts summed,
and only aggregates (means, quantiles, uniqueness), whose results do not merge across batches, run on a seeded
uniform sample of this many rows (their outcomes say `sample_rows`): profile expectations only. 250k rows keep
GX's copies of a frame well under a gigabyte for any column count we ship."""
SAMPLE_SEED = 0


class ExpectationOutcome(BaseModel):
    """One row of the validation table."""

    column: str | None = Field(description="Column checked; empty for table-level expectations.")
    expectation: str = Field(description="GX expectation type.")
    observed: str = Field(description="What was seen, in words.")
    passed: bool
    role: Role = Field(default="contract", description="contract: a failure blocks; profile: reported only.")
    sample_rows: int | None = Field(
        default=None, description="GX ran this expectation on a seeded uniform sample of this many rows (the data "
                                  "had more than GX_FRAME_ROWS and it could not be pushed down); None: every row.")


class ValidationReport(BaseModel):
    """The result of validating one dataset against one suite; `passed` when every contract expectation passed."""

    dataset: DatasetRef
    suite_name: str
    suite_path: str
    passed: bool
    outcomes: list[ExpectationOutcome]

    @property
    def failures(self) -> list[ExpectationOutcome]:
        """The contract expectations that failed: what blocks the run."""
        return [o for o in self.outcomes if not o.passed and o.role == "contract"]

    @property
    def profile_deviations(self) -> list[ExpectationOutcome]:
        """The profile expectations the data no longer meets: reported, never blocking."""
        return [o for o in self.outcomes if not o.passed and o.role == "profile"]


class SuiteUpdate(BaseModel):
    """What `evolve_suite` did with a suite file."""

    path: str
    version: str
    updated: bool
    reason: str
    history_path: str | None = Field(default=None, description="Where the previous suite was kept.")


def learn_suite(
    frame: pd.DataFrame,
    *,
    name: str,
    range_tolerance: float = 0.5,
    max_categories: int = 50,
    row_count_band: tuple[float, float] = (0.2, 5.0),
    mostly: float = 0.99,
    version: str | None = None,
    rows: int | None = None,
    exact: dict[str, ColumnExtremes] | None = None,
) -> dict[str, Any]:
    """Learn a GX expectation suite (as GX's JSON dict) from reference data: a contract and a profile.

    `frame` may be a sample of the data (see `learn_suite_from`): then `rows` is the data's row
    count and `exact` gives per column what a sample would miss (the missing count, and the values
    holding the minimum, the maximum, the longest string and the first distinct values), so the suite
    is the one the whole data gives wherever it does not depend on the sample's type inference.

    The profile's numeric ranges widen by `range_tolerance` times the observed span on each
    side; a column with at most `max_categories` distinct values gets a value set. The suite's
    `meta` records `version` and a digest of the expectations, by which `evolve_suite` tells a
    learned suite from one a person edited.

    Example:
        ```python
        import pandas as pd
        from prefect_mlops.tasks.validate import learn_suite
        suite = learn_suite(pd.DataFrame({"x": [1.0, 2.0], "c": ["a", "b"]}), name="demo")
        roles = {(e["type"], e["meta"]["role"]) for e in suite["expectations"]}
        assert ("expect_column_values_to_be_in_set", "profile") in roles
        assert ("expect_column_values_to_not_be_null", "contract") in roles
        ```
    """
    import pandas as pd

    expectations: list[dict[str, Any]] = []

    def expect(role: Role, kind: str, **kwargs: Any) -> None:
        expectations.append({"type": kind, "kwargs": kwargs, "meta": {"learned": True, "role": role}})

    rows = len(frame) if rows is None else rows
    expect("contract", "expect_table_row_count_to_be_between", min_value=1)
    expect("profile", "expect_table_row_count_to_be_between",
           min_value=max(1, math.floor(rows * row_count_band[0])), max_value=math.ceil(rows * row_count_band[1]))
    for column in frame.columns:
        series = frame[column]
        values = series.dropna()
        known = (exact or {}).get(column)
        if known is not None:
            values = known.joined(values)
        expect("contract", "expect_column_to_exist", column=column)
        kind, kwargs = _type_expectation(series, values)
        if kind:
            expect("contract", kind, column=column, **kwargs)
        null_share = float(series.isna().mean()) if known is None else (known.missing / rows if rows else 0.0)
        if null_share == 0:
            expect("contract", "expect_column_values_to_not_be_null", column=column)
        elif null_share < 1:
            expect("contract", "expect_column_values_to_not_be_null", column=column,
                   mostly=round(max(0.0, 1 - 2 * null_share - 0.01), 4))
        if values.empty:
            continue
        for kind, kwargs in _impossible(series, values):
            expect("contract", kind, column=column, **kwargs)
        if pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series):
            low, high = float(values.min()), float(values.max())
            pad = range_tolerance * ((high - low) or abs(high) or 1.0)
            if math.isfinite(low - pad) and math.isfinite(high + pad):
                expect("profile", "expect_column_values_to_be_between", column=column,
                       min_value=low - pad, max_value=high + pad, mostly=mostly)
        elif _plain_values(series, values):
            distinct = values.unique()
            if len(distinct) <= max_categories:
                expect("profile", "expect_column_values_to_be_in_set", column=column,
                       value_set=sorted(_plain(v) for v in distinct), mostly=mostly)
    suite = {"name": name, "expectations": json.loads(json.dumps(expectations, default=str))}
    suite["meta"] = {"learned_from_rows": rows, "learned_version": version,
                     "digest": suite_digest(suite["expectations"])}
    return suite


class ColumnExtremes(BaseModel):
    """What a sample of a column misses, counted over every row: its missing values, and the values that
    hold its minimum, maximum, longest string and its first distinct values (as a pandas Series)."""

    model_config = {"arbitrary_types_allowed": True}

    missing: int
    values: Any = Field(description="pandas Series of the column's dtype (object for categories), no missing.")

    def joined(self, values: pd.Series) -> pd.Series:
        """`values` (a sample's, missing values dropped) with these appended."""
        import pandas as pd

        if not len(self.values):
            return values
        if isinstance(values.dtype, pd.CategoricalDtype):  # categories may differ: join as objects
            return pd.concat([values.astype(object), self.values.astype(object)],
                             ignore_index=True).astype("category")
        extra = self.values if self.values.dtype == values.dtype else self.values.astype(values.dtype)
        return pd.concat([values, extra], ignore_index=True)


LEARN_ROWS = GX_FRAME_ROWS
"""`learn_suite_from` learns from every row up to this many, above it from a seeded sample plus exact aggregates."""


def learn_suite_from(reference: DatasetRef, *, name: str, version: str | None = None, limit: int | None = None,
                     max_categories: int = 50) -> dict[str, Any]:
    """`learn_suite` of a snapshot in bounded memory: the whole frame up to `limit` (None: `LEARN_ROWS`) rows,
    the same suite as `learn_suite(read_frame(reference))`; above it a seeded sample of `limit` rows with the
    missing counts, the extremes, the longest strings and up to `max_categories` + 1 distinct values of every column
    counted exactly while streaming (so ranges, contracts and category sets are the whole data's).

    Example:
        ```python
        import tempfile, numpy as np, pandas as pd
        from prefect_mlops.tasks.validate import learn_suite, learn_suite_from
        from prefect_mlops.workspace import Workspace, read_frame
        frame = pd.DataFrame({"x": np.arange(5000.0), "c": np.resize(["a", "b", "c"], 5000)})
        ref = Workspace(tempfile.mkdtemp()).write_snapshot(frame, name="d")
        assert learn_suite_from(ref, name="d", limit=500) == learn_suite(read_frame(ref), name="d")
        ```
    """
    frame, sampled = gx_frame(reference, LEARN_ROWS if limit is None else limit)
    if sampled is None:
        return learn_suite(frame, name=name, version=version, max_categories=max_categories)
    exact = _column_extremes(reference, frame, max_categories)
    return learn_suite(frame, name=name, version=version, max_categories=max_categories, rows=reference.rows,
                       exact=exact)


def _column_extremes(reference: DatasetRef, frame: pd.DataFrame, max_categories: int) -> dict[str, ColumnExtremes]:
    """Per column, streamed over every row: the missing count (nulls, NaN in floats) and the extreme values."""
    import pyarrow as pa
    import pyarrow.compute as pc

    missing = dict.fromkeys(frame.columns, 0)
    kept: dict[str, list[Any]] = {c: [] for c in frame.columns}  # small Arrow arrays of chosen values
    distinct: dict[str, set[Any]] = {c: set() for c in frame.columns}
    for batch in iter_batches(reference):
        for column in frame.columns:
            values = batch.column(column)
            if pa.types.is_dictionary(values.type):
                values = values.dictionary_decode()
            floating = pa.types.is_floating(values.type)
            missing[column] += int(pc.sum(pc.is_null(values, nan_is_null=True)).as_py() or 0) if floating \
                else values.null_count
            present = pc.drop_null(pc.if_else(pc.is_nan(values), None, values) if floating else values)
            if not len(present):
                continue
            t = present.type
            if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_temporal(t) \
                    or pa.types.is_decimal(t):
                low_high = pc.min_max(present)
                kept[column].append(pa.array([low_high["min"], low_high["max"]], type=t))
            if pa.types.is_string(t) or pa.types.is_large_string(t):
                lengths = pc.utf8_length(present)
                longest = pc.indices_nonzero(pc.equal(lengths, pc.max(lengths)))[0]
                kept[column].append(present.take(pa.array([longest.as_py()])))
            if len(distinct[column]) <= max_categories and not pa.types.is_floating(t):
                unique = pc.unique(present)
                new = [i for i, v in enumerate(unique.to_pylist()) if v not in distinct[column]]
                new = new[:max_categories + 1 - len(distinct[column])]
                distinct[column].update(unique.take(pa.array(new, type=pa.int64())).to_pylist())
                kept[column].append(unique.take(pa.array(new, type=pa.int64())))
    out = {}
    for column in frame.columns:
        arrays = [a for a in kept[column] if len(a)]
        series = pa.concat_arrays(arrays).to_pandas() if arrays else frame[column].iloc[:0].dropna()
        out[column] = ColumnExtremes(missing=missing[column], values=series)
    return out


def suite_digest(expectations: list[dict[str, Any]]) -> str:
    """SHA-256 of a suite's expectations, independent of key order and whitespace."""
    text = json.dumps(expectations, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def role_of(expectation: dict[str, Any]) -> Role:
    """An expectation's role: "profile" only when its meta says so; a person's expectation is contract."""
    meta = expectation.get("meta") or {}
    return "profile" if isinstance(meta, dict) and meta.get("role") == "profile" else "contract"


def validate_dataset(
    dataset: DatasetRef,
    *,
    suite_path: str | None = None,
    reference: DatasetRef | None = None,
    warn_only: bool = False,
    workspace: Workspace | None = None,
    engine: Engine = "arrow",
) -> ValidationReport:
    """Validate `dataset` with a GX suite and return the per-expectation table.

    The suite is read from `suite_path` when that file exists; otherwise it is learned from
    `reference` (or from `dataset` itself on a first run) and saved to `suite_path`, or to
    the workspace's `suites/` folder. Raises `DataValidationError` listing every failed
    contract expectation unless `warn_only`; profile deviations are only reported.
    `engine="gx"` runs every expectation in GX on the pandas frame.

    Example:
        ```python
        import tempfile, pandas as pd
        from prefect_mlops.tasks.validate import validate_dataset
        from prefect_mlops.workspace import Workspace
        ws = Workspace(tempfile.mkdtemp())
        first = ws.write_snapshot(pd.DataFrame({"t": [1.0, 2.0, 3.0]}), name="temps")
        validate_dataset(first, workspace=ws)  # learns suites/temps.json
        warmer = ws.write_snapshot(pd.DataFrame({"t": [9.0, 10.0, 12.0]}), name="temps")
        report = validate_dataset(warmer, workspace=ws)
        assert report.passed and report.profile_deviations
        ```
    """
    if engine not in ("arrow", "gx"):
        raise ConfigError(f"validate engine {engine!r}: expected 'arrow' or 'gx'")
    workspace = workspace or Workspace()
    path = Path(suite_path) if suite_path else workspace.folder("suites") / f"{dataset.name}.json"
    if path.exists():
        suite_json = _read_suite(path)
    elif suite_path and not suite_path.endswith(".json"):
        raise ConfigError(f"suite {suite_path}: expected a .json file written by GX or by learn_suite")
    else:
        learn_from = reference or dataset
        suite_json = learn_suite_from(learn_from, name=dataset.name)
        _write_json(path, suite_json)
    if engine == "arrow":
        outcomes = run_suite_streamed(dataset, suite_json)
    else:
        outcomes = run_suite(read_frame(dataset), suite_json)
    report = ValidationReport(
        dataset=dataset, suite_name=suite_json.get("name", path.stem), suite_path=str(path),
        passed=all(o.passed for o in outcomes if o.role == "contract"), outcomes=outcomes,
    )
    if not report.passed and not warn_only:
        raise DataValidationError(describe_failures(report))
    return report


def run_suite(frame: pd.DataFrame, suite_json: dict[str, Any]) -> list[ExpectationOutcome]:
    """Run a suite (GX JSON) on a frame with an ephemeral GX context: every expectation in GX."""
    return [_outcome(result) for result in _gx_arrow.gx_validate(frame, suite_json)]


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
    return [_outcome(r) for r in _gx_arrow.run_suite_on_table(table, suite_json, load_frame=load_frame)]


def run_suite_streamed(dataset: DatasetRef, suite_json: dict[str, Any]) -> list[ExpectationOutcome]:
    """Run a suite on a snapshot streamed in record batches: GX's table, in memory that does not grow with the rows.

    The push-down expectations are aggregated over the batches (`_gx_arrow.run_suite_on_batches`).
    Up to `GX_FRAME_ROWS` rows the rest run in GX on the whole frame. Above it GX's per-row (map)
    expectations run in GX batch by batch, every row judged; only aggregate expectations (a mean, a
    quantile, uniqueness...) run on a seeded sample of `GX_FRAME_ROWS` rows (their outcomes carry
    `sample_rows`), and only profile ones: a contract expectation that would be judged on a sample is
    a `ConfigError` naming it (`engine="gx"` judges it on the whole frame).
    """
    frame_rows: list[int | None] = [None]

    def load_frame() -> pd.DataFrame:
        frame, frame_rows[0] = gx_frame(dataset)
        return frame

    def check_rest(expectations: list[dict[str, Any]]) -> None:
        if dataset.rows <= GX_FRAME_ROWS:
            return
        contract = [e for e in expectations if role_of(e) == "contract"]
        if contract:
            named = "; ".join(f"{e.get('type')} on column {(e.get('kwargs') or {}).get('column')!r}"
                              for e in contract[:5])
            raise ConfigError(
                f"suite {suite_json.get('name')!r} on dataset {dataset.name!r} ({dataset.rows:,} rows): the contract "
                f"expectation(s) {named} cannot be computed batch by batch, and GX would judge them on a sample of "
                f"{GX_FRAME_ROWS:,} rows. Validate with engine=\"gx\" (PREFECT_MLOPS_GX_PUSHDOWN=0) to judge them on "
                f"every row, or mark them meta role \"profile\" if a sample is enough.")

    results, by_gx = _gx_arrow.run_suite_on_batches(
        iter_batches(dataset), suite_json, load_frame=load_frame, frame_rows=GX_FRAME_ROWS,
        again=lambda columns: iter_batches(dataset, columns=columns, batch_rows=GX_FRAME_ROWS),
        check_rest=check_rest)
    outcomes = [_outcome(r) for r in results]
    if frame_rows[0] is not None:
        outcomes = [o.model_copy(update={"sample_rows": frame_rows[0]}) if n in by_gx else o
                    for n, o in enumerate(outcomes)]
    return outcomes


def gx_frame(dataset: DatasetRef, limit: int | None = None) -> tuple[pd.DataFrame, int | None]:
    """The pandas frame GX runs on: every row up to `limit` rows, else a seeded uniform sample of `limit` rows
    (drawn while streaming; its index keeps the rows' numbers in the data). Returns it and the sample's size,
    None when it is every row. `limit` None: `GX_FRAME_ROWS`."""
    limit = GX_FRAME_ROWS if limit is None else limit
    if dataset.rows <= limit:
        return read_frame(dataset), None
    import numpy as np
    import pyarrow as pa

    picked = np.sort(np.random.default_rng(SAMPLE_SEED).choice(dataset.rows, size=limit, replace=False))
    batches, offset, nulls = [], 0, {}
    for batch in iter_batches(dataset):
        low, high = np.searchsorted(picked, [offset, offset + batch.num_rows])
        batches.append(batch.take(picked[low:high] - offset))
        for name, column in zip(batch.schema.names, batch.columns, strict=True):
            nulls[name] = nulls.get(name, 0) + column.null_count
        offset += batch.num_rows
    frame = pa.Table.from_batches(batches).to_pandas()
    for name, dtype in frame.dtypes.items():
        # pandas reads integers with a null as floats and booleans as objects: the sample must have the
        # whole data's dtypes even when it drew none of the nulls.
        if nulls.get(name) and isinstance(dtype, np.dtype) and dtype.kind in "iub":
            frame[name] = frame[name].astype("float64" if dtype.kind in "iu" else object)
    frame.index = picked[:len(frame)]
    return frame, len(frame)


def evolve_suite(
    suite_path: str | os.PathLike[str] | None,
    reference: DatasetRef,
    *,
    version: str,
    workspace: Workspace | None = None,
    learned: dict[str, Any] | None = None,
) -> SuiteUpdate:
    """Re-learn a learned suite from `reference` (a new champion's training data), keeping the old one.

    The profile is learned afresh; the contract is re-learned and widened to cover the previous
    one, so data the old contract accepted stays accepted. The previous file is kept as
    `history/<stem>.v<its version>.json` beside the suite, and the new one is written atomically
    with `meta.learned_version = version`. A suite whose expectations no longer match the digest
    `learn_suite` wrote (a person edited it), or that has none, is left untouched: `updated=False`.
    `learned`: the suite `learn_suite_from(reference)` gives, when already learned (`learn_suite_ahead`).

    Example:
        ```python
        import tempfile, pandas as pd
        from prefect_mlops.tasks.validate import evolve_suite, validate_dataset
        from prefect_mlops.workspace import Workspace
        ws = Workspace(tempfile.mkdtemp())
        winter = ws.write_snapshot(pd.DataFrame({"t": [-5.0, 0.0, 3.0]}), name="temps")
        path = validate_dataset(winter, workspace=ws).suite_path
        summer = ws.write_snapshot(pd.DataFrame({"t": [18.0, 25.0, 31.0]}), name="temps")
        update = evolve_suite(path, summer, version="2", workspace=ws)
        assert update.updated and update.history_path
        assert not validate_dataset(summer, suite_path=path, workspace=ws).profile_deviations
        ```
    """
    workspace = workspace or Workspace()
    path = _suite_file(suite_path, reference, workspace)
    before: bytes | None = None
    if path.exists():
        before = path.read_bytes()
        old = _read_suite(path)
        meta = old.get("meta") if isinstance(old.get("meta"), dict) else {}
        kept = _left_as_it_is(old)
        if kept:  # nothing is learned for a suite that is not re-learned
            return SuiteUpdate(path=str(path), version=version, updated=False, reason=kept)
    if learned is None:
        learned = learn_suite_from(reference, name=reference.name, version=version)
    else:
        learned = {**learned, "meta": {**learned.get("meta", {}), "learned_version": version}}
    if before is None:
        if path.exists():  # a suite was saved while this one was learned: theirs wins
            return SuiteUpdate(path=str(path), version=version, updated=False,
                               reason="saved while it was being learned: left as it is")
        _write_json(path, learned)
        return SuiteUpdate(path=str(path), version=version, updated=True,
                           reason=f"no suite yet: learned from {reference.short()}")
    expectations = _widened_contract(old["expectations"], learned["expectations"])
    suite = {**learned, "name": old.get("name", learned["name"]), "expectations": expectations}
    suite["meta"] = {**learned["meta"], "digest": suite_digest(expectations)}
    if expectations == old["expectations"]:
        return SuiteUpdate(path=str(path), version=version, updated=False,
                           reason=f"unchanged: {reference.short()} gives the expectations it holds")
    history = path.parent / "history" / f"{path.stem}.v{_safe(meta.get('learned_version') or '0')}.json"
    history.parent.mkdir(parents=True, exist_ok=True)
    _write_bytes(history, before)
    if path.read_bytes() != before:  # a person saved it meanwhile: theirs wins
        return SuiteUpdate(path=str(path), version=version, updated=False,
                           reason="changed while it was being re-learned: left as it is")
    _write_json(path, suite)
    return SuiteUpdate(path=str(path), version=version, updated=True, history_path=str(history),
                       reason=f"re-learned from {reference.short()}; the previous suite is kept in {history}")


def _suite_file(suite_path: str | os.PathLike[str] | None, reference: DatasetRef, workspace: Workspace) -> Path:
    return Path(suite_path) if suite_path else workspace.folder("suites") / f"{reference.name}.json"


def _left_as_it_is(suite: dict[str, Any]) -> str | None:
    """Why a suite file is never re-learned (no learned digest, or a person edited it), or None."""
    meta = suite.get("meta") if isinstance(suite.get("meta"), dict) else {}
    if not meta.get("digest"):
        return "not a learned suite (no learned digest in its meta): left as it is; delete the file to have one learned"
    if meta["digest"] != suite_digest(suite["expectations"]):
        return "edited by a person (its expectations no longer match the learned digest): left as it is"
    return None


def describe_failures(report: ValidationReport) -> str:
    """One message listing every failed contract expectation, naming the dataset and the suite."""
    contract = [o for o in report.outcomes if o.role == "contract"]
    lines = [
        f"dataset {report.dataset.name!r} ({report.dataset.uri}) failed "
        f"{len(report.failures)} of {len(contract)} contract expectations of suite {report.suite_path}:"
    ]
    lines += [f"  - {o.column or '(table)'}: {o.expectation}: {o.observed}" for o in report.failures[:20]]
    if len(report.failures) > 20:
        lines.append(f"  ... and {len(report.failures) - 20} more (see the validation artifact)")
    if report.profile_deviations:
        count = len(report.profile_deviations)
        lines.append(f"({count} profile deviation{'s' if count != 1 else ''} as well, reported only)")
    lines.append("Fix the data at its source, or review the suite file if the data is right.")
    return "\n".join(lines)


def _outcome(result: Any) -> ExpectationOutcome:
    config = result.expectation_config
    return ExpectationOutcome(
        column=config.kwargs.get("column"),
        expectation=config.type,
        observed=_observed(result.result, result.exception_info),
        passed=bool(result.success),
        role=role_of({"meta": config.meta}),
    )


def _type_expectation(series: pd.Series, values: pd.Series) -> tuple[str | None, dict[str, Any]]:
    """The GX expectation that holds a column to its type family, as GX's pandas checks can say it.

    GX compares a categorical or tz-aware column's dtype with no type name it can parse, so those
    get `expect_column_values_to_be_of_type` with the dtype's scalar type, which GX does match.
    An object column's values are checked one by one, so its family follows the values' type.
    """
    import pandas as pd

    kind = series.dtype
    if isinstance(kind, pd.CategoricalDtype):
        return "expect_column_values_to_be_of_type", {"type_": "CategoricalDtypeType"}
    if isinstance(kind, pd.DatetimeTZDtype):
        return "expect_column_values_to_be_of_type", {"type_": "Timestamp"}
    if pd.api.types.is_bool_dtype(kind):
        return "expect_column_values_to_be_in_type_list", {"type_list": ["bool", "BooleanDtype"]}
    if pd.api.types.is_numeric_dtype(kind):
        # Integers that gain a null become floats: accept the whole numeric family.
        return "expect_column_values_to_be_in_type_list", {"type_list": _NUMERIC}
    if pd.api.types.is_datetime64_any_dtype(kind):
        units = ["datetime64[ns]", "datetime64[us]", "datetime64[ms]", "datetime64[s]"]
        return "expect_column_values_to_be_in_type_list", {"type_list": sorted({str(kind), *units})}
    inferred = pd.api.types.infer_dtype(values, skipna=True) if len(values) else "empty"
    family = {"string": ["object", "string", "str", "StringDtype"], "empty": ["object", "string", "str"],
              "boolean": ["bool", "BooleanDtype"], "integer": ["int", "float", *_NUMERIC],
              "floating": ["int", "float", *_NUMERIC], "mixed-integer-float": ["int", "float", *_NUMERIC],
              "decimal": ["Decimal", *_NUMERIC], "date": ["date"], "datetime": ["Timestamp", "datetime"],
              "bytes": ["bytes"]}.get(inferred)
    return ("expect_column_values_to_be_in_type_list", {"type_list": family}) if family else (None, {})


_NUMERIC = [*(f"{s}int{b}" for s in ("", "u") for b in (8, 16, 32, 64)), "float16", "float32", "float64",
            *(f"{s}Int{b}Dtype" for s in ("", "U") for b in (8, 16, 32, 64)), "Float32Dtype", "Float64Dtype"]


def _impossible(series: pd.Series, values: pd.Series) -> list[tuple[str, dict[str, Any]]]:
    """The contract's bounds on values no real data holds, derived from the reference's scale.

    Numbers: beyond `CONTRACT_FACTOR` times the reference's scale (an index may grow a hundredfold
    between promotions; an age of 1e23 may not). Strings: longer than `LENGTH_FACTOR` times the
    longest seen, and at least 1000 characters are allowed. Timestamps: before 1900 (or the
    reference's own past, when older), or more than `FUTURE_YEARS` past the later of the
    reference's last year and this year: a backfill or a replay of old data passes, a year-2500
    typo does not.
    """
    import numpy as np
    import pandas as pd

    kind = series.dtype
    if pd.api.types.is_bool_dtype(kind):
        return []
    if pd.api.types.is_integer_dtype(kind):
        low, high = int(values.min()), int(values.max())
        pad = CONTRACT_FACTOR * max(high - low, abs(low), abs(high), 1)
        top = int(np.iinfo(getattr(kind, "numpy_dtype", kind)).max)
        return [("expect_column_values_to_be_between",
                 {"min_value": max(low - pad, _INT64[0]), "max_value": min(high + pad, max(top, _INT64[1]))})]
    if pd.api.types.is_float_dtype(kind):
        low, high = float(values.min()), float(values.max())
        pad = CONTRACT_FACTOR * max(high - low, abs(low), abs(high), 1.0)
        if not (math.isfinite(low - pad) and math.isfinite(high + pad)):
            return []
        return [("expect_column_values_to_be_between", {"min_value": low - pad, "max_value": high + pad})]
    if pd.api.types.is_datetime64_any_dtype(kind):
        first, last = values.min(), values.max()
        span_years = (last - first).days / 365.25
        lower = max(1, min(1900, first.year - math.ceil(10 * span_years)))
        upper = min(9999, max(last.year, datetime.now(timezone.utc).year) + FUTURE_YEARS + 1)
        zone = "+00:00" if isinstance(kind, pd.DatetimeTZDtype) else ""
        return [("expect_column_min_to_be_between", {"min_value": f"{lower:04d}-01-01T00:00:00{zone}"}),
                ("expect_column_max_to_be_between", {"max_value": f"{upper:04d}-01-01T00:00:00{zone}"})]
    strings = values.astype(object) if isinstance(kind, pd.CategoricalDtype) else values
    if len(strings) and pd.api.types.infer_dtype(strings, skipna=True) == "string":
        longest = int(strings.str.len().max())
        return [("expect_column_value_lengths_to_be_between",
                 {"max_value": max(LENGTH_FACTOR * longest, MIN_MAX_LENGTH)})]
    return []


def _plain_values(series: pd.Series, values: pd.Series) -> bool:
    """Whether a value set can hold the column's values as JSON gives them back (str and bool)."""
    import pandas as pd

    if pd.api.types.is_datetime64_any_dtype(series.dtype):
        return False
    if pd.api.types.is_bool_dtype(series.dtype):
        return True
    return pd.api.types.infer_dtype(values, skipna=True) in ("string", "boolean")


def _widened_contract(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`new`'s expectations, each contract one widened to admit what the same one in `old` admitted."""
    previous = {_key(e): e for e in old if role_of(e) == "contract" and (e.get("meta") or {}).get("learned")}
    out = []
    for expectation in new:
        before = previous.get(_key(expectation)) if role_of(expectation) == "contract" else None
        if before is not None:
            expectation = {**expectation, "kwargs": _wider(before["kwargs"], expectation["kwargs"])}
        out.append(expectation)
    return out


def _key(expectation: dict[str, Any]) -> tuple[str, Any]:
    return expectation.get("type"), (expectation.get("kwargs") or {}).get("column")


def _wider(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """The looser of two kwargs of one expectation: lower minimum, higher maximum, lower mostly, more types."""
    out = dict(new)
    for key, pick in (("min_value", min), ("max_value", max)):
        a, b = old.get(key), new.get(key)
        if a is None or b is None:
            out.pop(key, None)  # a side without a bound admitted everything there
        elif _comparable(a, b):
            out[key] = pick(a, b)
    if out.get("min_value") is None and out.get("max_value") is None and (
            new.get("min_value") is not None or new.get("max_value") is not None):
        out = dict(new)  # GX needs one bound: keep the new one rather than none
    loosest = min(old.get("mostly", 1.0), new.get("mostly", 1.0))
    if loosest < 1.0:
        out["mostly"] = loosest
    if isinstance(old.get("type_list"), list) and isinstance(new.get("type_list"), list):
        out["type_list"] = new["type_list"] + [t for t in old["type_list"] if t not in new["type_list"]]
    return out


def _comparable(a: Any, b: Any) -> bool:
    """Two bounds of one kind: numbers, or ISO timestamps written alike (same length, same zone)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return False
    if isinstance(a, int | float) and isinstance(b, int | float):
        return True
    return isinstance(a, str) and isinstance(b, str) and len(a) == len(b)


def _read_suite(path: Path) -> dict[str, Any]:
    try:
        suite = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"suite {path}: not readable JSON ({exc})") from exc
    if not isinstance(suite, dict) or not isinstance(suite.get("expectations"), list):
        raise ConfigError(f"suite {path}: expected a GX suite object with an 'expectations' list")
    return suite


def _write_json(path: Path, data: dict[str, Any]) -> None:
    _write_bytes(path, json.dumps(data, indent=2, default=str).encode())


def _write_bytes(path: Path, data: bytes) -> None:
    # atomic: a reader never sees half a suite, and a full disk names the suite's path
    write_atomic(path, lambda tmp: tmp.write_bytes(data), stage=f"expectation suite {path.name}")


def _safe(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in str(text)) or "0"


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def _observed(result: dict[str, Any], exception: dict[str, Any] | None) -> str:
    raised = [info for info in (exception or {}).values() if isinstance(info, dict) and info.get("raised_exception")]
    if raised or (exception or {}).get("raised_exception"):
        message = (raised[0] if raised else exception).get("exception_message", "error")
        return f"could not run: {str(message).splitlines()[0][:200]}"
    if result.get("unexpected_percent") is not None:
        sample = ", ".join(_cut(v) for v in (result.get("partial_unexpected_list") or [])[:5])
        return f"{result['unexpected_percent']:.2f}% unexpected" + (f" (e.g. {sample})" if sample else "")
    if "observed_value" in result:
        return f"observed {_cut(result['observed_value'])}"
    return "ok"


def _cut(value: Any, limit: int = 80) -> str:
    """A value for the table and messages: a 1 MiB string shows its start and its length."""
    text = str(value)
    return text if len(text) <= limit else f"{text[:limit]}...({len(text):,} characters)"


def engine_from_env() -> Engine:
    """The engine PREFECT_MLOPS_GX_PUSHDOWN asks for, read now: 0/false/no/off give "gx"."""
    off = os.environ.get(ENGINE_ENV, "1").strip().lower() in ("0", "false", "no", "off")
    return "gx" if off else "arrow"


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
    report = validate_dataset(dataset, suite_path=suite_path, reference=reference, warn_only=True,
                              workspace=Workspace(workspace), engine=engine_from_env())
    deviations = len(report.profile_deviations)
    create_table_artifact(
        key=artifact_key("validation", dataset.name),
        table=[o.model_dump() for o in report.outcomes],
        description=f"Validation of {dataset.short()} against {report.suite_path}: "
        f"{'contract passed' if report.passed else f'{len(report.failures)} contract failures'}, "
        f"{deviations} profile deviations",
    )
    if deviations:
        logger.info("%s: %s profile deviations (reported, not blocking): %s", dataset.short(), deviations,
                    "; ".join(f"{o.column or '(table)'}: {o.expectation}" for o in report.profile_deviations[:10]))
    if report.passed:
        logger.info("%s passed %s contract expectations; %s profile deviations", dataset.short(),
                    sum(o.role == "contract" for o in report.outcomes), deviations)
    elif warn_only:
        logger.warning(describe_failures(report))
    else:
        raise DataValidationError(describe_failures(report))
    return report


@task(name="learn-suite", task_run_name="learn-suite-{reference.name}")
def learn_suite_ahead(reference: DatasetRef, suite_path: str | None = None,
                      workspace: str | None = None) -> dict[str, Any] | None:
    """The suite `update_suite` writes if this data's challenger is promoted, learned while it trains.

    Submitted beside training (`learn_suite_ahead.submit(dataset, suite_path)`), it takes the second core while
    the fit takes the first, so a promotion does not wait for it. It writes nothing: a rejected challenger leaves
    the suite as it was. None when there is nothing to learn (the suite at `suite_path` is one a person edited)
    or it could not learn: `update_suite` then says why, or learns it itself.
    """
    try:
        path = _suite_file(suite_path, reference, Workspace(workspace))
        if path.exists() and _left_as_it_is(_read_suite(path)):
            return None
        return learn_suite_from(reference, name=reference.name)
    except Exception as exc:  # the update after a promotion learns it again and reports the error there
        run_logger().warning("could not learn the suite of %s ahead (%s: %s); it is learned after a promotion",
                             reference.short(), type(exc).__name__, exc)
        return None


@task(name="update-suite", task_run_name="update-suite-{reference.name}")
def update_suite(
    suite_path: str | None,
    reference: DatasetRef,
    version: str,
    workspace: str | None = None,
    learned: dict[str, Any] | None = None,
) -> SuiteUpdate:
    """Re-learn the suite after a promotion (see `evolve_suite`) and say what happened in an artifact.
    `learned`: the suite `learn_suite_ahead` learned from `reference` while the challenger trained."""
    update = evolve_suite(suite_path, reference, version=version, workspace=Workspace(workspace), learned=learned)
    run_logger().info("suite %s %s for version %s: %s", update.path,
                      "updated" if update.updated else "kept", version, update.reason)
    create_markdown_artifact(
        key=artifact_key("suite", reference.name),
        markdown=f"### Suite {'updated' if update.updated else 'kept'}: `{update.path}`\n\n"
        f"- version: {version}\n- reference: `{reference.short()}`\n- {update.reason}\n",
        description=f"Suite of {reference.name} after version {version}",
    )
    return update
