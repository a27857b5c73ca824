"""`make bench`: what each stage of the continuous-training cycle costs, against a floor.

    python bench/run.py --sizes 100000,1000000,5000000 [--repeat N]

For each size (rows x 20 columns of deterministic synthetic data, made once and cached in
`bench/data/`), every configuration runs in a fresh subprocess (`bench/child.py`) and
reports its wall time and peak RSS (`ru_maxrss`; per step, a thread sampling RSS):

- cycle: the CT flow (`prefect_mlops.flows.continuous_training`) against a running local
  Prefect server and on the embedded default, and the floor: the same cycle as one plain
  script (read Parquet, the suite's checks in pyarrow, the same split, pipeline, metrics,
  MLflow logging with explicit pip_requirements, registration and alias);
- stages: the stages' plain functions in sequence in one process;
- validation: `validate_dataset` (Arrow push-down), GX on every expectation, and the pyarrow floor;
- drift: `check_drift` (Evidently) on all rows and on a sample, and the numpy/scipy floor;
- once per run: MLflow's pip-requirements inference, the store's schema creation, Prefect's
  API start-up, the `@task` wrapper overhead per stage, and import times (median of 5).

`--only cycle` runs the cycle alone (the plain script and the flow on the local server,
interleaved) at the sizes given, and writes `bench/results/<date>-cycle.json` and `.md`:

    python bench/run.py --sizes 100000,1000000 --only cycle

Medians of 3 runs up to 1M rows, 1 run above; a quick run (no size above 100k, `make
bench-quick`, about 3 minutes) runs each configuration once. `--repeat` overrides both.
Results go to `bench/results/<date>.json`; the markdown tables are printed and written
between the `<!-- bench:start -->` / `<!-- bench:end -->` markers of bench/README.md (else
to `bench/results/<date>.md`). A quick run writes `bench/results/<date>-quick.json` and `.md`
and leaves bench/README.md alone unless `--readme` is given. Every child runs with
OMP_NUM_THREADS=1 (Arrow then uses one thread too): the numbers are single-core numbers.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import data  # noqa: E402 - the benchmark's data module, beside this file

RESULT_TAG = "BENCH-RESULT "
SAMPLE_ROWS = 100_000  # the drift check's sampled variant
WRAPPER_ROWS = 10_000  # the wrapper overhead does not depend on the data: measure it on little data
LIBRARIES = ["prefect", "mlflow", "great-expectations", "evidently", "scikit-learn", "pandas", "pyarrow",
             "numpy", "scipy", "fastapi", "sqlalchemy"]
CYCLE_TARGETS = {100_000: 1.25, 1_000_000: 1.10}  # flow (local server) / plain script, by rows
TARGETS = {"cycle_vs_plain": 1.10, "validation_vs_floor": 3.0, "drift_vs_floor": 3.0, "rss_vs_plain": 1.2,
           "import_vs_prefect": 1.2, "wrapper_seconds": 0.050}


# ---------------------------------------------------------------------------------------------- children
class Runner:
    """Starts children with one environment: one thread, a shared temp folder, the MLflow store template."""

    def __init__(self, tmp: Path, verbose: bool) -> None:
        self.tmp, self.verbose = tmp, verbose
        self.env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                    "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "GX_ANALYTICS_ENABLED": "false",
                    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false", "PREFECT_LOGGING_LEVEL": "WARNING",
                    "BENCH_TMP": str(tmp), "PYTHONWARNINGS": "ignore"}
        for name in ("PREFECT_API_URL", "PREFECT_MLOPS_GX_PUSHDOWN"):
            self.env.pop(name, None)
        self.env["PREFECT_HOME"] = str(tmp / "prefect-embedded")  # one home: the embedded DB is made once
        self.server_pgid = 0

    def run(self, mode: str, opts: dict[str, Any], *, api_url: str | None = None,
            timeout: float = 3600, pythonpath: str | None = None) -> dict[str, Any]:
        env = dict(self.env)
        if pythonpath:  # another version of the plugin, ahead of the installed one
            env["PYTHONPATH"] = pythonpath
        if api_url:
            env["PREFECT_API_URL"] = api_url
            env["BENCH_SERVER_PGID"] = str(self.server_pgid)
        label = f"{mode} {json.dumps(opts)}{' (server)' if api_url else ''}{' (before)' if pythonpath else ''}"
        started = time.perf_counter()
        proc = subprocess.run([sys.executable, str(HERE / "child.py"), mode, json.dumps(opts)], env=env,
                              capture_output=True, text=True, timeout=timeout, cwd=str(self.tmp))
        wall = time.perf_counter() - started
        lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT_TAG)]
        if proc.returncode != 0 or not lines:
            raise RuntimeError(f"{label} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
        result = json.loads(lines[-1][len(RESULT_TAG):])
        result["process_seconds"] = wall
        if self.verbose:
            print(f"  {label}: {wall:.1f} s", flush=True)
        return result


class PrefectServer:
    """`prefect server start` on a free port, SQLite in a temporary PREFECT_HOME."""

    def __init__(self, tmp: Path) -> None:
        self.home = tmp / "prefect-server"
        self.home.mkdir(parents=True, exist_ok=True)
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/api"
        self.proc: subprocess.Popen | None = None
        self.start_seconds = float("nan")

    def start(self) -> PrefectServer:
        env = {**os.environ, "PREFECT_HOME": str(self.home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
               "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{self.home / 'prefect.db'}",
               "PREFECT_UI_ENABLED": "false", "PREFECT_LOGGING_LEVEL": "WARNING", "OMP_NUM_THREADS": "1"}
        env.pop("PREFECT_API_URL", None)
        exe = Path(sys.executable).with_name("prefect")
        started = time.perf_counter()
        self.log = open(self.home / "server.log", "w")
        self.proc = subprocess.Popen([str(exe), "server", "start", "--host", "127.0.0.1", "--port",
                                      str(self.port)], env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self.started = started
        return self

    def wait(self) -> None:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prefect server exited; see {self.home / 'server.log'}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as reply:
                    if reply.status == 200:
                        self.start_seconds = time.perf_counter() - self.started
                        return
            except OSError:
                time.sleep(0.3)
        raise RuntimeError("prefect server did not answer within 180 s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # the server's own process group (start_new_session)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.log.close()


# ---------------------------------------------------------------------------------------------- plan
def machine() -> dict[str, Any]:
    meminfo = Path("/proc/meminfo").read_text().split("\n") if Path("/proc/meminfo").exists() else []
    total = next((int(line.split()[1]) * 1024 for line in meminfo if line.startswith("MemTotal")), None)
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() \
        else platform.processor()
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = "-"
    return {"cores": os.cpu_count(), "ram_bytes": total, "cpu": model, "python": platform.python_version(),
            "platform": platform.platform(), "libraries": versions, "threads": "OMP_NUM_THREADS=1",
            "load_average_start": os.getloadavg()}


def arrow_bytes(rows: int) -> int:
    import pyarrow.parquet as pq

    return pq.read_table(data.path_for(rows)).nbytes


def median(values: list[float]) -> float:
    values = [v for v in values if v == v]
    return statistics.median(values) if values else float("nan")


def rotate(items: list[str], by: int) -> list[str]:
    by %= len(items)
    return items[by:] + items[:by]


def bench(args: argparse.Namespace) -> dict[str, Any]:
    sizes = [int(s) for s in args.sizes.split(",")]
    started = time.perf_counter()
    results: dict[str, Any] = {"date": dt.date.today().isoformat(), "machine": machine(), "sizes": {},
                               "settings": {"sizes": sizes, "repeat": args.repeat, "sample_rows": SAMPLE_ROWS,
                                            "wrapper_rows": WRAPPER_ROWS, "trainer": "HistGradientBoosting"
                                            "Classifier(max_iter=30, learning_rate=0.1, early_stopping=False)",
                                            "drift_full_max_rows": args.drift_full_max}}
    tmp = Path(tempfile.mkdtemp(prefix="prefect-mlops-bench-"))
    runner = Runner(tmp, verbose=not args.quiet)
    server = PrefectServer(tmp).start()  # starts while the untimed preparation runs
    try:
        print(f"preparing data for {sizes} (cached in {data.DATA})", flush=True)
        for rows in sorted({*sizes, WRAPPER_ROWS}):
            data.ensure(rows)
            data.ensure(rows, drifted=True)
            data.ensure_suite(rows)
        store = tmp / "mlflow-template.db"
        results["mlflow_store_create_seconds"] = runner.run("store", {"path": str(store)})["seconds"]
        runner.env["BENCH_MLFLOW_TEMPLATE"] = str(store)
        server.wait()
        runner.server_pgid = server.proc.pid  # its own session: process group id = its pid
        results["prefect_server_start_seconds"] = server.start_seconds
        results["imports"] = imports(runner, args.import_repeat)
        results["mlflow"] = [runner.run("mlflow", {"rows": WRAPPER_ROWS, "order": order}) for order in
                             (["explicit", "explicit", "inferred", "inferred"],
                              ["inferred", "inferred", "explicit", "explicit"])]
        quick = max(sizes) <= 100_000
        for index, rows in enumerate(sizes):
            repeat = args.repeat or (1 if quick or rows > 1_000_000 else 3)
            print(f"{rows:,} rows: {repeat} run(s) of each configuration", flush=True)
            results["sizes"][str(rows)] = one_size(runner, server.url, rows, repeat, first=index == 0,
                                                   drift_full=rows <= args.drift_full_max)
    finally:
        server.stop()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    results["machine"]["load_average_end"] = os.getloadavg()
    results["seconds"] = time.perf_counter() - started
    results["targets"] = targets(results)
    return results


def bench_cycle(args: argparse.Namespace) -> dict[str, Any]:
    """The cycle alone: the plain script and the flow on a local server, interleaved, at each size."""
    sizes = [int(s) for s in args.sizes.split(",")]
    started = time.perf_counter()
    results: dict[str, Any] = {"date": dt.date.today().isoformat(), "machine": machine(), "only": "cycle",
                               "sizes": {}, "settings": {"sizes": sizes, "repeat": args.repeat,
                                                         "before": args.before, "refit_full_window": False}}
    tmp = Path(tempfile.mkdtemp(prefix="prefect-mlops-bench-"))
    before = package_tree(Path(args.before), tmp / "before") if args.before else None
    runner = Runner(tmp, verbose=not args.quiet)
    server = PrefectServer(tmp).start()
    try:
        for rows in sizes:
            data.ensure(rows)
            data.ensure_suite(rows)
        store = tmp / "mlflow-template.db"
        runner.run("store", {"path": str(store)})
        runner.env["BENCH_MLFLOW_TEMPLATE"] = str(store)
        server.wait()
        runner.server_pgid = server.proc.pid
        for rows in sizes:
            repeat = args.repeat or (1 if rows > 1_000_000 else 3)
            print(f"{rows:,} rows: {repeat} run(s) of the plain script and the flow", flush=True)
            out: dict[str, Any] = {"rows": rows, "arrow_bytes": arrow_bytes(rows), "repeat": repeat,
                                   "cycle": {"plain": [], "plain_cloudpickle": [], "flow_server": [],
                                             **({"flow_before": []} if before else {})}}
            for _ in range(repeat):  # interleaved: a busy spell on the shared machine hits all alike
                out["cycle"]["plain"].append(runner.run("plain", {"rows": rows}))
                out["cycle"]["plain_cloudpickle"].append(runner.run("plain", {"rows": rows, "format": "cloudpickle"}))
                out["cycle"]["flow_server"].append(runner.run("flow", {"rows": rows}, api_url=server.url))
                if before:
                    out["cycle"]["flow_before"].append(runner.run("flow", {"rows": rows}, api_url=server.url,
                                                                  pythonpath=str(before)))
            results["sizes"][str(rows)] = out
    finally:
        server.stop()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    results["machine"]["load_average_end"] = os.getloadavg()
    results["seconds"] = time.perf_counter() - started
    results["targets"] = cycle_targets(results)
    return results


def package_tree(checkout: Path, into: Path) -> Path:
    """An importable `prefect_mlops` from another checkout (say, an older commit's worktree), laid out as
    pyproject.toml's package-dir maps it (src/prefect_mlops, with tasks/, flows/ and blocks/ inside)."""
    package = into / "prefect_mlops"
    shutil.copytree(checkout / "src" / "prefect_mlops", package)
    for part in ("tasks", "flows", "blocks"):
        shutil.copytree(checkout / part, package / part)
    return into


def cycle_summary(results: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, size in results["sizes"].items():
        s: dict[str, Any] = {"rows": size["rows"], "repeat": size["repeat"], "arrow_bytes": size["arrow_bytes"]}
        for name, runs in size["cycle"].items():
            s[name] = {"seconds": median([r["cycle_seconds"] for r in runs]),
                       "peak_rss": median([r["peak_rss"] for r in runs]),
                       "fit_seconds": median([r.get("fit_seconds", float("nan")) for r in runs]),
                       "rest_seconds": median([r["cycle_seconds"] - r.get("fit_seconds", float("nan"))
                                               for r in runs]),
                       "all_seconds": [r["cycle_seconds"] for r in runs]}
        out[key] = s
    return out


def cycle_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for key, s in cycle_summary(results).items():
        limit = CYCLE_TARGETS.get(int(key))
        ratio = s["flow_server"]["seconds"] / s["plain"]["seconds"]
        row = {"target": "CT cycle / plain script (local server)", "where": f"{int(key):,} rows",
               "value": ratio, "equalised": equalised(s["flow_server"], s["plain"]), "limit": limit,
               "holds": None if limit is None else bool(ratio <= limit)}
        if "flow_before" in s:
            row["before"] = s["flow_before"]["seconds"] / s["plain"]["seconds"]
            row["before_equalised"] = equalised(s["flow_before"], s["plain"])
        if "plain_cloudpickle" in s:  # the floor without the safe format, for reference
            row["vs_cloudpickle"] = s["flow_server"]["seconds"] / s["plain_cloudpickle"]["seconds"]
        rows.append(row)
    return rows


def cycle_markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    lines = [f"### The CT cycle against the plain script ({results['date']}, `bench/run.py --only cycle`)", "",
             f"Machine: {m['cores']} cores ({m['cpu']}), Python {m['python']}, OMP_NUM_THREADS=1; load average "
             f"{m['load_average_start'][0]:.1f} at the start, {m['load_average_end'][0]:.1f} at the end. Each run "
             "in a fresh process, the plain script and the flow (local Prefect server) interleaved; medians. "
             "Cycle times exclude imports and Prefect's start-up. The plain script saves the model as the flow "
             "does, with skops (a load that runs no code from the file); the last column is the flow against "
             "the same script saving with cloudpickle, which gives no such guarantee.", "",
             "| rows | runs | flow / plain | same, training time equalised | limit | holds | plain script | "
             "flow | all but training: plain, flow | peak RSS plain, flow | flow / plain with cloudpickle |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    before = results["settings"].get("before")
    targets_ = {t["where"]: t for t in results["targets"]}
    for key, s in cycle_summary(results).items():
        plain, flow = s["plain"], s["flow_server"]
        t = targets_[f"{int(key):,} rows"]
        holds = "-" if t["holds"] is None else ("yes" if t["holds"] else "**no**")
        limit = "-" if t["limit"] is None else x(t["limit"])
        lines.append(f"| {int(key):,} | {s['repeat']} | {x(t['value'])} | {x(t['equalised'])} | {limit} | {holds} | "
                     f"{s_(plain['seconds'])} | {s_(flow['seconds'])} | {s_(plain['rest_seconds'])}, "
                     f"{s_(flow['rest_seconds'])} | {mb(plain['peak_rss'])}, {mb(flow['peak_rss'])} | "
                     f"{x(t['vs_cloudpickle']) if 'vs_cloudpickle' in t else '-'} |")
        if "flow_before" in s:
            old = s["flow_before"]
            lines.append(f"| {int(key):,}, before | {s['repeat']} | {x(t['before'])} | {x(t['before_equalised'])} "
                         f"| | | (same run) | {s_(old['seconds'])} | {s_(plain['rest_seconds'])}, "
                         f"{s_(old['rest_seconds'])} | {mb(plain['peak_rss'])}, {mb(old['peak_rss'])} | |")
    lines += ["", "The flow runs with `RetrainPolicy(refit_full_window=False)`: the plain script fits once, on the "
              "train part, and so does the flow (the default refit on the whole window is a second fit)."]
    if before:
        lines.append(f"*before*: the same flow from the checkout at `{before}` (its own code on PYTHONPATH, this "
                     "benchmark's scripts), interleaved with the others in the same run, against the same floor.")
    return "\n".join(lines) + "\n"


def one_size(runner: Runner, api_url: str, rows: int, repeat: int, *, first: bool,
             drift_full: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"rows": rows, "arrow_bytes": arrow_bytes(rows), "repeat": repeat,
                           "cycle": {"plain": [], "flow_server": [], "flow_embedded": []}, "stages": [],
                           "validation": [], "drift": []}
    drift_variants = ["floor", f"evidently-sample-{SAMPLE_ROWS}"] + (["evidently"] if drift_full else [])
    if rows <= SAMPLE_ROWS:
        drift_variants = ["floor", "evidently"]
    for r in range(repeat):
        # Interleaved, so that a busy spell on a shared machine hits every configuration alike.
        out["cycle"]["plain"].append(runner.run("plain", {"rows": rows}))
        wrapper = {"wrapper_rows": WRAPPER_ROWS, "wrapper_repeat": 5} if first and r == 0 else {}
        out["cycle"]["flow_server"].append(runner.run("flow", {"rows": rows, **wrapper}, api_url=api_url))
        out["cycle"]["flow_embedded"].append(runner.run("flow", {"rows": rows}))
        out["stages"].append(runner.run("stages", {"rows": rows}))
        out["validation"].append(runner.run("validate", {"rows": rows, "variants": rotate(
            ["ours", "floor", "gx"], r)}))
        out["drift"].append(runner.run("drift", {"rows": rows, "variants": rotate(drift_variants, r)}))
    return out


IMPORTS = ["prefect", "prefect:flow,task", "prefect_mlops", "prefect_mlops.flows"]


def imports(runner: Runner, repeat: int) -> dict[str, Any]:
    """Import times in fresh processes; GX's and Evidently's come from the validation and drift runs."""
    modules = IMPORTS
    times: dict[str, list[float]] = {m: [] for m in modules}
    for _ in range(repeat):
        for module in modules:
            times[module].append(runner.run("import", {"module": module})["seconds"])
    return {m: {"median_seconds": median(v), "all": v} for m, v in times.items()}


# ---------------------------------------------------------------------------------------------- summary
def summarize(results: dict[str, Any]) -> dict[str, Any]:
    """Medians per size: the numbers the tables and targets use."""
    out = {}
    for key, size in results["sizes"].items():
        cycle = size["cycle"]
        s: dict[str, Any] = {"rows": size["rows"], "arrow_bytes": size["arrow_bytes"], "repeat": size["repeat"]}
        for name, runs in cycle.items():
            s[name] = {"seconds": median([r["cycle_seconds"] for r in runs]),
                       "cpu_seconds": median([r["cycle_cpu_seconds"] + r.get("api_cpu_seconds", 0.0) for r in runs]),
                       "peak_rss": median([r["peak_rss"] for r in runs]),
                       "fit_seconds": median([r.get("fit_seconds", float("nan")) for r in runs]),
                       "rest_seconds": median([r["cycle_seconds"] - r.get("fit_seconds", float("nan")) for r in runs])}
            if name.startswith("flow"):
                s[name]["startup_seconds"] = median([r["startup_seconds"] for r in runs])
        s["plain_steps"] = {step: median([r["steps"][step]["seconds"] for r in cycle["plain"]])
                            for step in cycle["plain"][0]["steps"]}
        stages = size["stages"]
        s["stages"] = {step: {"seconds": median([r["steps"][step]["seconds"] for r in stages]),
                              "rss_peak": median([r["steps"][step]["rss_peak"] for r in stages]),
                              "rss_start": median([r["steps"][step]["rss_start"] for r in stages])}
                       for step in stages[0]["steps"]}
        s["stages"]["train"]["fit_seconds"] = median([r["steps"]["train"]["fit_seconds"] for r in stages])
        s["stages"]["train"]["log_seconds"] = median([r["steps"]["train"]["log_seconds"] for r in stages])
        s["stages_sum"] = median([r["cycle_seconds"] for r in stages])
        s["stages_peak_rss"] = median([r["peak_rss"] for r in stages])
        validation = size["validation"]
        s["validation"] = {v: {"seconds": median([r[v]["seconds"] for r in validation]),
                               "rss_peak": median([r[v]["rss_peak"] for r in validation])}
                           for v in ("ours", "gx", "floor")}
        s["validation"]["same_table"] = all(r.get("same_table", True) for r in validation)
        s["validation"]["expectations"] = validation[0]["expectations"]
        drift = size["drift"]
        variants = [k for k in drift[0] if isinstance(drift[0][k], dict) and "seconds" in drift[0][k]]
        s["drift"] = {v: {"seconds": median([r[v]["seconds"] for r in drift]),
                          "rss_peak": median([r[v]["rss_peak"] for r in drift]),
                          "drifted": drift[0][v]["drifted"]} for v in variants}
        s["drift_methods"] = drift[0].get("methods")
        s["imports"] = {"gx": median([r["gx_import"] for r in validation]),
                        "evidently": median([r["evidently_import"] for r in drift])}
        out[key] = s
    return out


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    summary = summarize(results)
    rows: list[dict[str, Any]] = []

    def add(name: str, where: str, value: float, limit: float, note: str = "") -> None:
        rows.append({"target": name, "where": where, "value": value, "limit": limit,
                     "holds": bool(value == value and value <= limit), "note": note})

    for key, s in summary.items():
        rows_ = int(key)
        label = f"{rows_:,} rows"
        if rows_ == 1_000_000:
            add("CT cycle / plain script (local server)", label, s["flow_server"]["seconds"] / s["plain"]["seconds"],
                TARGETS["cycle_vs_plain"])
            add("CT cycle / plain script (embedded)", label, s["flow_embedded"]["seconds"] / s["plain"]["seconds"],
                TARGETS["cycle_vs_plain"], "reported; the target is set against a server")
            add("CT cycle / plain script, training time equalised (local server)", label,
                equalised(s["flow_server"], s["plain"]), TARGETS["cycle_vs_plain"],
                "the same ratio without the fit's run-to-run noise")
            if "evidently" in s["drift"]:
                add("drift-check / numpy-scipy floor", label, s["drift"]["evidently"]["seconds"]
                    / s["drift"]["floor"]["seconds"], TARGETS["drift_vs_floor"], "all rows")
            sampled = f"evidently-sample-{SAMPLE_ROWS}"
            if sampled in s["drift"]:
                add("drift-check / numpy-scipy floor", label, s["drift"][sampled]["seconds"]
                    / s["drift"]["floor"]["seconds"], TARGETS["drift_vs_floor"],
                    f"sample_rows={SAMPLE_ROWS:,} (the floor uses all rows)")
        if rows_ >= 1_000_000:
            add("validation / pyarrow floor", label, s["validation"]["ours"]["seconds"]
                / s["validation"]["floor"]["seconds"], TARGETS["validation_vs_floor"])
            add("CT cycle peak RSS / plain script", label, s["flow_server"]["peak_rss"] / s["plain"]["peak_rss"],
                TARGETS["rss_vs_plain"])
    imports_ = results["imports"]
    add("import prefect_mlops / import prefect", "fresh process, median of "
        f"{len(imports_['prefect']['all'])}", imports_["prefect_mlops"]["median_seconds"]
        / imports_["prefect"]["median_seconds"], TARGETS["import_vs_prefect"])
    add("import prefect_mlops.flows / from prefect import flow, task", "fresh process", imports_[
        "prefect_mlops.flows"]["median_seconds"] / imports_["prefect:flow,task"]["median_seconds"],
        TARGETS["import_vs_prefect"], "reported: what a flow's process imports, against what any flow imports")
    wrapper = wrapper_summary(results)
    if wrapper:
        worst = max(wrapper.items(), key=lambda kv: kv[1]["overhead_seconds"])
        add("@task wrapper overhead, worst stage", f"{worst[0]}, {WRAPPER_ROWS:,} rows, local server",
            worst[1]["overhead_seconds"], TARGETS["wrapper_seconds"])
    return rows


def equalised(flow: dict[str, float], plain: dict[str, float]) -> float:
    """The cycle ratio with the same training time on both sides: (plain + flow's extra non-training time) / plain.

    Training is the same `Pipeline.fit` on the same data in both; on a shared machine its time alone
    varies by +-10% from run to run, which would swamp an overhead of a few percent."""
    return (plain["seconds"] + flow["rest_seconds"] - plain["rest_seconds"]) / plain["seconds"]


def wrapper_summary(results: dict[str, Any]) -> dict[str, Any]:
    for size in results["sizes"].values():
        for run in size["cycle"]["flow_server"]:
            if "wrapper" in run:
                return run["wrapper"]["stages"]
    return {}


# ---------------------------------------------------------------------------------------------- tables
def s_(seconds: float) -> str:
    return "-" if seconds != seconds else f"{seconds:.2f} s" if seconds < 10 else f"{seconds:.1f} s"


def mb(size: float) -> str:
    return "-" if size != size else f"{size / 2**20:,.0f} MiB" if size < 10 * 2**30 else f"{size / 2**30:.1f} GiB"


def x(ratio: float) -> str:
    return "-" if ratio != ratio else f"{ratio:.2f}x"


def markdown(results: dict[str, Any]) -> str:
    summary = summarize(results)
    m = results["machine"]
    libs = ", ".join(f"{k} {v}" for k, v in m["libraries"].items())
    keys = list(summary)
    head = [f"{int(k):,}" for k in keys]
    lines = [
        f"### Benchmark ({results['date']}, `make bench`)", "",
        f"Machine: {m['cores']} cores ({m['cpu']}), {m['ram_bytes'] / 2**30:.0f} GiB RAM, Python {m['python']}; "
        f"every process runs with OMP_NUM_THREADS=1 (Arrow then uses one thread too). {libs}. Load average "
        f"{m['load_average_start'][0]:.1f} at the start, {m['load_average_end'][0]:.1f} at the end (a shared "
        "machine: the medians absorb part of the noise, not all). Data: synthetic, 20 columns (11 numeric, "
        "7 categorical, a timestamp, a binary label). Trainer: "
        f"{results['settings']['trainer']}. Medians of "
        + ", ".join(f"{s['repeat']} at {int(k):,}" for k, s in summary.items()) + " runs; each in a fresh "
        "process. Cycle times exclude imports and Prefect's start-up (both below); the flow's cycle includes "
        "importing Great Expectations (its first use).", "",
        "**The CT cycle against the floor** (plain script: read Parquet, the suite's checks in pyarrow, the "
        "same split, pipeline and metrics, MLflow log with explicit pip_requirements, register, alias)", "",
        "| rows | flow / plain (local server) | flow / plain (embedded) | same, training time equalised (server, "
        "embedded) | CPU time flow + API / plain (server, embedded) | peak RSS flow / plain | peak RSS / Arrow "
        "size | plain script | flow, local server | flow, embedded | all but training: plain, flow (server) | "
        "peak RSS plain | peak RSS flow | Arrow size |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for k, s in summary.items():
        plain, srv, emb = s["plain"], s["flow_server"], s["flow_embedded"]
        lines.append(f"| {int(k):,} | {x(srv['seconds'] / plain['seconds'])} | {x(emb['seconds'] / plain['seconds'])}"
                     f" | {x(equalised(srv, plain))}, {x(equalised(emb, plain))}"
                     f" | {x(srv['cpu_seconds'] / plain['cpu_seconds'])}, "
                     f"{x(emb['cpu_seconds'] / plain['cpu_seconds'])}"
                     f" | {x(srv['peak_rss'] / plain['peak_rss'])} | {x(srv['peak_rss'] / s['arrow_bytes'])} "
                     f"(plain {x(plain['peak_rss'] / s['arrow_bytes'])}) | {s_(plain['seconds'])} | "
                     f"{s_(srv['seconds'])} | {s_(emb['seconds'])} | {s_(plain['rest_seconds'])}, "
                     f"{s_(srv['rest_seconds'])} | {mb(plain['peak_rss'])} | "
                     f"{mb(srv['peak_rss'])} | {mb(s['arrow_bytes'])} |")
    lines += ["", "**Per stage** (the plain functions in sequence in one process; drift-check from the drift "
              "runs below, all rows where run). Time, share of the stages' sum, peak RSS during the stage.", "",
              "| stage | " + " | ".join(f"{h} rows" for h in head) + " |",
              "|---|" + "---|" * len(keys)]
    stage_names = list(next(iter(summary.values()))["stages"])
    for name in [*stage_names, "drift-check"]:
        cells = []
        for s in summary.values():
            if name == "drift-check":
                d = s["drift"].get("evidently") or {}
                cells.append(f"{s_(d.get('seconds', float('nan')))}, {mb(d.get('rss_peak', float('nan')))}"
                             if d else "not run (see drift)")
                continue
            st = s["stages"][name]
            share = st["seconds"] / s["stages_sum"]
            extra = f" (fit {s_(st['fit_seconds'])}, MLflow log {s_(st['log_seconds'])})" if name == "train" else ""
            cells.append(f"{s_(st['seconds'])} ({share:.0%}){extra}, {mb(st['rss_peak'])}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("| sum of CT stages | " + " | ".join(f"{s_(s['stages_sum'])}, peak {mb(s['stages_peak_rss'])}"
                                                    for s in summary.values()) + " |")
    lines += ["", "**Validation** (read the snapshot, run the learned suite: "
              f"{next(iter(summary.values()))['validation']['expectations']} expectations)", "",
              "| rows | ours / floor | GX alone / floor | ours (Arrow push-down) | GX on every expectation | "
              "pyarrow floor | same table as GX |", "|---|---|---|---|---|---|---|"]
    for k, s in summary.items():
        v = s["validation"]
        lines.append(f"| {int(k):,} | {x(v['ours']['seconds'] / v['floor']['seconds'])} | "
                     f"{x(v['gx']['seconds'] / v['floor']['seconds'])} | {s_(v['ours']['seconds'])} | "
                     f"{s_(v['gx']['seconds'])} | {s_(v['floor']['seconds'])} | "
                     f"{'yes' if v['same_table'] else '**no**'} |")
    sampled = f"evidently-sample-{SAMPLE_ROWS}"
    lines += ["", "**Drift check** (18 columns a side; Evidently's DataDriftPreset with its HTML report, against "
              "KS + PSI / chi-squared + PSI per column in numpy/scipy on all rows)", "",
              f"| rows | Evidently, all rows / floor | Evidently, sample_rows={SAMPLE_ROWS:,} / floor | Evidently, "
              "all rows | Evidently, sampled | floor | drifted columns (all / sampled / floor) |",
              "|---|---|---|---|---|---|---|"]
    for k, s in summary.items():
        d = s["drift"]
        full, samp, floor = d.get("evidently"), d.get(sampled), d["floor"]
        lines.append(
            f"| {int(k):,} | {x(full['seconds'] / floor['seconds']) if full else 'not run'} | "
            f"{x(samp['seconds'] / floor['seconds']) if samp else '(no sampling below the sample size)'} | "
            f"{s_(full['seconds']) if full else '-'} | {s_(samp['seconds']) if samp else '-'} | "
            f"{s_(floor['seconds'])} | {len(full['drifted']) if full else '-'} / "
            f"{len(samp['drifted']) if samp else '-'} / {len(floor['drifted'])} |")
    lines += ["", "**Apart from the stages**", "", "| what | time |", "|---|---|"]
    runs = results.get("mlflow") or []
    if runs:
        cold = {run["order"][0]: run[f"save_{run['order'][0]}_seconds"][0] for run in runs}
        warm = {label: median([t for run in runs for t in run[f"save_{label}_seconds"][1:]])
                for label in ("explicit", "inferred")}
        lines += [f"| MLflow save_model, pip_requirements given (what train does): first in a process, then "
                  f"again | {s_(cold.get('explicit', float('nan')))}, then {s_(warm['explicit'])} |",
                  f"| MLflow save_model, pip_requirements inferred: first in a process, then again | "
                  f"{s_(cold.get('inferred', float('nan')))}, then {s_(warm['inferred'])}: giving them saves "
                  f"{s_(warm['inferred'] - warm['explicit'])} a model |",
                  f"| MLflow log_artifacts of the model + register + alias | "
                  f"{s_(median([r['log_artifacts_seconds'] for r in runs]))} + "
                  f"{s_(median([r['register_seconds'] for r in runs]))} |"]
    for k, s in summary.items():
        st = s["stages"]
        lines.append(f"| MLflow in the cycle at {int(k):,} rows: log run + model (train), register, deploy's "
                     f"alias moves and smoke test | {s_(st['train']['log_seconds'])}, {s_(st['register']['seconds'])},"
                     f" {s_(st['deploy']['seconds'])} |")
    lines.append(f"| MLflow SQLite store creation (schema migrations, once per store) | "
                 f"{s_(results['mlflow_store_create_seconds'])} |")
    startup_emb = median([r["startup_seconds"] for s in results["sizes"].values()
                          for r in s["cycle"]["flow_embedded"]])
    startup_srv = median([r["startup_seconds"] for s in results["sizes"].values()
                          for r in s["cycle"]["flow_server"]])
    lines += [f"| Prefect start-up per process, embedded API (first flow run minus second) | {s_(startup_emb)} |",
              f"| Prefect start-up per process, local server (same) | {s_(startup_srv)} |",
              "| `prefect server start` until healthy (once, while the untimed data preparation ran) | "
              f"{s_(results['prefect_server_start_seconds'])} |"]
    imp = results["imports"]
    spelled = {"prefect:flow,task": "from prefect import flow, task"}
    lines.append("| imports, fresh process, median of " + f"{len(imp['prefect']['all'])} | "
                 + ", ".join(f"`{spelled.get(m, 'import ' + m)}` {s_(v['median_seconds'])}"
                             for m, v in imp.items())
                 + "; in a process that has pandas, scikit-learn and MLflow: `import great_expectations` "
                 + ", ".join(f"{s_(s['imports']['gx'])}" for s in summary.values()) + ", `import evidently` "
                 + ", ".join(f"{s_(s['imports']['evidently'])}" for s in summary.values()) + " |")
    wrapper = wrapper_summary(results)
    if wrapper:
        lines += ["", "**`@task` wrapper overhead** (a task call's wall time minus the time its body ran "
                  f"during that call; inside one flow run on the local server, {WRAPPER_ROWS:,} rows, median of "
                  f"{len(next(iter(wrapper.values()))['overhead_all'])})", "",
                  "| stage | overhead | body | task call |", "|---|---|---|---|"]
        for name, w in wrapper.items():
            lines.append(f"| {name} | {w['overhead_seconds'] * 1000:.0f} ms | {s_(w['body_seconds'])} | "
                         f"{s_(w['task_seconds'])} |")
    lines += ["", "Notes:", "",
              "- *Validation* reads the snapshot as an Arrow table and computes, with `pyarrow.compute`, the "
              "metrics GX would compute on a pandas frame for the expectation types the learned suite uses (row "
              "count, column exists, type list, not null, between, in set); GX's own expectation classes judge "
              "them and build the `ExpectationValidationResult`s, so the table is GX's (`bench/gx_equivalence.py` "
              "compares every row with a GX-only run on clean and broken data). Other expectations run in GX "
              "on the pandas frame; `PREFECT_MLOPS_GX_PUSHDOWN=0` runs everything in GX.",
              "- *Drift* sampling is opt-in: `check_drift(..., sample_rows=N)` / `drift_check(sample_rows=N)`; "
              "the default (None) compares every row. The sampled scores are those of the sample.",
              "- The *plain script* is a floor, not a competitor: no snapshot, no lineage, no smoke test, no "
              "artifacts, no champion lookup, and the suite's checks without GX's result rows.",
              "- *Training time equalised*: both sides time their `Pipeline.fit`; the ratio adds the flow's extra "
              "time outside training to the plain script's cycle. Training is the same work on both sides, and "
              "its time alone moves by about 10% between runs on this shared machine.",
              "- *One fit*: wherever the flow runs here (the full benchmark and `--only cycle`, with or without "
              "`--before`), it runs with `RetrainPolicy(refit_full_window=False)`, so it fits once, on the train "
              "part, as the plain script does; the default refit on the whole window is a second fit about as long "
              "as the first."]
    lines += ["", "**Targets**", "", "| target | where | value | limit | holds |", "|---|---|---|---|---|"]
    for t in results["targets"]:
        value = f"{t['value'] * 1000:.0f} ms" if t["target"].startswith("@task") else x(t["value"])
        limit = f"{t['limit'] * 1000:.0f} ms" if t["target"].startswith("@task") else x(t["limit"])
        note = f" ({t['note']})" if t["note"] else ""
        lines.append(f"| {t['target']}{note} | {t['where']} | {value} | {limit} | "
                     f"{'yes' if t['holds'] else '**no**'} |")
    return "\n".join(lines) + "\n"


def write_readme(table: str, readme: Path) -> bool:
    start, end = "<!-- bench:start -->", "<!-- bench:end -->"
    if not readme.exists():
        return False
    text = readme.read_text()
    if start not in text or end not in text or text.index(start) > text.index(end):
        return False
    before, rest = text.split(start, 1)
    _, after = rest.split(end, 1)
    readme.write_text(f"{before}{start}\n{table}{end}{after}")
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100000,1000000,5000000", help="comma-separated row counts")
    parser.add_argument("--repeat", type=int, default=None,
                        help="runs of each configuration (median); default 3 up to 1M rows and 1 above, "
                             "and 1 when no size exceeds 100k (bench-quick: about 3 minutes)")
    parser.add_argument("--import-repeat", type=int, default=5, help="fresh processes per import timing")
    parser.add_argument("--drift-full-max", type=int, default=1_000_000,
                        help="largest size at which Evidently also runs on all rows (5M: minutes, ~15 GB)")
    parser.add_argument("--results", default=str(HERE / "results"), help="folder for <date>.json")
    parser.add_argument("--readme", default=None,
                        help="file with the bench markers (default: bench/README.md, except for a quick run)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (workspaces, logs)")
    parser.add_argument("--quiet", action="store_true", help="do not print each child's wall time")
    parser.add_argument("--before", default=None,
                        help="with --only cycle: a checkout (e.g. a worktree of an older commit) whose flow also "
                             "runs, interleaved, against the same floor")
    parser.add_argument("--only", choices=["cycle"], default=None,
                        help="cycle: only the plain script and the flow on a local server, to <date>-cycle.json/.md")
    args = parser.parse_args(argv)
    os.environ["OMP_NUM_THREADS"] = "1"
    if args.only == "cycle":
        results = bench_cycle(args)
        folder = Path(args.results)
        folder.mkdir(parents=True, exist_ok=True)
        stem = f"{results['date']}-cycle"
        (folder / f"{stem}.json").write_text(json.dumps(results, indent=1, default=str))
        table = cycle_markdown(results)
        (folder / f"{stem}.md").write_text(table)
        print("\n" + table)
        print(f"results: {folder / (stem + '.json')}, {folder / (stem + '.md')}; bench took {results['seconds']:.0f} s")
        return 0
    results = bench(args)
    folder = Path(args.results)
    folder.mkdir(parents=True, exist_ok=True)
    quick = max(int(size) for size in results["sizes"]) <= 100_000
    stem = results["date"] + ("-quick" if quick else "")
    (folder / f"{stem}.json").write_text(json.dumps(results, indent=1, default=str))
    table = markdown(results)
    print("\n" + table)
    readme = args.readme or ("" if quick else str(HERE / "README.md"))
    if readme and write_readme(table, Path(readme)):
        print(f"results: {folder / (stem + '.json')}; table written into {readme}")
    else:
        (folder / f"{stem}.md").write_text(table)
        why = f"no bench markers in {readme}" if readme else "a quick run leaves bench/README.md alone"
        print(f"results: {folder / (stem + '.json')}; {why}: table in {folder / (stem + '.md')}")
    print(f"bench took {results['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
