"""Wide data's drift check fanned out by column group on a 2-worker Dask LocalCluster, against the same check in
one process (the floor), measured in the same run; the reports are checked equal column by column.

    OMP_NUM_THREADS=1 .venv/bin/python bench/dask_fanout.py [--rows 200000] [--width 60] [--per-task 15]

Writes bench/results/<date>-dask-fanout.{json,md}. The workers are started and warmed before timing: a cluster
reached by its address outlives the flow runs it serves. The split says where the time goes: the statistics
(what fans out) and the decision with its Evidently HTML report (made once, in the flow's process).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--width", type=int, default=60)
    parser.add_argument("--per-task", type=int, default=15)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from distributed import LocalCluster
    from prefect.testing.utilities import prefect_test_harness

    from prefect_mlops.flows.fleet import drift_check_columns
    from prefect_mlops.tasks.drift import check_drift, drift_report, drift_statistics
    from prefect_mlops.workspace import Workspace

    rng = np.random.default_rng(0)
    ws = Workspace(tempfile.mkdtemp(prefix="dask-fanout-"))
    ref = ws.write_snapshot(pd.DataFrame({f"x{i}": rng.normal(size=args.rows) for i in range(args.width)}), name="r")
    cur = ws.write_snapshot(pd.DataFrame({f"x{i}": rng.normal(0.05 * (i % 3), 1, args.rows)
                                          for i in range(args.width)}), name="c")
    columns = [f"x{i}" for i in range(args.width)]
    load_start = os.getloadavg()[0]
    times: dict[str, list[float]] = {"in_process": [], "fanned": [], "statistics": [], "decision_and_report": []}
    with prefect_test_harness(server_startup_timeout=120), \
            LocalCluster(n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None) as cluster:
        address = cluster.scheduler_address
        drift_check_columns(cur, ref, "warm", columns[:4], columns_per_task=2, address=address,
                            workspace=str(ws.root))
        for _ in range(args.repeats):
            start = time.perf_counter()
            alone = check_drift(cur, ref, model_name="m", columns=columns, workspace=ws)
            times["in_process"].append(time.perf_counter() - start)
            start = time.perf_counter()
            fanned = drift_check_columns(cur, ref, "m", columns, columns_per_task=args.per_task, address=address,
                                         workspace=str(ws.root))
            times["fanned"].append(time.perf_counter() - start)
            assert [c.model_dump() for c in alone.columns] == [c.model_dump() for c in fanned.columns]
            start = time.perf_counter()
            per_column = drift_statistics(cur, ref, columns)
            times["statistics"].append(time.perf_counter() - start)
            start = time.perf_counter()
            drift_report(per_column, cur, ref, model_name="m", columns=columns, workspace=ws)
            times["decision_and_report"].append(time.perf_counter() - start)
    medians = {k: statistics.median(v) for k, v in times.items()}
    result = {"date": date.today().isoformat(), "rows": args.rows, "width": args.width, "per_task": args.per_task,
              "groups": -(-args.width // args.per_task), "workers": 2, "repeats": args.repeats, "times_s": times,
              "medians_s": medians, "fanned_over_in_process": medians["fanned"] / medians["in_process"],
              "load_average": [load_start, os.getloadavg()[0]], "cpus": os.cpu_count(),
              "python": platform.python_version()}
    RESULTS.mkdir(exist_ok=True)
    stem = RESULTS / f"{result['date']}-dask-fanout"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    stem.with_suffix(".md").write_text(
        f"### Drift check by column group on Dask ({result['date']}, `bench/dask_fanout.py`)\n\n"
        f"{args.rows:,} rows x {args.width} numeric columns, {result['groups']} groups of {args.per_task} on a "
        f"2-worker LocalCluster (warm), {os.cpu_count()} CPUs, load average {load_start:.1f} -> "
        f"{os.getloadavg()[0]:.1f}; medians of {args.repeats}.\n\n"
        "| in one process (floor) | fanned out | fanned / floor | of the floor: statistics | "
        "of the floor: decision + HTML report |\n|---|---|---|---|---|\n"
        f"| {medians['in_process']:.2f} s | {medians['fanned']:.2f} s | {result['fanned_over_in_process']:.2f}x | "
        f"{medians['statistics']:.2f} s | {medians['decision_and_report']:.2f} s |\n")
    print(stem.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
