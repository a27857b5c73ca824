"""What drift-check's decision costs on 1M rows, against a numpy/scipy floor timed in the same run.

    OMP_NUM_THREADS=1 python bench/drift_stats.py [--rows 1000000] [--repeat 5] [--end-to-end] [--json PATH]

Data: `bench/data.py`'s deterministic generator (reference, and drifted current data), 10 of
its columns: 7 numeric (normal, lognormal, Poisson counts, uniform; some with gaps) and 3
categorical strings; built in memory as Arrow tables, so no read is timed.

- floor, per column: numbers to float64 without NaN, `np.quantile` deciles of the reference,
  `np.histogram` of both sides, PSI, `scipy.stats.ks_2samp`; categories: Arrow `value_counts`,
  PSI, `scipy.stats.chi2_contingency`. The least a per-column PSI + test check can do.
- ours: `column_statistics` (PSI, normed Wasserstein, Jensen-Shannon, KS / chi-squared) and
  `decide` (Holm, importance weights, the decision): everything the decision needs.

The two alternate, `--repeat` times each after a warm-up; the medians and their ratio are
printed (the target: ours <= 3x the floor). `--end-to-end` also times `check_drift` on Parquet
files (the reads, and Evidently's HTML report on its 5,000-row sample; Evidently's import is
done before timing) against the floor plus the same reads.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import data

COLUMNS = [*data.NUMERIC[:7], *data.CATEGORICAL[:3]]
TARGET_RATIO = 3.0


def floor(reference, current, columns: list[str]) -> dict[str, dict[str, float]]:
    """Per column: PSI on the reference's deciles and a KS test (numbers), PSI and chi-squared (categories)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    from scipy import stats

    out = {}
    for column in columns:
        ref_col, cur_col = reference.column(column), current.column(column)
        if pa.types.is_integer(ref_col.type) or pa.types.is_floating(ref_col.type):
            ref = ref_col.to_numpy().astype("float64")
            cur = cur_col.to_numpy().astype("float64")
            ref, cur = ref[~np.isnan(ref)], cur[~np.isnan(cur)]
            p_value = stats.ks_2samp(ref, cur).pvalue
            edges = np.unique(np.quantile(ref, np.linspace(0, 1, 11)))
            ref_share = np.histogram(ref, edges)[0] / ref.size
            cur_share = np.histogram(np.clip(cur, edges[0], edges[-1]), edges)[0] / cur.size
        else:
            counts = [pc.value_counts(c) for c in (ref_col, cur_col)]
            keys = sorted({k for c in counts for k in c.field("values").to_pylist() if k is not None}, key=str)
            table = np.array([[dict(zip(c.field("values").to_pylist(), c.field("counts").to_pylist(), strict=True))
                               .get(k, 0) for k in keys] for c in counts], dtype="float64")
            p_value = stats.chi2_contingency(table).pvalue
            ref_share, cur_share = table[0] / table[0].sum(), table[1] / table[1].sum()
        ref_share, cur_share = np.maximum(ref_share, 1e-4), np.maximum(cur_share, 1e-4)
        out[column] = {"p_value": float(p_value),
                       "psi": float(np.sum((cur_share - ref_share) * np.log(cur_share / ref_share)))}
    return out


def ours(reference, current, columns: list[str]):
    from prefect_mlops.tasks import _drift_stats
    from prefect_mlops.tasks.drift import column_statistics

    return _drift_stats.decide(column_statistics(reference, current, columns),
                               reference_rows=reference.num_rows, current_rows=current.num_rows)


def timed(fn, *args) -> tuple[float, object]:
    started = time.perf_counter()
    result = fn(*args)
    return time.perf_counter() - started, result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--end-to-end", action="store_true", help="also time check_drift on Parquet files")
    parser.add_argument("--json", type=Path, help="write the numbers here")
    args = parser.parse_args(argv)

    import pyarrow as pa

    started = time.perf_counter()
    reference = data.make_table(args.rows).select(COLUMNS)
    current = data.make_table(args.rows, drifted=True).select(COLUMNS)
    reference, current = (pa.table({c: t.column(c).combine_chunks() for c in COLUMNS}) for t in (reference, current))
    print(f"data: {args.rows:,} rows x {len(COLUMNS)} columns a side "
          f"({len(COLUMNS) - 3} numeric, 3 categorical), built in {time.perf_counter() - started:.1f} s")

    floor(reference, current, COLUMNS)  # warm-up: imports, first-touch of the buffers
    verdict = ours(reference, current, COLUMNS)
    floor_s, ours_s = [], []
    for _ in range(args.repeat):
        floor_s.append(timed(floor, reference, current, COLUMNS)[0])
        ours_s.append(timed(ours, reference, current, COLUMNS)[0])
    result = {"rows": args.rows, "columns": len(COLUMNS), "repeat": args.repeat,
              "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "floor_s": floor_s, "ours_s": ours_s,
              "floor_median_s": statistics.median(floor_s), "ours_median_s": statistics.median(ours_s)}
    result["ratio"] = result["ours_median_s"] / result["floor_median_s"]
    result["decision"], result["drifted_columns"] = verdict.decision, verdict.drifted_columns
    print(f"floor (np.quantile/np.histogram + ks_2samp | value_counts + chi2): "
          f"median {result['floor_median_s']:.3f} s of {args.repeat}")
    print(f"ours (PSI, Wasserstein, Jensen-Shannon, KS/chi2, Holm, decision):  "
          f"median {result['ours_median_s']:.3f} s of {args.repeat}")
    print(f"ratio ours / floor: {result['ratio']:.2f}x (target <= {TARGET_RATIO:g}x: "
          f"{'met' if result['ratio'] <= TARGET_RATIO else 'NOT met'})")
    print(f"decision on the drifted data: {verdict.decision}; {verdict.reason}")

    if args.end_to_end:
        result.update(end_to_end(reference, current, args.repeat))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


def end_to_end(reference, current, repeat: int) -> dict:
    """check_drift on Parquet (reads + statistics + Evidently on a sample) against reads + the floor."""
    import evidently.presets  # noqa: F401  (import cost is not the check's; paid before timing)
    import pyarrow.parquet as pq

    from prefect_mlops.refs import DatasetRef
    from prefect_mlops.tasks.drift import check_drift
    from prefect_mlops.workspace import Workspace

    folder = Path(tempfile.mkdtemp(prefix="drift-bench-"))
    refs = []
    for name, table in (("reference", reference), ("current", current)):
        pq.write_table(table, folder / f"{name}.parquet")
        refs.append(DatasetRef(name=name, uri=str(folder / f"{name}.parquet"), fingerprint=name * 8,
                               rows=table.num_rows, columns={c: "x" for c in COLUMNS}))
    workspace = Workspace(folder / "workspace")

    def read_and_floor():
        tables = [pq.read_table(r.uri, columns=COLUMNS) for r in refs]
        return floor(tables[0], tables[1], COLUMNS)

    def check():
        return check_drift(refs[1], refs[0], model_name="bench", columns=COLUMNS, workspace=workspace)

    check()
    read_and_floor()
    floor_s, check_s = [], []
    for _ in range(repeat):
        floor_s.append(timed(read_and_floor)[0])
        check_s.append(timed(check)[0])
    out = {"e2e_floor_median_s": statistics.median(floor_s), "e2e_check_median_s": statistics.median(check_s)}
    out["e2e_ratio"] = out["e2e_check_median_s"] / out["e2e_floor_median_s"]
    print(f"end to end: check_drift (reads, statistics, Evidently report on 5,000 rows a side) median "
          f"{out['e2e_check_median_s']:.3f} s; reads + floor {out['e2e_floor_median_s']:.3f} s; "
          f"ratio {out['e2e_ratio']:.2f}x")
    return out


if __name__ == "__main__":
    main()
