"""Per-column drift statistics and the drift decision, in numpy and scipy only.

The decision has to mean the same at 100 rows and at 10 million. A p-value alone does not:
with enough rows every real-world difference is "significant", and with few rows nothing is.
So a column drifts only when both hold:

- its **effect size** passes a threshold that does not depend on n: PSI on the reference's
  deciles, or Wasserstein distance in units of the reference's standard deviation (numbers);
  PSI on category frequencies (categories). Jensen-Shannon distance on the same bins is reported;
- its test's p-value (two-sample KS for numbers, chi-squared on the 2xK table for categories),
  **Holm-corrected** over the columns, is below `alpha`: a small window cannot trigger on noise.

The dataset drifts when the importance-weighted share of drifted columns reaches `drift_share`.
Below `min_rows` rows on either side nothing is decided.

Example:
    ```python
    import numpy as np
    from prefect_mlops.tasks._drift_stats import decide, numeric_stats
    rng = np.random.default_rng(0)
    ref, cur = rng.normal(size=5000), rng.normal(0.5, 1, size=5000)
    verdict = decide({"x": numeric_stats(ref, cur, column="x")})
    assert verdict.decision == "drifted" and verdict.columns[0].method == "wasserstein"
    ```
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np

from prefect_mlops.errors import ConfigError

Decision = Literal["drifted", "stable", "not-enough-data"]
Kind = Literal["numeric", "categorical"]

BINS = 10
# Empty bins get this share before PSI's logarithm. Fixed (not 1/n), so PSI stays a property
# of the two distributions and does not grow with the sample size.
PSI_EPSILON = 1e-4
# Above this many rows a side, KS p-values come from Smirnov's asymptotic distribution, computed
# here from one merge of the sorted samples; at or below it from scipy's exact ks_2samp. The
# switch point is scipy's own ('auto' method), so p-values equal `scipy.stats.ks_2samp`'s.
KS_EXACT_MAX_N = 10_000


@dataclass(frozen=True)
class Thresholds:
    """Effect sizes at which a column counts as drifted (when its corrected p-value is also < alpha).

    - `psi` 0.2: the credit-scoring convention (< 0.1 no shift, 0.1-0.25 moderate, > 0.25 major);
      a shift of the mean by 0.45 standard deviations of a normal column gives about 0.2.
    - `wasserstein` 0.1: the Wasserstein distance divided by the reference's standard deviation,
      so 0.1 is a tenth of a standard deviation of mass moved; the same definition and threshold
      Evidently uses for its normed Wasserstein, so the HTML report and the decision agree.
    - `jensen_shannon`: reported against it only (on the same bins as PSI it says the same thing:
      JS distance is about sqrt(PSI/8), so 0.2 PSI ~ 0.16 JS); it is not part of the decision.
    """

    psi: float = 0.2
    wasserstein: float = 0.1
    jensen_shannon: float = 0.16


@dataclass(frozen=True)
class ColumnStats:
    """The statistics of one column: effect sizes and the test's raw p-value.

    `wasserstein` is normed by the reference's standard deviation (None for categories).
    `reference_count`/`current_count` are the values compared; `*_missing` the nulls, NaNs and
    infinities left out. Statistics are NaN when a side has no value.
    """

    column: str
    kind: Kind
    reference_count: int
    current_count: int
    reference_missing: int
    current_missing: int
    psi: float
    jensen_shannon: float
    p_value: float
    test: str
    wasserstein: float | None = None
    statistic: float = math.nan  # KS D or the chi-squared statistic
    unseen_share: float | None = None  # categories: share of current values in categories the reference lacks


@dataclass(frozen=True)
class ColumnVerdict:
    """One column's statistics and its decision."""

    stats: ColumnStats
    decision: Decision
    drifted: bool
    p_adjusted: float | None
    importance: float
    method: str  # the effect that decided: "psi" or "wasserstein"
    effect: float
    threshold: float

    @property
    def column(self) -> str:
        return self.stats.column


@dataclass(frozen=True)
class DatasetVerdict:
    """The dataset's decision: importance-weighted share of drifted columns against `drift_share`."""

    decision: Decision
    detected: bool
    drift_share: float
    threshold: float
    reason: str
    columns: list[ColumnVerdict] = field(default_factory=list)
    reference_rows: int = 0
    current_rows: int = 0

    @property
    def drifted_columns(self) -> list[str]:
        return [c.column for c in self.columns if c.drifted]


# ---------------------------------------------------------------- numbers


def numeric_stats(reference: Any, current: Any, *, column: str = "value", bins: int = BINS,
                  epsilon: float = PSI_EPSILON) -> ColumnStats:
    """PSI, normed Wasserstein, Jensen-Shannon and the KS p-value of two numeric samples.

    Non-finite values are left out and counted. Each side is sorted once; the decile edges,
    both histograms, KS's D and the Wasserstein distance all come from the sorted arrays and one
    merge of them, which costs less than scipy's `ks_2samp` alone on 1M rows.

    Example:
        ```python
        import numpy as np
        from prefect_mlops.tasks._drift_stats import numeric_stats
        s = numeric_stats(np.arange(100.0), np.arange(100.0) + 50, column="x")
        assert s.psi > 1 and s.p_value < 1e-6
        ```
    """
    ref, ref_missing = _finite(reference)
    cur, cur_missing = _finite(current)
    n1, n2 = ref.size, cur.size
    if n1 == 0 or n2 == 0:
        return ColumnStats(column, "numeric", n1, n2, ref_missing, cur_missing, math.nan, math.nan, math.nan,
                           "ks", wasserstein=math.nan)
    ref.sort()
    cur.sort()
    # Reference deciles as interior cut points; ties (discrete columns) merge bins. Bins are
    # (-inf, e1], (e1, e2], ..., (ek, inf): current values outside the reference's range still count.
    edges = np.unique(_sorted_quantiles(ref, np.linspace(0, 1, bins + 1)[1:-1]))
    ref_counts = _bin_counts(ref, edges)
    cur_counts = _bin_counts(cur, edges)
    ref_share, cur_share = ref_counts / n1, cur_counts / n2
    distance, d = _wasserstein_and_ks(ref, cur)
    return ColumnStats(
        column=column, kind="numeric", reference_count=n1, current_count=n2, reference_missing=ref_missing,
        current_missing=cur_missing, psi=psi(ref_share, cur_share, epsilon), jensen_shannon=jensen_shannon(
            ref_share, cur_share), p_value=_ks_p_value(ref, cur, d), test="ks",
        wasserstein=_normed(distance, ref), statistic=d)


def _finite(values: Any) -> tuple[np.ndarray, int]:
    """A float64 copy without NaN/inf, and how many were left out."""
    array = np.asarray(values, dtype="float64").ravel()
    keep = np.isfinite(array)
    kept = array[keep]  # boolean indexing always copies: sorting it in place is safe
    return kept, int(array.size - kept.size)


def _sorted_quantiles(sorted_values: np.ndarray, q: np.ndarray) -> np.ndarray:
    """np.quantile's default ('linear') on an already sorted array, without re-partitioning it."""
    position = q * (sorted_values.size - 1)
    low = np.floor(position).astype(np.int64)
    high = np.minimum(low + 1, sorted_values.size - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


def _bin_counts(sorted_values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    below = np.searchsorted(sorted_values, edges, side="right")
    return np.diff(np.concatenate(([0], below, [sorted_values.size]))).astype("float64")


def _wasserstein_and_ks(ref: np.ndarray, cur: np.ndarray) -> tuple[float, float]:
    """W1 distance and KS's D from the two sorted samples, by one merge.

    Walking the merged values, F_ref and F_cur are the running counts of each side; W1 is the
    area between them, D their largest gap at the last of each run of equal values (ties: the
    empirical CDFs jump only there). Same numbers as scipy's wasserstein_distance and ks_2samp.
    """
    n1, n2 = ref.size, cur.size
    merged = np.concatenate((ref, cur))
    order = np.argsort(merged, kind="stable")  # two sorted runs: a linear merge for timsort
    values = merged[order]
    from_ref = np.cumsum(order < n1)
    gap = from_ref / n1 - (np.arange(1, n1 + n2 + 1) - from_ref) / n2
    steps = np.diff(values)
    distance = float(np.dot(np.abs(gap[:-1]), steps))
    ends = np.append(steps > 0, True)
    d = float(np.max(np.abs(gap[ends])))
    return distance, d


def _normed(distance: float, ref: np.ndarray) -> float:
    """The Wasserstein distance in units of the reference's standard deviation.

    The std (not IQR/1.349) is Evidently's normalisation, so the report shows the same number.
    A std of ~0 means a constant reference, whose IQR is 0 as well, so no robust scale can
    rescue it: then any moved mass is infinite drift in these units and none is 0. An outlier
    that inflates the std hides a shift from this number, never from PSI, whose decile bins it
    barely moves; the decision takes either.
    """
    scale = float(np.std(ref))
    if scale <= 1e-12 * max(1.0, abs(float(ref[ref.size // 2]))):
        return 0.0 if distance <= 1e-12 * max(1.0, abs(float(ref[0]))) else math.inf
    return distance / scale


def _ks_p_value(ref: np.ndarray, cur: np.ndarray, d: float) -> float:
    from scipy import stats

    if max(ref.size, cur.size) <= KS_EXACT_MAX_N:
        return float(stats.ks_2samp(ref, cur).pvalue)
    m, n = sorted((float(ref.size), float(cur.size)), reverse=True)
    return float(np.clip(stats.kstwo.sf(d, np.round(m * n / (m + n))), 0.0, 1.0))


# ---------------------------------------------------------------- categories


def category_counts(values: Any) -> tuple[dict[Any, int], int]:
    """Counts per category of an array of labels, and the number of missing values (None/NaN).

    For large string columns count in Arrow (`pyarrow.compute.value_counts`) and pass the dict
    to `categorical_stats` instead: sorting a million Python strings is slow.
    """
    array = np.asarray(values).ravel()
    if array.dtype.kind in "biuf":  # class labels as numbers or booleans: no Python loop
        missing = np.isnan(array) if array.dtype.kind == "f" else np.zeros(array.size, dtype=bool)
        keys, numbers = np.unique(array[~missing], return_counts=True)
        return dict(zip(keys.tolist(), numbers.tolist(), strict=True)), int(missing.sum())
    array = array.astype(object)
    missing = np.array([v is None or (isinstance(v, float) and math.isnan(v)) for v in array], dtype=bool)
    present = array[~missing]
    counts: dict[Any, int] = {}
    if present.size:
        try:
            keys, numbers = np.unique(present, return_counts=True)
        except TypeError:  # mixed types cannot be ordered: count them one by one
            from collections import Counter

            return dict(Counter(present.tolist())), int(missing.sum())
        counts = {key: int(number) for key, number in zip(keys.tolist(), numbers.tolist(), strict=True)}
    return counts, int(missing.sum())


def categorical_stats(reference: Any, current: Any, *, column: str = "value", epsilon: float = PSI_EPSILON,
                      reference_missing: int = 0, current_missing: int = 0) -> ColumnStats:
    """PSI, Jensen-Shannon and the chi-squared p-value of two categorical samples.

    `reference`/`current`: arrays of labels, or dicts label -> count (missing values then given
    apart). Categories are the union of both sides; one the reference never saw has count 0
    there (PSI's epsilon keeps its logarithm finite) and its share is `unseen_share`.

    Example:
        ```python
        from prefect_mlops.tasks._drift_stats import categorical_stats
        s = categorical_stats({"a": 500, "b": 500}, {"a": 450, "b": 450, "new": 100}, column="plan")
        assert round(s.unseen_share, 2) == 0.1 and s.p_value < 1e-6
        ```
    """
    if not isinstance(reference, Mapping):
        reference, reference_missing = category_counts(reference)
    if not isinstance(current, Mapping):
        current, current_missing = category_counts(current)
    keys = sorted(set(reference) | set(current), key=lambda k: (str(type(k)), str(k)))
    ref_counts = np.array([reference.get(k, 0) for k in keys], dtype="float64")
    cur_counts = np.array([current.get(k, 0) for k in keys], dtype="float64")
    n1, n2 = int(ref_counts.sum()), int(cur_counts.sum())
    if n1 == 0 or n2 == 0:
        return ColumnStats(column, "categorical", n1, n2, reference_missing, current_missing, math.nan, math.nan,
                           math.nan, "chi2")
    from scipy import stats

    ref_share, cur_share = ref_counts / n1, cur_counts / n2
    # 2xK contingency table; with one category (dof 0) scipy answers chi2 = 0, p = 1.
    result = stats.chi2_contingency(np.vstack((ref_counts, cur_counts)))
    return ColumnStats(
        column=column, kind="categorical", reference_count=n1, current_count=n2,
        reference_missing=reference_missing, current_missing=current_missing,
        psi=psi(ref_share, cur_share, epsilon), jensen_shannon=jensen_shannon(ref_share, cur_share),
        p_value=float(result.pvalue), test="chi2", statistic=float(result.statistic),
        unseen_share=float(cur_share[ref_counts == 0].sum()))


# ---------------------------------------------------------------- effect sizes


def psi(reference_share: Any, current_share: Any, epsilon: float = PSI_EPSILON) -> float:
    """Population stability index: sum((c - r) * ln(c / r)) over bins, shares floored at `epsilon`.

    Example:
        ```python
        import math
        from prefect_mlops.tasks._drift_stats import psi
        assert math.isclose(psi([0.5, 0.5], [0.25, 0.75]), 0.25 * math.log(2) + 0.25 * math.log(1.5))
        ```
    """
    r = np.maximum(np.asarray(reference_share, dtype="float64"), epsilon)
    c = np.maximum(np.asarray(current_share, dtype="float64"), epsilon)
    return float(np.sum((c - r) * np.log(c / r)))


def jensen_shannon(reference_share: Any, current_share: Any) -> float:
    """Jensen-Shannon distance in base 2 (0 same, 1 disjoint); scipy's `jensenshannon(p, q, base=2)`."""
    p = np.asarray(reference_share, dtype="float64")
    q = np.asarray(current_share, dtype="float64")
    p, q = p / p.sum(), q / q.sum()
    m = (p + q) / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        kl_p = np.where(p > 0, p * np.log2(p / m), 0.0).sum()
        kl_q = np.where(q > 0, q * np.log2(q / m), 0.0).sum()
    return float(math.sqrt(max((kl_p + kl_q) / 2, 0.0)))


# ---------------------------------------------------------------- decision


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values: reject column i at level alpha when adjusted[i] < alpha.

    Holm, not Benjamini-Hochberg: the decision is "did any column the model relies on drift",
    and one falsely drifted important column is enough to start a retraining, so the error to
    bound is the chance of any false column (family-wise), which BH does not bound. Holm bounds
    it under any dependence between columns (features are correlated), and is never less
    powerful than plain Bonferroni. NaN p-values stay NaN and do not count as tests.

    Example:
        ```python
        from prefect_mlops.tasks._drift_stats import holm
        assert [round(p, 3) for p in holm([0.01, 0.04, 0.03])] == [0.03, 0.06, 0.06]
        ```
    """
    p = np.asarray(p_values, dtype="float64")
    out = np.full(p.shape, math.nan)
    tested = np.flatnonzero(~np.isnan(p))
    m = tested.size
    if m == 0:
        return out
    order = tested[np.argsort(p[tested], kind="stable")]
    adjusted = np.maximum.accumulate((m - np.arange(m)) * p[order])
    out[order] = np.minimum(adjusted, 1.0)
    return out


def importance_weights(columns: Sequence[str], importance: Mapping[str, float] | None = None) -> dict[str, float]:
    """Weights summing to 1: `importance` clipped at 0 (a column it leaves out weighs 0); equal when
    `importance` is None or gives every column 0 (or NaN).

    Example:
        ```python
        from prefect_mlops.tasks._drift_stats import importance_weights
        assert importance_weights(["a", "b"], {"a": 3, "b": -1}) == {"a": 1.0, "b": 0.0}
        assert importance_weights(["a", "b"]) == {"a": 0.5, "b": 0.5}
        ```
    """
    if not columns:
        return {}
    raw = {c: 0.0 for c in columns}
    if importance is not None:
        for c in columns:
            value = float(importance.get(c, 0.0))
            raw[c] = value if math.isfinite(value) and value > 0 else 0.0
    total = sum(raw.values())
    if total <= 0:
        return {c: 1 / len(columns) for c in columns}
    return {c: v / total for c, v in raw.items()}


def judge(stats: ColumnStats, *, p_adjusted: float | None, importance: float = 1.0, min_rows: int = 100,
          alpha: float = 0.05, thresholds: Thresholds = Thresholds()) -> ColumnVerdict:
    """One column's decision from its statistics and its corrected p-value (see `decide`)."""
    candidates = [("psi", stats.psi, thresholds.psi)]
    if stats.kind == "numeric":
        candidates.append(("wasserstein", stats.wasserstein if stats.wasserstein is not None else math.nan,
                           thresholds.wasserstein))
    # The effect reported is the one closest to (or furthest past) its threshold.
    method, effect, threshold = max(candidates, key=lambda c: c[1] / c[2] if not math.isnan(c[1]) else -math.inf)
    if min(stats.reference_count, stats.current_count) < max(min_rows, 1) or p_adjusted is None \
            or math.isnan(p_adjusted):
        return ColumnVerdict(stats, "not-enough-data", False, p_adjusted, importance, method, effect, threshold)
    drifted = any(value >= limit for _, value, limit in candidates) and p_adjusted < alpha
    return ColumnVerdict(stats, "drifted" if drifted else "stable", drifted, p_adjusted, importance, method,
                         effect, threshold)


def decide(stats: Mapping[str, ColumnStats], *, importance: Mapping[str, float] | None = None,
           drift_share: float = 0.5, min_rows: int = 100, alpha: float = 0.05,
           thresholds: Thresholds = Thresholds(), reference_rows: int | None = None,
           current_rows: int | None = None) -> DatasetVerdict:
    """The dataset's drift decision from per-column statistics.

    - fewer than `min_rows` rows on either side (`*_rows`, else the columns' largest counts):
      "not-enough-data", nothing decided;
    - a column with fewer than `min_rows` non-missing values a side is not decided (not drifted);
    - p-values of the decided columns are Holm-corrected together;
    - a column drifts when an effect passes its threshold and its corrected p < `alpha`;
    - "drifted" when the importance-weighted share of drifted columns is >= `drift_share`.
    """
    names = list(stats)
    reference_rows = reference_rows if reference_rows is not None else max(
        (s.reference_count + s.reference_missing for s in stats.values()), default=0)
    current_rows = current_rows if current_rows is not None else max(
        (s.current_count + s.current_missing for s in stats.values()), default=0)
    weights = importance_weights(names, importance)
    enough = min(reference_rows, current_rows) >= max(min_rows, 1)
    testable = [enough and min(s.reference_count, s.current_count) >= max(min_rows, 1) for s in stats.values()]
    adjusted = holm([s.p_value if ok else math.nan for s, ok in zip(stats.values(), testable, strict=True)])
    columns = [judge(stats[name], p_adjusted=None if math.isnan(adj) else float(adj), importance=weights[name],
                     min_rows=min_rows, alpha=alpha, thresholds=thresholds)
               for name, adj in zip(names, adjusted, strict=True)]
    if not enough:
        columns = [replace(c, decision="not-enough-data", drifted=False) for c in columns]
        reason = (f"not enough data: {current_rows} current and {reference_rows} reference rows, "
                  f"at least {min_rows} a side are needed to decide")
        return DatasetVerdict("not-enough-data", False, 0.0, drift_share, reason, columns, reference_rows,
                              current_rows)
    share = float(sum(c.importance for c in columns if c.drifted))
    detected = share >= drift_share - 1e-12  # weights are floats: 0.1 + 0.4 may sum to 0.49999...
    decision: Decision = "drifted" if detected else "stable"
    return DatasetVerdict(decision, detected, share, drift_share,
                          _reason(decision, columns, share, drift_share, alpha, current_rows, reference_rows),
                          columns, reference_rows, current_rows)


def _reason(decision: Decision, columns: list[ColumnVerdict], share: float, threshold: float, alpha: float,
            current_rows: int, reference_rows: int) -> str:
    drifted = [c for c in columns if c.drifted]
    head = (f"{decision}: {len(drifted)} of {len(columns)} columns drifted, carrying {share:.0%} of the "
            f"importance (threshold {threshold:.0%}), {current_rows} current vs {reference_rows} reference rows")
    if drifted:
        top = max(drifted, key=lambda c: (c.importance, c.effect / c.threshold))
        detail = (f"; {top.column}: {top.method} {top.effect:.3g} >= {top.threshold:g}, "
                  f"Holm p {top.p_adjusted:.2g} < {alpha:g}")
    else:
        decided = [c for c in columns if c.decision != "not-enough-data" and not math.isnan(c.effect)]
        if decided:
            top = max(decided, key=lambda c: c.effect / c.threshold)
            detail = (f"; largest effect {top.column}: {top.method} {top.effect:.3g} (threshold {top.threshold:g}), "
                      f"Holm p {top.p_adjusted:.2g}")
        else:
            detail = ""
    undecided = [c.column for c in columns if c.decision == "not-enough-data"]
    if undecided:
        detail += f"; too few values to decide {', '.join(undecided)}"
    return head + detail + "."


def label_drift(reference_y: Any, current_y: Any, kind: str, *, min_rows: int = 100, alpha: float = 0.05,
                thresholds: Thresholds = Thresholds(), column: str = "target") -> ColumnVerdict:
    """Drift of the target's distribution (one test, so no correction).

    `kind`: "numeric" (or "regression") or "categorical" (or "classification").

    Example:
        ```python
        import numpy as np
        from prefect_mlops.tasks._drift_stats import label_drift
        v = label_drift(np.r_[np.zeros(900), np.ones(100)], np.r_[np.zeros(500), np.ones(500)], "classification")
        assert v.decision == "drifted" and v.method == "psi"
        ```
    """
    kinds = {"numeric": "numeric", "regression": "numeric", "categorical": "categorical",
             "classification": "categorical"}
    if kind not in kinds:
        raise ConfigError(f"label drift of {column!r}: kind {kind!r} is not one of {sorted(kinds)}; "
                          "pass 'classification' for class labels, 'regression' for numbers")
    if kinds[kind] == "numeric":
        stats = numeric_stats(reference_y, current_y, column=column)
    else:
        stats = categorical_stats(reference_y, current_y, column=column)
    testable = min(stats.reference_count, stats.current_count) >= max(min_rows, 1) and not math.isnan(stats.p_value)
    return judge(stats, p_adjusted=stats.p_value if testable else None, importance=1.0, min_rows=min_rows,
                 alpha=alpha, thresholds=thresholds)
