"""_drift_stats: each statistic against scipy, Holm, importance weights, min_rows, label drift."""

from __future__ import annotations

import inspect
import math
import re
import textwrap

import numpy as np
import pytest
from scipy import stats as scipy_stats
from scipy.spatial.distance import jensenshannon

from prefect_mlops.errors import ConfigError
from prefect_mlops.tasks import _drift_stats as ds


def reference_bins(ref: np.ndarray, cur: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Decile shares computed the plain way: np.quantile edges, np.digitize into (a, b] bins."""
    edges = np.unique(np.quantile(ref, np.linspace(0, 1, 11)[1:-1]))
    shares = [np.bincount(np.digitize(x, edges, right=True), minlength=edges.size + 1) / x.size for x in (ref, cur)]
    return shares[0], shares[1]


@pytest.mark.parametrize(("n1", "n2"), [(60, 45), (1_000, 1_300), (30_000, 20_000)])
def test_numeric_statistics_match_scipy(n1, n2):
    rng = np.random.default_rng(n1)
    ref, cur = rng.normal(10, 2, n1), rng.normal(10.3, 2.4, n2)
    got = ds.numeric_stats(ref, cur, column="x")
    ks = scipy_stats.ks_2samp(ref, cur)  # 'auto': exact up to 10,000 a side, asymptotic above
    assert got.statistic == pytest.approx(ks.statistic, abs=1e-12)
    assert got.p_value == pytest.approx(ks.pvalue, rel=1e-9, abs=1e-300)
    assert got.wasserstein == pytest.approx(scipy_stats.wasserstein_distance(ref, cur) / np.std(ref), rel=1e-9)
    ref_share, cur_share = reference_bins(ref, cur)
    assert got.jensen_shannon == pytest.approx(jensenshannon(ref_share, cur_share, base=2), rel=1e-9)
    floored = [np.maximum(s, 1e-4) for s in (ref_share, cur_share)]
    assert got.psi == pytest.approx(np.sum((floored[1] - floored[0]) * np.log(floored[1] / floored[0])), rel=1e-9)
    assert (got.reference_count, got.current_count, got.kind, got.test) == (n1, n2, "numeric", "ks")


def test_large_samples_use_the_asymptotic_ks_like_scipy():
    rng = np.random.default_rng(3)
    ref, cur = rng.normal(size=200_000), rng.normal(0.004, 1, 150_000)
    got = ds.numeric_stats(ref, cur)
    ks = scipy_stats.ks_2samp(ref, cur, method="asymp")
    assert got.statistic == pytest.approx(ks.statistic, abs=1e-12)
    assert got.p_value == pytest.approx(ks.pvalue, rel=1e-9) and 1e-6 < got.p_value < 1


def test_ties_of_a_discrete_column_match_scipy():
    rng = np.random.default_rng(4)
    ref, cur = rng.poisson(1.5, 5_000).astype(float), rng.poisson(1.7, 12_000).astype(float)
    got = ds.numeric_stats(ref, cur)
    ks = scipy_stats.ks_2samp(ref, cur)
    assert got.statistic == pytest.approx(ks.statistic, abs=1e-12)
    assert got.p_value == pytest.approx(ks.pvalue, rel=1e-9)
    assert got.wasserstein == pytest.approx(scipy_stats.wasserstein_distance(ref, cur) / np.std(ref), rel=1e-9)
    ref_share, cur_share = reference_bins(ref, cur)
    assert got.jensen_shannon == pytest.approx(jensenshannon(ref_share, cur_share, base=2), rel=1e-9)


def test_psi_by_hand():
    assert ds.psi([0.5, 0.5], [0.25, 0.75]) == pytest.approx(-0.25 * math.log(0.5) + 0.25 * math.log(1.5))
    # An empty bin is floored at epsilon = 1e-4 before the logarithm.
    by_hand = 2 * (0.4 - 0.5) * math.log(0.4 / 0.5) + (0.2 - 1e-4) * math.log(0.2 / 1e-4)
    assert ds.psi([0.5, 0.5, 0.0], [0.4, 0.4, 0.2]) == pytest.approx(by_hand)
    # On data: 1..1000 has deciles at 100.9, 200.8, ...; the current puts half its mass in the
    # first decile and half in the last, none in the eight between.
    ref = np.arange(1, 1001, dtype=float)
    cur = np.r_[np.linspace(1, 100, 500), np.linspace(901, 1000, 500)]
    by_hand = 2 * (0.5 - 0.1) * math.log(0.5 / 0.1) + 8 * (1e-4 - 0.1) * math.log(1e-4 / 0.1)
    assert ds.numeric_stats(ref, cur).psi == pytest.approx(by_hand)


def test_nans_and_infinities_are_left_out_and_counted():
    rng = np.random.default_rng(5)
    ref, cur = rng.normal(size=800), rng.normal(0.2, 1, 900)
    dirty_ref = np.r_[ref, [np.nan] * 7]
    dirty_cur = np.r_[cur[:400], [np.nan, np.inf, -np.inf], cur[400:]]
    clean, dirty = ds.numeric_stats(ref, cur), ds.numeric_stats(dirty_ref, dirty_cur)
    assert (dirty.reference_missing, dirty.current_missing) == (7, 3)
    assert (dirty.reference_count, dirty.current_count) == (800, 900)
    for name in ("psi", "wasserstein", "jensen_shannon", "p_value", "statistic"):
        assert getattr(dirty, name) == pytest.approx(getattr(clean, name), rel=1e-12), name


def test_a_constant_reference_normalises_to_zero_or_infinity():
    same = ds.numeric_stats(np.full(500, 3.0), np.full(400, 3.0))
    moved = ds.numeric_stats(np.full(500, 3.0), np.r_[np.full(390, 3.0), np.full(10, 4.0)])
    assert same.wasserstein == 0.0 and same.psi == pytest.approx(0.0)
    assert math.isinf(moved.wasserstein)


def test_categorical_statistics_match_scipy_with_unseen_categories():
    ref = np.array(["a"] * 500 + ["b"] * 300 + ["c"] * 200 + [None] * 5, dtype=object)
    cur = np.array(["a"] * 350 + ["b"] * 300 + ["c"] * 150 + ["new"] * 200 + [float("nan")] * 3, dtype=object)
    got = ds.categorical_stats(ref, cur, column="plan")
    table = np.array([[500, 300, 200, 0], [350, 300, 150, 200]])
    chi2 = scipy_stats.chi2_contingency(table)
    assert got.p_value == pytest.approx(chi2.pvalue, rel=1e-9) and got.statistic == pytest.approx(chi2.statistic)
    r, c = table[0] / 1000, table[1] / 1000
    assert got.jensen_shannon == pytest.approx(jensenshannon(r, c, base=2), rel=1e-9)
    by_hand = ((0.35 - 0.5) * math.log(0.35 / 0.5) + 0 + (0.15 - 0.2) * math.log(0.15 / 0.2)
               + (0.2 - 1e-4) * math.log(0.2 / 1e-4))
    assert got.psi == pytest.approx(by_hand)
    assert got.unseen_share == pytest.approx(0.2)
    assert (got.reference_missing, got.current_missing, got.reference_count, got.current_count) == (5, 3, 1000, 1000)
    # Counts given as dicts (what drift-check passes from Arrow) give the same statistics.
    from_counts = ds.categorical_stats({"a": 500, "b": 300, "c": 200}, {"a": 350, "b": 300, "c": 150, "new": 200},
                                       column="plan", reference_missing=5, current_missing=3)
    assert from_counts == got


def test_category_counts_of_labels_leave_missing_values_out():
    assert ds.category_counts(np.array([1.0, np.nan, 0.0, 1.0])) == ({0.0: 1, 1.0: 2}, 1)
    assert ds.category_counts(np.array([True, False, True])) == ({False: 1, True: 2}, 0)
    assert ds.category_counts(np.array(["b", None, "a", "b"], dtype=object)) == ({"a": 1, "b": 2}, 1)


def test_one_category_on_both_sides_is_no_drift():
    got = ds.categorical_stats(np.array(["x"] * 300), np.array(["x"] * 200))
    assert got.p_value == 1.0 and got.psi == 0.0 and got.jensen_shannon == 0.0


def test_holm_matches_statsmodels_and_skips_nan():
    from statsmodels.stats.multitest import multipletests

    p = np.array([0.01, 0.04, 0.03, 0.005, 0.2, 0.049])
    assert ds.holm(p) == pytest.approx(multipletests(p, method="holm")[1])
    assert list(ds.holm([0.01, 0.04, 0.03, 0.005])) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    with_nan = ds.holm([0.01, math.nan, 0.03])
    assert math.isnan(with_nan[1]) and list(with_nan[[0, 2]]) == pytest.approx([0.02, 0.03])


def fake(column: str, *, p: float, psi: float = 0.0, wasserstein: float = 0.0, rows: int = 1_000) -> ds.ColumnStats:
    return ds.ColumnStats(column=column, kind="numeric", reference_count=rows, current_count=rows,
                          reference_missing=0, current_missing=0, psi=psi, jensen_shannon=0.0, p_value=p,
                          test="ks", wasserstein=wasserstein)


def test_holm_correction_stops_three_borderline_columns():
    columns = {c: fake(c, p=0.03, wasserstein=0.3) for c in ("a", "b", "c")}
    verdict = ds.decide(columns)
    # Each would drift alone (0.03 < 0.05); corrected over three, 0.09 does not.
    assert verdict.decision == "stable" and verdict.drifted_columns == []
    assert [c.p_adjusted for c in verdict.columns] == pytest.approx([0.09] * 3)
    alone = ds.decide({"a": columns["a"]})
    assert alone.decision == "drifted" and "Holm p 0.03" in alone.reason


def test_effect_below_threshold_never_drifts_however_small_the_p_value():
    verdict = ds.decide({"a": fake("a", p=1e-300, psi=0.19, wasserstein=0.09)})
    assert verdict.decision == "stable"
    assert verdict.columns[0].method == "psi" and verdict.columns[0].effect == 0.19


def test_one_important_drifted_column_triggers_and_ten_unimportant_do_not():
    unimportant = [f"u{i}" for i in range(10)]
    importance = {"key": 0.6, **{c: 0.04 for c in unimportant}}
    only_key = {"key": fake("key", p=1e-20, wasserstein=0.5), **{c: fake(c, p=0.7) for c in unimportant}}
    verdict = ds.decide(only_key, importance=importance)
    assert verdict.decision == "drifted" and verdict.drift_share == pytest.approx(0.6)
    assert verdict.drifted_columns == ["key"]
    all_but_key = {"key": fake("key", p=0.7), **{c: fake(c, p=1e-20, wasserstein=0.5) for c in unimportant}}
    verdict = ds.decide(all_but_key, importance=importance)
    assert verdict.decision == "stable" and verdict.drift_share == pytest.approx(0.4)
    assert len(verdict.drifted_columns) == 10
    # Without importance the ten are 10/11 of the columns: drifted.
    assert ds.decide(all_but_key).decision == "drifted"


def test_importance_weights():
    assert ds.importance_weights(["a", "b"]) == {"a": 0.5, "b": 0.5}
    assert ds.importance_weights(["a", "b", "c"], {"a": 3.0, "b": -2.0}) == {"a": 1.0, "b": 0.0, "c": 0.0}
    assert ds.importance_weights(["a", "b"], {"a": 0.0, "b": -1.0}) == {"a": 0.5, "b": 0.5}
    assert ds.importance_weights(["a", "b"], {"a": math.nan, "b": 1.0, "zz": 5.0}) == {"a": 0.0, "b": 1.0}


@pytest.mark.parametrize("rows", [1, 5, 99])
def test_below_min_rows_nothing_is_decided(rows):
    rng = np.random.default_rng(rows)
    shifted = {"x": ds.numeric_stats(rng.normal(size=5_000), rng.normal(3, 1, rows), column="x")}
    verdict = ds.decide(shifted, min_rows=100)
    assert verdict.decision == "not-enough-data" and not verdict.detected and verdict.drift_share == 0.0
    assert verdict.columns[0].decision == "not-enough-data" and not verdict.columns[0].drifted
    assert f"{rows} current and 5000 reference rows, at least 100 a side" in verdict.reason


def test_a_mostly_missing_column_is_not_decided_but_the_others_are():
    rng = np.random.default_rng(6)
    mostly_nan = np.r_[rng.normal(5, 1, 50), [np.nan] * 950]
    columns = {"x": ds.numeric_stats(rng.normal(size=1_000), rng.normal(1, 1, 1_000), column="x"),
               "sparse": ds.numeric_stats(rng.normal(size=1_000), mostly_nan, column="sparse")}
    verdict = ds.decide(columns)
    assert [c.decision for c in verdict.columns] == ["drifted", "not-enough-data"]
    assert verdict.columns[1].p_adjusted is None and verdict.columns[1].stats.current_missing == 950
    assert verdict.decision == "drifted" and "too few values to decide sparse" in verdict.reason


def test_small_windows_without_drift_rarely_trigger():
    """200 unshifted 50-row windows of four columns: the dataset decision's false alarms stay under alpha."""
    rng = np.random.default_rng(10)
    false_alarms = column_alarms = 0
    for _ in range(200):
        columns = {f"x{i}": ds.numeric_stats(rng.normal(size=50), rng.normal(size=50), column=f"x{i}")
                   for i in range(4)}
        verdict = ds.decide(columns, min_rows=20)
        false_alarms += verdict.detected
        column_alarms += any(c.drifted for c in verdict.columns)
    # Holm bounds the chance of any false column at alpha (10 of 200); a dataset alarm needs two of four.
    assert false_alarms <= column_alarms <= 10


@pytest.mark.parametrize("rows", [1_000, 100_000])
def test_effect_sizes_do_not_grow_with_the_sample(rows):
    rng = np.random.default_rng(rows)
    shifted = ds.numeric_stats(rng.normal(size=rows), rng.normal(0.5, 1, rows))
    same = ds.numeric_stats(rng.normal(size=rows), rng.normal(size=rows))
    assert shifted.wasserstein == pytest.approx(0.5, abs=0.06) and shifted.psi == pytest.approx(0.238, abs=0.05)
    assert same.wasserstein < 0.06 and same.psi < 0.03


def test_label_drift_for_classes_and_numbers():
    rng = np.random.default_rng(7)
    classes = label = ds.label_drift(rng.random(2_000) < 0.1, rng.random(2_000) < 0.4, "classification")
    assert classes.decision == "drifted" and classes.stats.kind == "categorical" and classes.method == "psi"
    assert classes.p_adjusted == classes.stats.p_value  # one test: no correction
    label = ds.label_drift(rng.normal(size=3_000), rng.normal(size=3_000), "regression")
    assert label.decision == "stable" and label.stats.test == "ks"
    assert ds.label_drift([1.0] * 20, [5.0] * 20, "numeric").decision == "not-enough-data"
    with pytest.raises(ConfigError, match="kind 'binary' is not one of"):
        ds.label_drift([0, 1], [0, 1], "binary")


def test_docstring_examples_run():
    from prefect_mlops.tasks import drift

    for module in (ds, drift):
        for obj in [module, *vars(module).values()]:
            if (inspect.isfunction(obj) or inspect.isclass(obj)) and obj.__module__ != module.__name__:
                continue
            for code in re.findall(r"```python\n(.*?)```", inspect.getdoc(obj) or "", re.S):
                exec(compile(textwrap.dedent(code), f"<{getattr(obj, '__name__', module)}>", "exec"), {})
