"""Drift-check: compare a current window with the champion's training data.

The decision comes from per-column effect sizes with thresholds that do not shrink with the
sample size, gated by Holm-corrected p-values, weighted by the columns' importance to the model
(see `_drift_stats`); below `min_rows` rows a side it decides nothing. Evidently draws the HTML
report from a seeded sample, off the decision path.

On drift it emits the Prefect event `prefect_mlops.drift.detected` with the model as its
resource; a deployment trigger on a Prefect server turns that event into one retraining run.
"""

from __future__ import annotations

import html
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from prefect import task
from prefect.artifacts import create_link_artifact, create_markdown_artifact
from pydantic import BaseModel, ConfigDict, Field

from prefect_mlops.blocks.mlflow_server import MlflowServer
from prefect_mlops.errors import DriftCheckError
from prefect_mlops.log import brief, run_logger
from prefect_mlops.refs import DatasetRef, artifact_key
from prefect_mlops.tasks import _drift_stats as stats
from prefect_mlops.workspace import Workspace, iter_batches, read_table

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

DRIFT_EVENT = "prefect_mlops.drift.detected"
REPORT_SEED = 0
ReportMode = Literal["drifted", "always", "never"]
REPORT_MODES: tuple[str, ...] = ("drifted", "always", "never")
"""When Evidently's HTML report is drawn: when the data drifted (default), for every check, or never."""
# Numeric statistics are exact up to this many rows a side, and above it come from a seeded uniform
# sample of this many rows: 18 numeric columns x 1M rows x 8 bytes x 2 sides is ~290 MB, whatever the
# data's size. At 1M rows the sample's empirical CDF is within 0.002 of the data's everywhere with
# probability 0.999 (Dvoretzky-Kiefer-Wolfowitz), which bounds the error of KS's D, of each decile's share
# and so of the PSI bins; the effect thresholds (PSI 0.2, 0.1 std) are far above it.
EXACT_ROWS = 1_000_000


class ColumnDrift(BaseModel):
    """One column's statistics and decision."""

    model_config = ConfigDict(frozen=True, ser_json_inf_nan="constants")

    column: str
    kind: Literal["numeric", "categorical"]
    decision: Literal["drifted", "stable", "not-enough-data"]
    drifted: bool
    method: str = Field(description="The effect size that decided: 'psi' or 'wasserstein' (normed).")
    effect: float = Field(description="That effect size's value.")
    threshold: float = Field(description="That effect size's threshold.")
    score: float = Field(description="Same as `effect` (kept for earlier readers).")
    psi: float = Field(description="Population stability index on the reference's deciles or on the categories.")
    wasserstein: float | None = Field(description="Wasserstein distance / the reference's std; None for categories.")
    jensen_shannon: float = Field(description="Jensen-Shannon distance (base 2) on the same bins as PSI.")
    test: str = Field(description="'ks' (two-sample Kolmogorov-Smirnov) or 'chi2' (2xK chi-squared).")
    p_value: float
    p_adjusted: float | None = Field(description="Holm-corrected over the columns; None when not tested.")
    importance: float = Field(description="The column's share of the importance (the weights sum to 1).")
    reference_count: int = Field(description="Reference values compared (missing ones left out).")
    current_count: int
    reference_missing: int = Field(description="Reference nulls, NaNs and infinities left out.")
    current_missing: int
    unseen_share: float | None = Field(default=None, description="Categories: share of current values in "
                                                                  "categories the reference lacks.")

    @classmethod
    def from_verdict(cls, verdict: stats.ColumnVerdict) -> ColumnDrift:
        """The record of a `_drift_stats.ColumnVerdict` (e.g. from `label_drift`)."""
        s = verdict.stats
        return cls(column=s.column, kind=s.kind, decision=verdict.decision, drifted=verdict.drifted,
                   method=verdict.method, effect=verdict.effect, threshold=verdict.threshold, score=verdict.effect,
                   psi=s.psi, wasserstein=s.wasserstein, jensen_shannon=s.jensen_shannon, test=s.test,
                   p_value=s.p_value, p_adjusted=verdict.p_adjusted, importance=verdict.importance,
                   reference_count=s.reference_count, current_count=s.current_count,
                   reference_missing=s.reference_missing, current_missing=s.current_missing,
                   unseen_share=s.unseen_share)


class DriftReport(BaseModel):
    """Drift of a current window against the reference data."""

    model_config = ConfigDict(frozen=True, ser_json_inf_nan="constants")

    model_name: str
    decision: Literal["drifted", "stable", "not-enough-data"]
    reason: str = Field(description="One sentence with the numbers behind the decision.")
    drift_share: float = Field(description="Importance-weighted share of the columns that drifted (0-1).")
    threshold: float = Field(description="Drift share at which the dataset counts as drifted.")
    detected: bool = Field(description="decision == 'drifted'.")
    drifted_columns: list[str]
    columns: list[ColumnDrift]
    current_rows: int = Field(description="Current rows compared (after sampling, before missing values).")
    reference_rows: int
    min_rows: int = Field(default=100, description="Rows a side below which nothing is decided.")
    alpha: float = Field(default=0.05, description="Level of the Holm-corrected tests.")
    window: str | None
    current: DatasetRef
    reference: DatasetRef
    report_path: str
    report_rows: int | None = Field(default=None, description="Rows a side the HTML report was drawn from.")
    report_kind: Literal["evidently", "table"] = Field(
        default="evidently", description="evidently: Evidently's drift report; table: the plain HTML table of the "
                                         "decision (a stable window with report='drifted', report='never', or "
                                         "Evidently could not draw it).")
    sample_rows: int | None = Field(
        default=None, description="Rows each side was sampled down to before the statistics; None: every row."
    )
    numeric_sample_rows: int | None = Field(
        default=None, description="Numeric statistics came from a seeded uniform sample of this many rows a side "
                                  "(the data had more than `exact_rows`); None: from every row compared.")
    exact_rows: int = Field(default=EXACT_ROWS, description="Rows a side up to which numeric statistics are exact.")
    sampled: bool = Field(default=False, description="Whether any statistic came from a sample of the rows "
                                                      "(`sample_rows` or `numeric_sample_rows`); category counts "
                                                      "are otherwise exact at any size.")


def model_resource_id(model_name: str) -> str:
    """The Prefect event resource id for a model: `prefect-mlops.model.<name>`."""
    return f"prefect-mlops.model.{model_name}"


def check_drift(
    current: DatasetRef,
    reference: DatasetRef,
    *,
    model_name: str,
    columns: list[str],
    drift_share: float = 0.5,
    importance: dict[str, float] | None = None,
    min_rows: int = 100,
    alpha: float = 0.05,
    workspace: Workspace | None = None,
    sample_rows: int | None = None,
    report_rows: int = 5000,
    exact_rows: int = EXACT_ROWS,
    report: ReportMode = "drifted",
) -> DriftReport:
    """Decide whether `columns` drifted from `reference` to `current`, and save an HTML report.

    A column drifts when its effect size passes its threshold (PSI >= 0.2, or for numbers the
    Wasserstein distance >= 0.1 reference standard deviations) and its KS / chi-squared p-value,
    Holm-corrected over the columns, is below `alpha`. The data drifts when the drifted columns
    carry at least `drift_share` of `importance` (column -> weight, e.g. permutation importance;
    negative counts as 0, a column left out as 0; None or all zero: equal weights). With fewer
    than `min_rows` rows on either side the decision is "not-enough-data" and nothing drifts.

    `sample_rows` (off by default) computes the statistics on a seeded uniform sample of at
    most that many rows a side. Both snapshots are streamed in record batches, so memory does
    not grow with the rows: category counts are exact at any size; numeric statistics are exact
    up to `exact_rows` rows a side and above it come from a seeded uniform sample of `exact_rows`
    rows picked while streaming (`numeric_sample_rows` and `sampled` in the report say so; see
    `EXACT_ROWS` for the error bound). It is `drift_statistics` and `drift_report` composed.
    The Evidently HTML report is drawn from a seeded sample of at most `report_rows` rows a side:
    it illustrates, it does not decide. `report`: "drifted" (default) draws it only when the data
    drifted, "always" for every check, "never" not at all; otherwise the HTML file is a plain table
    of the decision, and Evidently (about 2 s to import) is not imported (`report_kind` says which).

    Example:
        ```python
        import tempfile
        import numpy as np, pandas as pd
        from prefect_mlops.tasks.drift import check_drift
        from prefect_mlops.workspace import Workspace
        ws, rng = Workspace(tempfile.mkdtemp()), np.random.default_rng(0)
        ref = ws.write_snapshot(pd.DataFrame({"x": rng.normal(size=2000)}), name="ref")
        cur = ws.write_snapshot(pd.DataFrame({"x": rng.normal(0.5, 1, size=2000)}), name="cur")
        report = check_drift(cur, ref, model_name="m", columns=["x"], workspace=ws)
        assert report.decision == "drifted" and report.drifted_columns == ["x"]
        ```
    """
    workspace = workspace or Workspace()
    _check_arguments(model_name, current, columns, drift_share, min_rows, alpha, sample_rows, report_rows,
                     importance)
    _check_report(model_name, report)
    per_column, samples = _stream_statistics(current, reference, columns, model_name=model_name,
                                             sample_rows=sample_rows, exact_rows=exact_rows,
                                             report_rows=0 if report == "never" else report_rows)
    return drift_report(per_column, current, reference, model_name=model_name, columns=columns,
                        drift_share=drift_share, importance=importance, min_rows=min_rows, alpha=alpha,
                        workspace=workspace, sample_rows=sample_rows, exact_rows=exact_rows, report_rows=report_rows,
                        report_samples=None if report == "never" else samples, report=report)


def drift_statistics(current: DatasetRef, reference: DatasetRef, columns: list[str], *, model_name: str = "model",
                     sample_rows: int | None = None, exact_rows: int = EXACT_ROWS) -> dict[str, stats.ColumnStats]:
    """Per-column statistics of `columns` (any subset) of two snapshots, streamed in record batches.

    Memory does not grow with the rows: categories are counted batch by batch (exact at any
    size); numeric values are kept for at most `exact_rows` rows a side, above which they come
    from a seeded uniform sample of that many rows picked while streaming (see `check_drift`).
    The statistics of disjoint subsets, merged into one dict, equal those of all the columns at
    once, so the columns can be computed on different workers and decided by `drift_report`.

    Example:
        ```python
        import tempfile, numpy as np, pandas as pd
        from prefect_mlops.tasks.drift import drift_report, drift_statistics
        from prefect_mlops.workspace import Workspace
        ws, rng = Workspace(tempfile.mkdtemp()), np.random.default_rng(0)
        ref = ws.write_snapshot(pd.DataFrame({"x": rng.normal(size=2000), "y": rng.normal(size=2000)}), name="r")
        cur = ws.write_snapshot(pd.DataFrame({"x": rng.normal(1, 1, 2000), "y": rng.normal(size=2000)}), name="c")
        per_column = {**drift_statistics(cur, ref, ["x"]), **drift_statistics(cur, ref, ["y"])}
        report = drift_report(per_column, cur, ref, model_name="m", columns=["x", "y"], workspace=ws)
        assert report.drifted_columns == ["x"] and not report.sampled
        ```
    """
    return _stream_statistics(current, reference, columns, model_name=model_name, sample_rows=sample_rows,
                              exact_rows=exact_rows, report_rows=0)[0]


def drift_report(
    per_column: dict[str, stats.ColumnStats],
    current: DatasetRef,
    reference: DatasetRef,
    *,
    model_name: str,
    columns: list[str],
    drift_share: float = 0.5,
    importance: dict[str, float] | None = None,
    min_rows: int = 100,
    alpha: float = 0.05,
    workspace: Workspace | None = None,
    sample_rows: int | None = None,
    exact_rows: int = EXACT_ROWS,
    report_rows: int = 5000,
    report_samples: tuple[pa.Table, pa.Table] | None = None,
    report: ReportMode = "drifted",
) -> DriftReport:
    """The `DriftReport` from per-column statistics (e.g. `drift_statistics` of column subsets, merged):
    Holm correction over the columns, importance weights, the decision, and the HTML report.

    `report_samples` (current, reference): the rows the HTML report is drawn from; None streams
    a seeded sample of at most `report_rows` rows a side from the snapshots. `report`: when
    Evidently's report is drawn (see `check_drift`); a plain HTML table of the decision otherwise.
    """
    _check_report(model_name, report)
    workspace = workspace or Workspace()
    missing = [c for c in columns if c not in per_column]
    if missing:
        raise DriftCheckError(f"drift check of {model_name!r}: no statistics for columns {missing}; compute "
                              "drift_statistics for every column before drift_report")
    per_column = {c: per_column[c] for c in columns}
    if importance and not set(importance) & set(columns):
        # e.g. importance recorded on encoded feature names ('num__age'): equal weights, said aloud.
        run_logger().warning("drift check of %s: importance names none of the columns %s (it names %s); "
                             "weighing the columns equally", model_name, brief(columns), brief(sorted(importance)))
    current_rows, reference_rows = (_kept_rows(ref.rows, sample_rows) for ref in (current, reference))
    verdict = stats.decide(per_column, importance=importance, drift_share=drift_share, min_rows=min_rows,
                           alpha=alpha, reference_rows=reference_rows, current_rows=current_rows)
    records = [ColumnDrift.from_verdict(v) for v in verdict.columns]
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%f")
    path = workspace.folder("reports", model_name) / f"drift-{stamp}.html"
    kind: Literal["evidently", "table"] = "table"
    shown = None
    if report == "always" or (report == "drifted" and verdict.decision == "drifted"):
        if report_samples is None:
            report_samples = (_stream_report_sample(current, columns, sample_rows, report_rows),
                              _stream_report_sample(reference, columns, sample_rows, report_rows))
        shown, drawn = _save_html(path, *report_samples, per_column, columns, drift_share, report_rows, verdict)
        kind = "evidently" if drawn else "table"
    else:
        # Evidently's import (~2 s) is not paid to illustrate a decision nobody has to act on.
        _plain_html(path, verdict, f"Evidently's report is drawn when the data drifted (report={report!r}); "
                                   "this is the decision's table.")
    sampled = sample_rows if sample_rows is not None and max(current.rows, reference.rows) > sample_rows else None
    numeric_rows = exact_rows if max(current_rows, reference_rows) > exact_rows and any(
        s.kind == "numeric" for s in per_column.values()) else None
    return DriftReport(model_name=model_name, decision=verdict.decision, reason=verdict.reason,
                       drift_share=verdict.drift_share, threshold=drift_share, detected=verdict.detected,
                       drifted_columns=verdict.drifted_columns, columns=records,
                       current_rows=current_rows, reference_rows=reference_rows,
                       min_rows=min_rows, alpha=alpha, window=current.window, current=current, reference=reference,
                       report_path=str(path), report_rows=shown, report_kind=kind, sample_rows=sampled,
                       numeric_sample_rows=numeric_rows, sampled=sampled is not None or numeric_rows is not None,
                       exact_rows=exact_rows)


def _kept_rows(rows: int, sample_rows: int | None) -> int:
    return rows if sample_rows is None else min(rows, sample_rows)


def _pick(rows: int, size: int | None) -> np.ndarray | None:
    """Sorted positions of `size` of `rows` rows drawn without replacement (seeded); None: every row.

    The same draw as the in-memory sample before streaming, so a sampled check gives the same
    numbers as it did on a loaded table.
    """
    if size is None or rows <= size:
        return None
    import numpy as np

    return np.sort(np.random.default_rng(REPORT_SEED).choice(rows, size=size, replace=False))


def _within(picked: np.ndarray | None, kept: np.ndarray | None) -> np.ndarray | None:
    """Positions in the data of a pick made among the `kept` rows."""
    if picked is None or kept is None:
        return picked if kept is None else kept
    return kept[picked]


def _plan(ref: DatasetRef, sample_rows: int | None, exact_rows: int, report_rows: int) -> dict[str, Any]:
    """Which rows of a snapshot each statistic reads (None: all), picked before streaming."""
    kept = _pick(ref.rows, sample_rows)
    rows = _kept_rows(ref.rows, sample_rows)
    return {"categorical": kept, "numeric": _within(_pick(rows, exact_rows), kept),
            "report": _within(_pick(rows, report_rows), kept) if report_rows else None, "report_rows": report_rows}


def _take(batch: Any, positions: np.ndarray | None, offset: int) -> Any:
    """The rows of `batch` (which starts at row `offset`) at sorted data `positions`; None: all of it."""
    if positions is None:
        return batch
    import numpy as np

    low, high = np.searchsorted(positions, [offset, offset + batch.num_rows])
    return batch.take(positions[low:high] - offset)


def _stream_statistics(current: DatasetRef, reference: DatasetRef, columns: list[str], *, model_name: str,
                       sample_rows: int | None, exact_rows: int,
                       report_rows: int) -> tuple[dict[str, stats.ColumnStats], tuple[pa.Table, pa.Table] | None]:
    """Statistics of both sides in one streamed pass a side (reference first: its types set the kinds),
    and the HTML report's rows when `report_rows` (> 0) asks for them."""
    from prefect_mlops.console import report

    if exact_rows < 1:
        raise DriftCheckError(f"drift check of {model_name!r}: exact_rows must be a positive number of rows, "
                              f"got {exact_rows}")
    ref_side = _Side(reference, columns, None, _plan(reference, sample_rows, exact_rows, report_rows), model_name)
    cur_side = _Side(current, columns, ref_side.kinds, _plan(current, sample_rows, exact_rows, report_rows),
                     model_name, reference_schema=ref_side.schema)
    out = {}
    for done, column in enumerate(columns, 1):
        report("columns", f"drift of {model_name}", done, len(columns))
        if ref_side.kinds[column] == "numeric":
            out[column] = stats.numeric_stats(ref_side.numbers.pop(column), cur_side.numbers.pop(column),
                                              column=column)
        else:
            out[column] = stats.categorical_stats(ref_side.counts[column], cur_side.counts[column], column=column,
                                                  reference_missing=ref_side.missing[column],
                                                  current_missing=cur_side.missing[column])
    samples = (cur_side.report_table(), ref_side.report_table()) if report_rows else None
    return out, samples


class _Side:
    """One snapshot streamed once: category counts, numeric values (bounded), the report's rows."""

    def __init__(self, ref: DatasetRef, columns: list[str], kinds: dict[str, str] | None, plan: dict[str, Any],
                 model_name: str, reference_schema: Any = None) -> None:
        import numpy as np
        import pyarrow as pa

        self.ref, self.kinds = ref, dict(kinds or {})
        self.counts: dict[str, dict[Any, int]] = {c: {} for c in columns}
        self.missing = {c: 0 for c in columns}
        chunks: dict[str, list[np.ndarray]] = {c: [] for c in columns}
        report_batches, self.schema = [], None
        offset = 0
        for batch in iter_batches(ref, columns):
            if self.schema is None:
                self.schema = batch.schema
                for column in columns:
                    self.kinds.setdefault(column, "numeric" if _is_numeric(batch.schema.field(column).type)
                                          else "categorical")
            kept, numeric = _take(batch, plan["categorical"], offset), _take(batch, plan["numeric"], offset)
            if plan["report_rows"]:
                report_batches.append(_take(batch, plan["report"], offset))
            for column in columns:
                if self.kinds[column] == "numeric":
                    values = numeric.column(column)
                    try:
                        chunks[column].append(_as_float(pa.chunked_array([values])))
                    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                        raise DriftCheckError(
                            f"drift check of {model_name!r}: column {column!r} is numeric in the reference "
                            f"({reference_schema.field(column).type if reference_schema else 'numeric'}) but "
                            f"{values.type} in the current data; fix the source's type") from exc
                else:
                    counts, missing = _counts(kept.column(column))
                    merged = self.counts[column]
                    for key, number in counts.items():
                        merged[key] = merged.get(key, 0) + number
                    self.missing[column] += missing
            offset += batch.num_rows
        if self.schema is None:  # no batch at all: an empty snapshot still has its types
            self.schema = read_table(ref, columns).schema
            for column in columns:
                self.kinds.setdefault(column, "numeric" if _is_numeric(self.schema.field(column).type)
                                      else "categorical")
        if offset != ref.rows and (plan["categorical"] is not None or plan["numeric"] is not None):
            raise DriftCheckError(f"drift check of {model_name!r}: snapshot {ref.name!r} has {offset} rows, its "
                                  f"reference says {ref.rows}; run ingest again to re-create it")
        self.numbers = {c: np.concatenate(v) if v else np.empty(0) for c, v in chunks.items()
                        if self.kinds[c] == "numeric"}
        self.report_batches = report_batches

    def report_table(self) -> pa.Table:
        import pyarrow as pa

        return pa.Table.from_batches(self.report_batches, schema=self.schema)


def _stream_report_sample(ref: DatasetRef, columns: list[str], sample_rows: int | None, report_rows: int) -> pa.Table:
    """The seeded sample of at most `report_rows` rows the HTML report is drawn from, streamed."""
    import pyarrow as pa

    positions = _plan(ref, sample_rows, 1, report_rows)["report"]
    batches, offset, schema = [], 0, None
    for batch in iter_batches(ref, columns):
        schema = batch.schema
        batches.append(_take(batch, positions, offset))
        offset += batch.num_rows
    return pa.Table.from_batches(batches, schema=schema) if schema is not None else read_table(ref, columns)


def _check_arguments(model_name: str, current: DatasetRef, columns: list[str], drift_share: float, min_rows: int,
                     alpha: float, sample_rows: int | None, report_rows: int,
                     importance: dict[str, float] | None) -> None:
    where = f"drift check of {model_name!r}"
    if not columns:
        raise DriftCheckError(f"{where}: no columns to compare")
    missing = [c for c in columns if c not in current.columns]
    if missing:
        raise DriftCheckError(f"{where}: current data {current.name!r} lacks columns {missing} that the champion "
                              "was trained on; fix the source")
    if not 0 < drift_share <= 1:
        raise DriftCheckError(f"{where}: drift_share must be in (0, 1], got {drift_share}")
    if not 0 < alpha < 1:
        raise DriftCheckError(f"{where}: alpha must be in (0, 1), got {alpha}")
    if min_rows < 1:
        raise DriftCheckError(f"{where}: min_rows must be at least 1 row a side, got {min_rows}")
    if sample_rows is not None and sample_rows < 1:
        raise DriftCheckError(f"{where}: sample_rows must be a positive number of rows or None (no sampling), "
                              f"got {sample_rows}")
    if report_rows < 1:
        raise DriftCheckError(f"{where}: report_rows must be a positive number of rows, got {report_rows}")
    for column, value in (importance or {}).items():
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise DriftCheckError(f"{where}: importance of column {column!r} must be a number, got {brief(value)}; "
                                  "pass e.g. the model's permutation importance per column")


def _sample(table: pa.Table, rows: int | None) -> pa.Table:
    """At most `rows` rows drawn without replacement (seeded: the same data gives the same sample).

    Rows are picked in Arrow, so a sample never converts the whole table.
    """
    if rows is None or table.num_rows <= rows:
        return table
    import numpy as np

    picked = np.sort(np.random.default_rng(REPORT_SEED).choice(table.num_rows, size=rows, replace=False))
    return table.take(picked)


def column_statistics(reference: pa.Table, current: pa.Table, columns: list[str], *,
                      model_name: str = "model") -> dict[str, stats.ColumnStats]:
    """Per-column statistics of two Arrow tables: numbers (ints, floats, decimals, dates, times) by
    `numeric_stats`, everything else (strings, dictionaries, booleans) by `categorical_stats`.

    The kind follows the reference's type. Categories are counted in Arrow (`value_counts`), so
    strings never become Python objects.
    """
    import pyarrow as pa

    from prefect_mlops.console import report

    out = {}
    for done, column in enumerate(columns, 1):
        report("columns", f"drift of {model_name}", done, len(columns))
        ref_col, cur_col = reference.column(column), current.column(column)
        if _is_numeric(ref_col.type):
            try:
                ref_values, cur_values = _as_float(ref_col), _as_float(cur_col)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise DriftCheckError(
                    f"drift check of {model_name!r}: column {column!r} is numeric in the reference "
                    f"({ref_col.type}) but {cur_col.type} in the current data; fix the source's type") from exc
            out[column] = stats.numeric_stats(ref_values, cur_values, column=column)
        else:
            (ref_counts, ref_missing), (cur_counts, cur_missing) = _counts(ref_col), _counts(cur_col)
            out[column] = stats.categorical_stats(ref_counts, cur_counts, column=column,
                                                  reference_missing=ref_missing, current_missing=cur_missing)
    return out


def _is_numeric(arrow_type: Any) -> bool:
    import pyarrow as pa

    return (pa.types.is_integer(arrow_type) or pa.types.is_floating(arrow_type) or pa.types.is_decimal(arrow_type)
            or pa.types.is_temporal(arrow_type))


def _as_float(column: Any) -> Any:
    """float64 numpy values; nulls become NaN (left out and counted by the statistics)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if pa.types.is_temporal(column.type):  # dates and times compare as their integer encoding
        column = pc.cast(column, pa.int64()) if not pa.types.is_date32(column.type) else \
            pc.cast(pc.cast(column, pa.int32()), pa.int64())
    return pc.cast(column, pa.float64()).to_numpy()


def _counts(column: Any) -> tuple[dict[Any, int], int]:
    import pyarrow.compute as pc

    counted = pc.value_counts(column)
    keys, numbers = counted.field("values").to_pylist(), counted.field("counts").to_pylist()
    counts = {key: number for key, number in zip(keys, numbers, strict=True) if key is not None}
    return counts, int(column.null_count)


def _save_html(path: Any, current: pa.Table, reference: pa.Table, per_column: dict[str, stats.ColumnStats],
               columns: list[str], drift_share: float, report_rows: int,
               verdict: stats.DatasetVerdict) -> tuple[int, bool]:
    """Evidently's report from at most `report_rows` sampled rows a side; returns the rows shown and whether
    Evidently drew it.

    Evidently is told each column's kind and shown the decision's effect sizes (normed
    Wasserstein for numbers, PSI for categories). The report is an illustration: when
    Evidently cannot draw it (one row, say), a plain page with the decision takes its place.
    """
    current_sample, reference_sample = _sample(current, report_rows), _sample(reference, report_rows)
    shown = max(current_sample.num_rows, reference_sample.num_rows)
    numeric = [c for c in columns if per_column[c].kind == "numeric"]
    categorical = [c for c in columns if per_column[c].kind == "categorical"]
    try:
        from evidently import DataDefinition, Dataset, Report
        from evidently.presets import DataDriftPreset

        definition = DataDefinition(numerical_columns=numeric, categorical_columns=categorical)
        current_data, reference_data = (Dataset.from_pandas(t.to_pandas(), data_definition=definition)
                                        for t in (current_sample, reference_sample))
        preset = DataDriftPreset(columns=columns, drift_share=drift_share, num_method="wasserstein",
                                 num_threshold=stats.Thresholds().wasserstein, cat_method="psi",
                                 cat_threshold=stats.Thresholds().psi)
        Report([preset]).run(current_data=current_data, reference_data=reference_data).save_html(str(path))
    except Exception as exc:  # the report illustrates; it never blocks the decision
        run_logger().warning("Evidently could not draw the drift report (%s: %s); wrote the decision alone to %s",
                             type(exc).__name__, exc, path)
        _plain_html(path, verdict, f"Evidently could not draw its report: {type(exc).__name__}: {brief(str(exc))}")
        return shown, False
    return shown, True


def _plain_html(path: Any, verdict: stats.DatasetVerdict, note: str) -> None:
    """The decision as a plain HTML table (no Evidently): the reason and every column's numbers."""
    rows = "".join(f"<tr><td>{html.escape(c.column)}</td><td>{c.decision}</td><td>{c.method}</td>"
                   f"<td>{c.effect:.4g}</td><td>{c.p_adjusted if c.p_adjusted is not None else '-'}</td></tr>"
                   for c in verdict.columns)
    path.write_text(
        "<!doctype html>\n<html><head><meta charset='utf-8'><title>Drift</title></head><body>"
        f"<h1>Drift: {verdict.decision}</h1><p>{html.escape(verdict.reason)}</p>"
        f"<p>{html.escape(note)}</p><table><tr><th>column</th><th>decision</th><th>effect</th>"
        f"<th>value</th><th>Holm p</th></tr>{rows}</table></body></html>\n", encoding="utf-8")


def _check_report(model_name: str, report: Any) -> None:
    if report not in REPORT_MODES:
        raise DriftCheckError(f"drift check of {model_name!r}: report={report!r}; expected one of "
                              f"{', '.join(map(repr, REPORT_MODES))} (when to draw Evidently's HTML report)")


def emit_drift_event(report: DriftReport, champion_version: str | None = None) -> str | None:
    """Emit `prefect_mlops.drift.detected` for the report's model; returns the event id."""
    from prefect.events import emit_event

    event = emit_event(
        event=DRIFT_EVENT,
        resource={"prefect.resource.id": model_resource_id(report.model_name),
                  "prefect.resource.name": report.model_name, "prefect-mlops.model": report.model_name},
        payload={"model_name": report.model_name, "decision": report.decision, "reason": report.reason,
                 "drift_share": report.drift_share, "threshold": report.threshold,
                 "drifted_columns": report.drifted_columns, "current_rows": report.current_rows,
                 "reference_rows": report.reference_rows, "window": report.window or "latest",
                 "champion_version": champion_version, "current_fingerprint": report.current.fingerprint,
                 "report": report.report_path},
    )
    return str(event.id) if event else None


def _fmt(value: float | None) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3g}"


def markdown_table(report: DriftReport) -> str:
    """The per-column table of a report, in Markdown."""
    head = ("| column | kind | decision | effect | threshold | PSI | Wasserstein (normed) | Jensen-Shannon | test "
            "| p | Holm p | importance | missing (ref / cur) |\n" + "|---" * 13 + "|\n")
    return head + "\n".join(
        f"| {c.column} | {c.kind} | {c.decision} | {c.method} {_fmt(c.effect)} | {c.threshold:g} | {_fmt(c.psi)} "
        f"| {_fmt(c.wasserstein)} | {_fmt(c.jensen_shannon)} | {c.test} | {_fmt(c.p_value)} | {_fmt(c.p_adjusted)} "
        f"| {c.importance:.0%} | {c.reference_missing} / {c.current_missing} |" for c in report.columns)


def top_columns(report: DriftReport, limit: int = 10) -> list[ColumnDrift]:
    """The drifted columns that matter most (importance, then effect over its threshold); when none drifted,
    the columns closest to drifting."""
    def weight(c: ColumnDrift) -> tuple[float, float]:
        ratio = c.effect / c.threshold if c.threshold and math.isfinite(c.effect) else 0.0
        return (c.importance if c.drifted else 0.0, ratio)
    drifted = [c for c in report.columns if c.drifted]
    return sorted(drifted or report.columns, key=weight, reverse=True)[:limit]


def render_summary(report: DriftReport, *, logged_to: str | None = None) -> str:
    """Markdown for the Prefect UI: the decision, the top drifted columns, where the HTML report is.

    Example:
        ```python
        import tempfile, numpy as np, pandas as pd
        from prefect_mlops.tasks.drift import check_drift, render_summary
        from prefect_mlops.workspace import Workspace
        ws = Workspace(tempfile.mkdtemp())
        rng = np.random.default_rng(0)
        ref = ws.write_snapshot(pd.DataFrame({"x": rng.normal(size=500)}), name="ref")
        cur = ws.write_snapshot(pd.DataFrame({"x": rng.normal(3, size=500)}), name="cur")
        text = render_summary(check_drift(cur, ref, model_name="m", columns=["x"], workspace=ws))
        assert "DRIFTED" in text and "| x |" in text
        ```
    """
    top = top_columns(report)
    drifted = any(c.drifted for c in top)
    lines = [f"# Drift of {report.model_name}: {report.decision.upper()}", "", report.reason, "",
             f"Importance-weighted drift share **{report.drift_share:.1%}** (threshold {report.threshold:.0%}); "
             f"{len(report.drifted_columns)} of {len(report.columns)} columns drifted; window "
             f"{report.window or 'latest'}; {report.current_rows} current rows against {report.reference_rows} "
             f"reference rows.", "",
             "## " + ("Top drifted columns" if drifted else "No column drifted; the closest to drifting"), "",
             "| column | kind | measure | value | threshold | importance | Holm p |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {c.column} | {c.kind} | {c.method} | {_fmt(c.effect)} | {c.threshold:g} | {c.importance:.0%} | "
              f"{_fmt(c.p_adjusted)} |" for c in top]
    lines += ["", "The full Evidently report (HTML): "
              + (f"MLflow artifact `{logged_to}`" if logged_to else "") + f"; on the worker: `{report.report_path}`"]
    return "\n".join(lines)


def log_drift_run(report: DriftReport, *, champion_run_id: str, champion_version: str | None,
                  mlflow_server: MlflowServer, workspace: Workspace) -> str:
    """Log one drift check as an MLflow run nested under the champion's run; returns `runs:/<id>/drift`.

    A run of its own, not the champion's: the champion's run is the record of how it was trained
    (its hold-out metrics are the performance check's reference), and one run per check makes the
    drift share a series MLflow can chart. Nested (`mlflow.parentRunId`), it lists under the champion.
    """
    from mlflow.entities import Metric, Param, RunTag

    client = mlflow_server.client(workspace)
    parent = client.get_run(champion_run_id)
    run = client.create_run(parent.info.experiment_id, run_name=f"drift-{report.model_name}-"
                            f"{(report.window or 'latest').replace('/', '_')[:60]}",
                            tags={"mlflow.parentRunId": champion_run_id, "prefect_mlops.kind": "drift-check",
                                  "prefect_mlops.decision": report.decision,
                                  "prefect_mlops.champion_version": champion_version or ""})
    try:
        now = int(datetime.now(timezone.utc).timestamp() * 1000)
        metrics = [Metric("drift_share", report.drift_share, now, 0),
                   Metric("drifted_columns", len(report.drifted_columns), now, 0),
                   Metric("current_rows", report.current_rows, now, 0)]
        metrics += [Metric(f"effect_{_metric_name(c.column)}", c.effect, now, 0) for c in report.columns
                    if math.isfinite(c.effect)]
        params = [Param("window", report.window or "latest"), Param("threshold", str(report.threshold)),
                  Param("current_fingerprint", report.current.fingerprint)]
        for start in range(0, len(metrics), 1000):  # MLflow's batch limit
            client.log_batch(run.info.run_id, metrics=metrics[start:start + 1000],
                             params=params if start == 0 else [], tags=[RunTag("prefect_mlops.reason",
                                                                               report.reason[:5000])])
        client.log_artifact(run.info.run_id, report.report_path, "drift")
        client.log_text(run.info.run_id, markdown_table(report), "drift/columns.md")
        client.set_terminated(run.info.run_id, "FINISHED")
    except Exception:
        client.set_terminated(run.info.run_id, "FAILED")
        raise
    return f"runs:/{run.info.run_id}/drift/{Path(report.report_path).name}"


def _metric_name(column: str) -> str:
    """A column name as MLflow accepts it in a metric key (letters, digits, _ - . space : /)."""
    return "".join(ch if ch.isalnum() or ch in "_-. :/" else "_" for ch in column)[:200]


@task(name="drift-check", task_run_name="drift-{model_name}")
def drift_check(
    current: DatasetRef,
    reference: DatasetRef,
    model_name: str,
    columns: list[str],
    drift_share: float = 0.5,
    champion_version: str | None = None,
    workspace: str | None = None,
    sample_rows: int | None = None,
    importance: dict[str, float] | None = None,
    min_rows: int = 100,
    alpha: float = 0.05,
    report_rows: int = 5000,
    emit: bool = True,
    champion_run_id: str | None = None,
    mlflow_server: MlflowServer | None = None,
    exact_rows: int = EXACT_ROWS,
    report: ReportMode = "drifted",
) -> DriftReport:
    """Check drift (see `check_drift`), link the HTML report, and emit the drift event when drifted.

    The event is emitted only for the decision "drifted": never for "stable" or "not-enough-data".
    `importance`: column -> weight (e.g. the champion's permutation importance); None weighs the
    columns equally. `min_rows`: rows a side below which nothing is decided. `emit=False` leaves
    the event to the caller (a retrain policy that weighs drift with other signals emits one).
    With `champion_run_id` the check and its HTML report are logged to MLflow (see `log_drift_run`);
    a failure to log is a warning, never a failed check. `exact_rows`: rows a side up to which the
    numeric statistics are exact (a seeded sample of that many above it). `report`: "drifted" (default),
    "always" or "never": when Evidently's HTML report is drawn (a plain table of the decision otherwise).
    """
    mode = report
    report = check_drift(current, reference, model_name=model_name, columns=columns, drift_share=drift_share,
                         importance=importance, min_rows=min_rows, alpha=alpha, workspace=Workspace(workspace),
                         sample_rows=sample_rows, report_rows=report_rows, exact_rows=exact_rows, report=mode)
    logger = run_logger()
    logged_to = None
    if champion_run_id:
        try:
            logged_to = log_drift_run(report, champion_run_id=champion_run_id, champion_version=champion_version,
                                      mlflow_server=mlflow_server or MlflowServer(), workspace=Workspace(workspace))
        except Exception as exc:  # the decision stands without its copy in MLflow
            logger.warning("could not log the drift report of %s to MLflow (%s: %s); it stays at %s", model_name,
                           type(exc).__name__, brief(str(exc)), report.report_path)
    create_link_artifact(key=artifact_key("drift-report", model_name), link=f"file://{report.report_path}",
                         link_text=f"{'Evidently drift report' if report.report_kind == 'evidently' else 'Drift table'}"
                                   f" (decision: {report.decision}, {report.drift_share:.0%} of the importance "
                                   "drifted)",
                         description=f"Drift of {current.short()} against {reference.short()}"
                                     + (f" (report drawn from {report.report_rows} rows a side)"
                                        if report.report_kind == "evidently" else " (the decision's table)"))
    # The UI does not open file:// links: the summary and the top columns are readable in place.
    create_markdown_artifact(
        render_summary(report, logged_to=logged_to) + "\n\n## Every column\n\n"
        f"min_rows {report.min_rows}; alpha {report.alpha}"
        + (f"; statistics on a sample of {report.sample_rows} rows a side" if report.sample_rows else "")
        + (f"; numeric statistics on a seeded sample of {report.numeric_sample_rows} rows a side (exact up to "
           f"{report.exact_rows}; category counts from every row)" if report.numeric_sample_rows else "")
        + "\n\n" + markdown_table(report),
        key=artifact_key("drift", model_name), description="Drift decision, top drifted columns, every column")
    if report.decision == "drifted" and not emit:
        logger.warning("drift detected for %s: %s No event: the caller decides.", model_name, report.reason)
    elif report.decision == "drifted":
        event_id = emit_drift_event(report, champion_version)
        logger.warning("drift detected for %s: %s Emitted %s (%s)", model_name, report.reason, DRIFT_EVENT, event_id)
    else:
        logger.info("no drift event for %s: %s", model_name, report.reason)
    return report
