"""`make bench-scale`: the scale curve, time and peak RSS of every stage of one cycle from 100k to 20M rows.

    python bench/scale.py [--sizes 100000,1000000,5000000,20000000] [--train-memory 4096] [--readme]

Each size runs in a fresh process (`python bench/scale.py --child ROWS`): the stages' plain
functions in sequence, as the continuous-training and drift-monitor flows order them: ingest,
validate, feature-build, train (within a training budget of `--train-memory` MiB: every row
when they fit, else a time-stratified sample), evaluate, gate/register/deploy, and the drift
check (the current window's ingest, then `check_drift` against the reference snapshot).

Per stage: wall time, RSS at its start and the peak RSS during it (a thread samples
/proc/self/statm every 5 ms; memory-mapped snapshot pages that were read count, as the kernel
counts them). Before each stage freed memory is handed back to the system (gc, Arrow's pool,
`malloc_trim`) so a stage is not charged for what an earlier one left in the allocator. The
whole process's peak is VmHWM.

The synthetic data (bench/data.py's generator, 20 columns) is written as Parquet one row group
of 1M rows at a time, so making 20M rows takes the memory of 1M; files are cached in
`bench/data/scale-*`. The suite is learned from the 100k file, its row-count band scaled to
each size. Targets (issue "Scale"): the whole cycle at 20M rows within 12 GB peak RSS;
validate and drift-check under 1.5 GB at any size.

Results: `bench/results/<date>-scale.json` and `.md`, rewritten after every size (a run cut
short keeps what it reached); with `--readme` the table also goes between the
`<!-- scale:start -->` / `<!-- scale:end -->` markers of bench/README.md.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime as dt
import gc
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import data  # noqa: E402 - the benchmark's data module, beside this file

RESULT_TAG = "SCALE-RESULT "
CHUNK_ROWS = 1_000_000
GB = 1e9
STAGES = ["ingest", "validate", "feature-build", "train", "evaluate", "gate-register-deploy",
          "drift-ingest", "drift-check"]
TARGETS = {"cycle_peak_gb_at_20m": 12.0, "validate_peak_gb": 1.5, "drift_check_peak_gb": 1.5}
MODEL = "scale"


# ---------------------------------------------------------------------------------------------- data
def scale_path(rows: int, *, drifted: bool = False) -> Path:
    return data.DATA / f"scale-{'current' if drifted else 'reference'}-{rows}-{data.GENERATOR}-s{data.SEED}.parquet"


def ensure_data(rows: int, *, drifted: bool = False) -> Path:
    """Write `rows` rows of bench/data.py's generator, one 1M-row group at a time (bounded memory).

    Each chunk has its own seed and its slice of the 30 days, so the file is in time order.
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = scale_path(rows, drifted=drifted)
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    span = 30 * 24 * 3600
    start = np.datetime64("2024-01-01T00:00:00", "s")
    writer = None
    try:
        for index, first in enumerate(range(0, rows, CHUNK_ROWS)):
            count = min(CHUNK_ROWS, rows - first)
            table = data.make_table(count, drifted=drifted, seed=data.SEED + 1000 * index)
            rng = np.random.default_rng(data.SEED + 1000 * index + 7)
            low, high = span * first // rows, max(span * (first + count) // rows, span * first // rows + 1)
            seconds = np.sort(rng.integers(low, high, count))
            times = pa.array(start + seconds.astype("timedelta64[s]"), type=pa.timestamp("us"))
            table = table.set_column(table.schema.get_field_index(data.TIME), data.TIME, times)
            writer = writer or pq.ParquetWriter(tmp, table.schema)
            writer.write_table(table, row_group_size=CHUNK_ROWS)
            del table
        writer.close()
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def ensure_suite(rows: int) -> Path:
    """The suite learned from the 100k scale file, its row-count band (0.2x to 5x) scaled to `rows`."""
    from prefect_mlops.refs import DatasetRef
    from prefect_mlops.tasks.validate import learn_suite
    from prefect_mlops.workspace import read_frame

    path = data.DATA / f"scale-suite-{rows}-{data.GENERATOR}-s{data.SEED}.json"
    if path.exists():
        return path
    base = 100_000
    ref = DatasetRef(name=MODEL, uri=str(ensure_data(base)), fingerprint="-", rows=base, columns={})
    suite = json.loads(json.dumps(learn_suite(read_frame(ref), name=MODEL), default=str))
    for expectation in suite["expectations"]:
        kwargs = expectation["kwargs"]
        if expectation["type"] == "expect_table_row_count_to_be_between" and kwargs.get("max_value"):
            kwargs["min_value"], kwargs["max_value"] = max(1, math.floor(rows * 0.2)), math.ceil(rows * 5)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(suite, indent=2))
    os.replace(tmp, path)
    return path


# ---------------------------------------------------------------------------------------------- child
class Sampler:
    """Polls /proc/self/statm every 5 ms: the peak RSS, and the peak of its anonymous part (RSS minus the
    file-backed pages, such as a memory-mapped snapshot's, which the kernel can drop and re-read)."""

    def __init__(self, interval: float = 0.005) -> None:
        import threading

        self.interval, self._stop = interval, threading.Event()
        self.peak, self.peak_anon = self.read()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @staticmethod
    def read() -> tuple[int, int]:
        with open("/proc/self/statm") as handle:
            fields = handle.read().split()
        page = os.sysconf("SC_PAGE_SIZE")
        return int(fields[1]) * page, (int(fields[1]) - int(fields[2])) * page

    def _run(self) -> None:
        while not self._stop.is_set():
            rss, anon = self.read()
            self.peak, self.peak_anon = max(self.peak, rss), max(self.peak_anon, anon)
            time.sleep(self.interval)

    def reset(self) -> None:
        self.peak, self.peak_anon = self.read()

    def stop(self) -> None:
        self._stop.set()


def release() -> None:
    """Hand freed memory back to the system: Python's garbage, Arrow's pool, glibc's free lists."""
    import pyarrow as pa

    gc.collect()
    pa.default_memory_pool().release_unused()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def child(rows: int, train_memory: int, folder: Path, progress: Path, *, when_over: str = "sample",
          estimator: str | None = None) -> dict[str, Any]:
    """One size: every stage in sequence in this process; the result so far is written to `progress`."""
    from child import configs, init_mlflow, peak_rss_bytes, preimport

    imports = preimport()
    started = time.perf_counter()
    import great_expectations  # noqa: F401 - a fixed cost, not the validate stage's

    from prefect_mlops.blocks import DataSource
    from prefect_mlops.blocks.retrain_policy import TrainingBudget
    from prefect_mlops.tasks.deploy import promote
    from prefect_mlops.tasks.drift import check_drift
    from prefect_mlops.tasks.evaluate import evaluate_models
    from prefect_mlops.tasks.features import build_feature_set
    from prefect_mlops.tasks.gate import judge
    from prefect_mlops.tasks.ingest import ingest_dataset
    from prefect_mlops.tasks.lineage import Lineage, recipe_digest
    from prefect_mlops.tasks.register import register_version
    from prefect_mlops.tasks.train import EXPANSION, fit_within_budget, log_model
    from prefect_mlops.tasks.validate import validate_dataset
    from prefect_mlops.workspace import Workspace, iter_batches

    imports += time.perf_counter() - started
    cfg = configs(rows, folder)
    ws = Workspace(cfg["workspace"])
    server, spec, trainer, policy = cfg["server"], cfg["features"], cfg["trainer"], cfg["policy"]
    init_mlflow(server, ws)
    if estimator:  # e.g. sklearn.linear_model.SGDClassifier with --when-over incremental
        from prefect_mlops.tasks.lineage import TrainerSpec

        trainer = TrainerSpec(estimator=estimator, params={"loss": "log_loss"} if "SGD" in estimator else {})
    budget = TrainingBudget(max_memory=train_memory, when_over=when_over)
    out: dict[str, Any] = {"rows": rows, "imports_seconds": imports, "train_memory": train_memory,
                           "expansion_assumed": EXPANSION, "steps": {}, "reached": None}
    sampler = Sampler()

    def step(name: str, work: Any) -> Any:
        release()
        rss_start = Sampler.read()[0]
        sampler.reset()
        started = time.perf_counter()
        result = work()
        seconds = time.perf_counter() - started
        rss, anon = Sampler.read()
        out["steps"][name] = {"seconds": seconds, "rss_start": rss_start, "rss_peak": max(sampler.peak, rss),
                              "anon_peak": max(sampler.peak_anon, anon)}
        out["reached"] = name
        out["peak_rss"] = peak_rss_bytes()
        progress.write_text(json.dumps(out, default=str))
        return result

    ref = step("ingest", lambda: ingest_dataset(DataSource(uri=str(scale_path(rows))), name=MODEL, workspace=ws))
    batch = next(iter_batches(ref, columns=[*spec.feature_columns, spec.target], batch_rows=65_536))
    out["arrow_bytes_per_row"] = batch.nbytes / batch.num_rows
    del batch
    report = step("validate", lambda: validate_dataset(ref, suite_path=str(ensure_suite(rows)), workspace=ws))
    out["validation_passed"] = report.passed
    features = step("feature-build", lambda: build_feature_set(ref, spec, workspace=ws))
    lineage = Lineage(model_name=MODEL, dataset=ref, features=spec, trainer=trainer,
                      params_digest=recipe_digest(spec, trainer))

    def train() -> Any:
        fit_started = time.perf_counter()
        pipeline, example, record = fit_within_budget(features, trainer, budget=budget)
        fitted = time.perf_counter() - fit_started
        out["training"] = record.model_dump(mode="json", exclude={"budget"})
        out["fit_seconds"] = fitted
        return log_model(pipeline, example, lineage=lineage.model_copy(update={"training": record}),
                         mlflow_server=server, workspace=ws, fit_seconds=fitted)

    trained = step("train", train)
    train_step = out["steps"]["train"]
    fit_bytes = out["arrow_bytes_per_row"] * out["training"]["rows"]
    out["expansion_measured"] = (train_step["rss_peak"] - train_step["rss_start"]) / fit_bytes if fit_bytes else None
    progress.write_text(json.dumps(out, default=str))
    evaluation = step("evaluate", lambda: evaluate_models(trained, features, policy=policy, mlflow_server=server,
                                                          workspace=ws))

    def gate_register_deploy() -> Any:
        verdict = judge(evaluation, policy)
        if not verdict.passed:
            raise SystemExit(f"the gate rejected the model at {rows} rows: {verdict.reasons}")
        model = register_version(trained, verdict, evaluation, mlflow_server=server, workspace=ws)
        return promote(model, evaluation, verdict, mlflow_server=server, workspace=ws)

    step("gate-register-deploy", gate_register_deploy)
    current = step("drift-ingest", lambda: ingest_dataset(DataSource(uri=str(scale_path(rows, drifted=True))),
                                                          name=f"{MODEL}-current", workspace=ws))
    drift = step("drift-check", lambda: check_drift(current, ref, model_name=MODEL, columns=spec.feature_columns,
                                                    workspace=ws))
    out["drift_share"] = drift.drift_share
    sampler.stop()
    out["cycle_seconds"] = sum(s["seconds"] for s in out["steps"].values())
    out["peak_rss"] = peak_rss_bytes()
    out["completed"] = True
    progress.write_text(json.dumps(out, default=str))
    return out


# ---------------------------------------------------------------------------------------------- parent
def environment(tmp: Path) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "GX_ANALYTICS_ENABLED": "false",
           "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false", "PREFECT_LOGGING_LEVEL": "WARNING",
           "PREFECT_HOME": str(tmp / "prefect"), "PYTHONWARNINGS": "ignore", "BENCH_TMP": str(tmp)}
    env.pop("PREFECT_API_URL", None)
    return env


def run_size(rows: int, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """Prepare the data (its own process), then run the stages in a fresh child; a cut-short child's progress."""
    env = environment(tmp)
    started = time.perf_counter()
    subprocess.run([sys.executable, __file__, "--prepare", str(rows)], env=env, check=True)
    prepare = time.perf_counter() - started
    folder = Path(tempfile.mkdtemp(prefix=f"scale-{rows}-", dir=tmp))
    progress = folder / "progress.json"
    command = [sys.executable, __file__, "--child", str(rows), "--train-memory", str(args.train_memory / 2**20),
               "--folder", str(folder), "--when-over", args.when_over, *(["--estimator", args.estimator]
                                                                        if args.estimator else [])]
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=args.timeout)
        lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT_TAG)]
        result = json.loads(lines[-1][len(RESULT_TAG):]) if lines else None
        error = None if result else f"exit {done.returncode}: {done.stderr[-2000:]}"
    except subprocess.TimeoutExpired:
        result, error = None, f"stopped after {args.timeout} s"
    if result is None:
        result = json.loads(progress.read_text()) if progress.exists() else {"rows": rows, "steps": {}}
        result["error"] = error
        result["completed"] = False
    result["prepare_seconds"] = prepare
    shutil.rmtree(folder, ignore_errors=True)  # a 20M-row workspace holds gigabytes of snapshots
    return result


def table(results: list[dict[str, Any]]) -> str:
    """Rows: the stages; columns: the sizes; cells: seconds and peak RSS during the stage."""
    sizes = [r["rows"] for r in results]
    head = "| stage | " + " | ".join(f"{n:,} rows" for n in sizes) + " |"
    lines = [head, "|" + "---|" * (len(sizes) + 1)]
    for stage in STAGES:
        cells = []
        for result in results:
            got = result["steps"].get(stage)
            cells.append(f"{got['seconds']:.1f} s · {got['rss_peak'] / GB:.2f} GB ({got['anon_peak'] / GB:.2f})"
                         if got else "not reached")
        lines.append(f"| {stage} | " + " | ".join(cells) + " |")
    whole = []
    for result in results:
        seconds = sum(s["seconds"] for s in result["steps"].values())
        note = "" if result.get("completed") else f" (cut short after {result.get('reached') or 'no stage'})"
        whole.append(f"**{seconds:.1f} s · {result.get('peak_rss', 0) / GB:.2f} GB**{note}")
    lines.append("| whole cycle (peak: VmHWM) | " + " | ".join(whole) + " |")
    trained = []
    for result in results:
        record = result.get("training")
        trained.append(f"{record['method']}: {record['rows']:,} of {record['available_rows']:,}" if record else "-")
    lines.append("| train: rows fit | " + " | ".join(trained) + " |")
    lines.append("| train: expansion (peak - start) / Arrow bytes fit | " + " | ".join(
        f"{r['expansion_measured']:.1f}x" if r.get("expansion_measured") and r["training"]["method"] != "incremental"
        else "-" for r in results) + " |")
    return "\n".join(lines)


def verdicts(results: list[dict[str, Any]]) -> list[str]:
    out = []
    for result in results:
        for stage, key in (("validate", "validate_peak_gb"), ("drift-check", "drift_check_peak_gb")):
            got = result["steps"].get(stage)
            if got:
                peak = got["rss_peak"] / GB
                out.append(f"{stage} at {result['rows']:,} rows: {peak:.2f} GB peak "
                           f"({'within' if peak <= TARGETS[key] else 'OVER'} {TARGETS[key]} GB)")
        if result["rows"] >= 20_000_000:
            peak = result.get("peak_rss", 0) / GB
            state = ("within" if peak <= TARGETS["cycle_peak_gb_at_20m"] else "OVER") if result.get("completed") \
                else "cut short, so not met:"
            out.append(f"whole cycle at {result['rows']:,} rows: {peak:.2f} GB peak ({state} "
                       f"{TARGETS['cycle_peak_gb_at_20m']} GB)")
    return out


def markdown(results: list[dict[str, Any]], args: argparse.Namespace, meta: dict[str, Any]) -> str:
    text = [f"Scale curve, {meta['date']} ({meta['machine']}; one thread; training budget "
            f"{args.train_memory / 2**20:,.0f} MiB, beyond it {args.when_over}"
            f"{'; ' + args.estimator if args.estimator else ''}; load average {meta['load_start']:.1f} at the "
            f"start{'; the largest size ran beside the others' if meta.get('jobs', 1) > 1 else ''}). Each size in "
            "a fresh process; per stage the wall time, the peak RSS during it and, in "
            "brackets, the peak of its anonymous part (RSS less the file-backed pages of memory-mapped snapshots).",
            "",
            table(results), ""]
    text += [f"- {line}" for line in verdicts(results)]
    errors = [f"- {r['rows']:,} rows: {r['error']}" for r in results if r.get("error")]
    errors += [f"- {rows:,} rows: not run (no time left before {args.until} UTC)" for rows in meta.get("not_run", [])]
    return "\n".join(text + errors) + "\n"


def write_readme(text: str) -> bool:
    readme = HERE / "README.md"
    body = readme.read_text()
    start, end = "<!-- scale:start -->", "<!-- scale:end -->"
    if start not in body or end not in body:
        return False
    before, rest = body.split(start, 1)
    readme.write_text(f"{before}{start}\n{text}{end}{rest.split(end, 1)[1]}")
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100000,1000000,5000000,20000000")
    parser.add_argument("--train-memory", type=lambda v: int(float(v) * 2**20), default=4096 * 2**20,
                        help="MiB the train stage's budget allows (TrainingBudget.max_memory)")
    parser.add_argument("--when-over", choices=["sample", "incremental"], default="sample",
                        help="TrainingBudget.when_over: a time-stratified sample, or partial_fit over every row")
    parser.add_argument("--estimator", help="another scikit-learn estimator (import path) than the benchmark's "
                        "HistGradientBoostingClassifier, e.g. sklearn.linear_model.SGDClassifier")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds one size may run")
    parser.add_argument("--jobs", type=int, default=1, choices=[1, 2],
                        help="2: the largest size runs beside the others (each child is single-threaded)")
    parser.add_argument("--until", help="UTC time (HH:MM) by which the run ends: a size still running then is "
                        "stopped and reported as far as it got; a size not started is left out")
    parser.add_argument("--readme", action="store_true", help="write the table into bench/README.md")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--prepare", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.prepare:
        ensure_data(args.prepare)
        ensure_data(args.prepare, drifted=True)
        ensure_suite(args.prepare)
        return
    if args.child:
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        folder = Path(args.folder)
        result = child(args.child, args.train_memory, folder, folder / "progress.json", when_over=args.when_over,
                       estimator=args.estimator)
        print(RESULT_TAG + json.dumps(result, default=str), flush=True)
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    date = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d")
    meta = {"date": date, "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
            f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB", "sizes": sizes,
            "train_memory": args.train_memory, "when_over": args.when_over, "estimator": args.estimator,
            "targets": TARGETS, "python": sys.version.split()[0],
            "load_start": os.getloadavg()[0], "jobs": args.jobs}
    variant = "" if args.when_over == "sample" and not args.estimator else f"-{args.when_over}"
    out_json = HERE / "results" / f"{date}-scale{variant}.json"
    out_md = out_json.with_suffix(".md")
    results: list[dict[str, Any]] = []
    lock = threading.Lock()

    def lane(lane_sizes: list[int], tmp: Path) -> None:
        for rows in lane_sizes:
            left = seconds_until(args.until)
            if left < 60:
                print(f"scale: {rows:,} rows not run: {left:.0f} s left before {args.until}", flush=True)
                with lock:
                    meta.setdefault("not_run", []).append(rows)
                continue
            print(f"scale: {rows:,} rows ...", flush=True)
            result = run_size(rows, argparse.Namespace(**{**vars(args), "timeout": min(args.timeout, left)}), tmp)
            with lock:
                results.append(result)
                results.sort(key=lambda r: r["rows"])
                meta["load_end"] = os.getloadavg()[0]
                text = markdown(results, args, meta)
                out_json.write_text(json.dumps({"meta": meta, "results": results}, indent=2, default=str))
                out_md.write_text(text)
                print(text, flush=True)
                if args.readme:
                    print("bench/README.md updated" if write_readme(text) else "bench/README.md has no scale markers")

    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        # --jobs 2: the largest size in a lane of its own, the others one after another beside it.
        lanes = [[max(sizes)], [n for n in sizes if n != max(sizes)]] if args.jobs > 1 and len(sizes) > 1 else [sizes]
        threads = [threading.Thread(target=lane, args=(sizes_, Path(tmp))) for sizes_ in lanes]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()


def seconds_until(when: str | None) -> float:
    """Seconds from now to today's `HH:MM` UTC (0 once it has passed); no limit without one."""
    if not when:
        return math.inf
    now = dt.datetime.now(dt.timezone.utc)
    hour, minute = (int(part) for part in when.split(":"))
    end = now.replace(hour=hour, minute=minute, second=0, microsecond=0)
    return max((end - now).total_seconds(), 0.0)


if __name__ == "__main__":
    main()
