"""Many models on one Prefect server: drift checks per minute against a bare flow, and retraining on drift.

One local Prefect server (PostgreSQL), one process work pool, two process workers. Every model has
its own small data file (two monthly windows of synthetic churn data) and a champion trained by
`continuous_training`; some models' current window is drifted.

Phases (all on the same server and workers):

1. setup: a champion per model (continuous training, in this process, against the server).
2. retrain on drift: the drift monitor runs once per model (`retrain=False`, as deployed: its
   event starts the retraining deployment through an automation, `for_each` model, `within` one
   hour); for every drifted model a second training run is started by hand at the same time (a
   nightly run colliding with the retraining). Checked: exactly one retraining per drifted model,
   none for the others, and no two runs of one model inside the model lock at once (evaluate ->
   deploy task-run timestamps); flow-level overlaps are reported too.
3. the two measured arms, one after the other: the deployed drift monitor, and a bare `@flow`
   doing the same reads and per-column statistics (`bare_drift` below, the functions of
   `tasks/_drift_stats.py`), each deployed on the same pool. Runs are created through the API,
   round-robin over the models, keeping a fixed number of runs queued (closed loop): the workers
   are never idle and the queue never grows, so completed runs per minute is the throughput.
   The server's and each worker's process tree (flow-run processes included) are sampled with
   psutil every second: CPU seconds and RSS.

    python bench/many_models.py --models 5 --arm-seconds 60            # a small run
    python bench/many_models.py --models 50 --arm-seconds 240 --write  # the full run (make bench-models)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from itertools import pairwise
from pathlib import Path
from typing import Any

from prefect import flow

from prefect_mlops.heartbeats import end_heartbeats_with_run

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
README = ROOT / "bench" / "README.md"
POOL = "bench-models"
FEATURES = {"target": "churned", "numeric": ["tenure_months", "monthly_spend", "support_calls", "usage_hours"],
            "categorical": ["plan", "channel"], "slice_column": "region", "time_column": "event_time"}
COLUMNS = FEATURES["numeric"] + FEATURES["categorical"]
TRAINER = {"estimator": "sklearn.linear_model.LogisticRegression", "params": {"max_iter": 300}}
POLICY = {"floors": {"roc_auc": 0.6}, "max_drop": 0.01}
FINAL = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")
LABELS = {"bare": "bare flow, drift only", "same": "bare flow, same work", "monitor": "drift monitor"}


@flow(name="bare-drift", log_prints=False)
def bare_drift(reference: str, current: str, columns: list[str]) -> str:
    """The drift-only floor: read two Parquet files, the same per-column statistics and decision as the monitor."""
    return _drift_decision(reference, current, columns)


@flow(name="bare-same-work", log_prints=False)
def bare_same_work(reference: str, current: str, columns: list[str], model_name: str, target: str,
                   tracking_uri: str) -> dict[str, Any]:
    """The same-work floor: the drift statistics, and the champion's metric on the window's labelled rows.

    What a plain script would write: the alias looked up with `MlflowClient`, the model loaded with MLflow's
    own sklearn loader (its skops or cloudpickle file, as logged), `predict_proba` on the labelled rows and
    scikit-learn's ROC AUC. No prefect_mlops code in the model's path: no checksum check, no bootstrap, no
    live reference, no event, nothing logged back.
    """
    import mlflow.sklearn
    import pyarrow.parquet as pq
    from mlflow import MlflowClient
    from sklearn.metrics import roc_auc_score

    decision = _drift_decision(reference, current, columns)
    client = MlflowClient(tracking_uri=tracking_uri)
    version = client.get_model_version_by_alias(model_name, "champion")
    # as a plain script would: the loader resolves models:/ through the global URI (one flow per process here)
    mlflow.set_tracking_uri(tracking_uri)  # noqa: TID251
    model = mlflow.sklearn.load_model(f"models:/{model_name}/{version.version}")
    frame = pq.read_table(current, columns=[*columns, target]).to_pandas()
    frame = frame[frame[target].notna()]
    auc = float(roc_auc_score(frame[target].to_numpy(), model.predict_proba(frame[columns])[:, 1]))
    return {"decision": decision, "version": version.version, "roc_auc": auc}


# The floors end their runs as the monitor does (prefect_mlops.heartbeats): same Prefect, same exit.
end_heartbeats_with_run(bare_drift, bare_same_work)


def _drift_decision(reference: str, current: str, columns: list[str]) -> str:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from prefect_mlops.tasks._drift_stats import categorical_stats, decide, numeric_stats

    ref, cur = pq.read_table(reference, columns=columns), pq.read_table(current, columns=columns)
    stats = {}
    for column in columns:
        a, b = ref.column(column), cur.column(column)
        if pa.types.is_integer(a.type) or pa.types.is_floating(a.type):
            stats[column] = numeric_stats(pc.cast(a, pa.float64()).to_numpy(), pc.cast(b, pa.float64()).to_numpy(),
                                          column=column)
        else:
            counts = [{k: n for k, n in zip(c.field("values").to_pylist(), c.field("counts").to_pylist(), strict=True)
                       if k is not None} for c in (pc.value_counts(a), pc.value_counts(b))]
            stats[column] = categorical_stats(*counts, column=column, reference_missing=a.null_count,
                                              current_missing=b.null_count)
    return decide(stats).decision


# ------------------------------------------------------------------------------------------ data


def make_data(home: Path, models: int, drifted: int, rows: int) -> dict[str, dict[str, Any]]:
    """Per model: a source file (training window then current window) and the two windows as files."""
    import pandas as pd

    from prefect_mlops.demo import DRIFTED_PERIOD, make_churn_data, period_window

    out = {}
    for i in range(models):
        name = f"bench-{i:03d}"
        is_drifted = i < drifted
        current_period = DRIFTED_PERIOD if is_drifted else 1
        ref, cur = make_churn_data(0, rows=rows, seed=100 + i), make_churn_data(current_period, rows=rows, seed=100 + i)
        paths = {kind: home / "data" / kind / f"{name}.parquet" for kind in ("source", "reference", "current")}
        for path in paths.values():
            path.parent.mkdir(parents=True, exist_ok=True)
        pd.concat([ref, cur]).to_parquet(paths["source"], index=False)
        ref.to_parquet(paths["reference"], index=False)
        cur.to_parquet(paths["current"], index=False)
        out[name] = {"drifted": is_drifted, "train_window": period_window(0),
                     "current_window": period_window(current_period), **{k: str(v) for k, v in paths.items()}}
    return out


# ------------------------------------------------------------------------------------ sampling


class Sampler(threading.Thread):
    """CPU seconds and RSS of process trees (a root and its descendants), sampled every `period` s.

    CPU of a tree: the root's own time, plus its reaped children's (the kernel adds a child's time to
    its parent's when the parent waits for it: a worker's finished flow-run processes), plus its live
    descendants'. Exact but for what a flow-run process spends in its last `period` before it ends
    (counted once it is reaped).
    """

    def __init__(self, roots: dict[str, int], period: float = 1.0) -> None:
        super().__init__(daemon=True)
        self.roots, self.period = roots, period
        self.cpu: dict[str, float] = dict.fromkeys(roots, 0.0)
        self.rss: dict[str, list[float]] = {g: [] for g in roots}
        self.stop_event = threading.Event()

    def run(self) -> None:
        import psutil

        while not self.stop_event.is_set():
            for group, pid in self.roots.items():
                try:
                    root = psutil.Process(pid)
                    procs = [root, *root.children(recursive=True)]
                except psutil.Error:
                    continue
                rss, cpu = 0, 0.0
                for proc in procs:
                    try:
                        times = proc.cpu_times()
                        cpu += times.user + times.system
                        if proc is root:
                            cpu += times.children_user + times.children_system
                        rss += proc.memory_info().rss
                    except psutil.Error:
                        pass
                self.cpu[group] = max(self.cpu[group], cpu)
                self.rss[group].append(rss / 2**20)
            self.stop_event.wait(self.period)

    def snapshot(self) -> dict[str, float]:
        return dict(self.cpu)

    def finish(self) -> None:
        self.stop_event.set()
        self.join(5)


def usage(before: dict[str, float], after: dict[str, float], rss: dict[str, list[float]], start: int,
          seconds: float) -> dict[str, Any]:
    out = {}
    for group in after:
        samples = rss[group][start:] or [0.0]
        cpu = after[group] - before.get(group, 0.0)
        out[group] = {"cpu_s": round(cpu, 1), "cores": round(cpu / seconds, 2),
                      "rss_mean_mib": round(statistics.fmean(samples)), "rss_peak_mib": round(max(samples))}
    return out


# ------------------------------------------------------------------------------------ the server


def sync_client():
    from prefect import get_client

    return get_client(sync_client=True)


def create_deployments(home: Path, data: dict[str, dict[str, Any]], mlflow: dict[str, Any],
                       concurrency: int) -> dict[str, Any]:
    from prefect.client.schemas.actions import WorkPoolCreate

    with sync_client() as client:
        client.create_work_pool(WorkPoolCreate(name=POOL, type="process", concurrency_limit=concurrency))
        ids = {}
        for key, flow_name, entrypoint in (
                ("monitor", "drift-monitor", "prefect_mlops.flows.drift_monitor.drift_monitor"),
                ("bare", "bare-drift", "bench/many_models.py:bare_drift"),
                ("same", "bare-same-work", "bench/many_models.py:bare_same_work"),
                ("retrain", "continuous-training", "prefect_mlops.flows.continuous_training.continuous_training"),
                ("nightly", "continuous-training", "prefect_mlops.flows.continuous_training.continuous_training")):
            flow_id = client.create_flow_from_name(flow_name)
            # The package's flows import by module path; the bare flow's file is found from the repository
            # root. No deployment path: with one, every run first copies that folder into its own.
            pull = [] if ":" not in entrypoint else \
                [{"prefect.deployments.steps.set_working_directory": {"directory": str(ROOT)}}]
            ids[key] = client.create_deployment(flow_id=flow_id, name=f"bench-{key}", work_pool_name=POOL,
                                                entrypoint=entrypoint, pull_steps=pull,
                                                enforce_parameter_schema=False)
    source = {"uri": str(home / "data" / "source" / "{{ event.payload.model_name }}.parquet"),
              "time_column": "event_time"}
    retrain_parameters = {
        "model_name": "{{ event.payload.model_name }}", "source": source, "features": FEATURES, "trainer": TRAINER,
        "policy": POLICY, "mlflow_server": mlflow,
        "window": "{{ event.payload.training_window | default(event.payload.window) | default('latest') }}",
        "trigger": "{{ event.payload.trigger | default('drift') }}"}
    automation = _create_automation(ids["retrain"], retrain_parameters)
    return {"deployments": ids, "automation": automation}


def _create_automation(deployment_id: Any, parameters: dict[str, Any]) -> str:
    """The prefect.yaml trigger of `<model>-retrain-on-drift`, for every model at once (`for_each` model)."""
    import asyncio

    from prefect import get_client
    from prefect.events.actions import RunDeployment
    from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture

    automation = AutomationCore(
        name="bench: retrain on drift", trigger=EventTrigger(
            match={"prefect.resource.id": "prefect-mlops.model.bench-*"},
            expect={"prefect_mlops.performance.degraded", "prefect_mlops.drift.detected", "prefect_mlops.model.stale"},
            for_each={"prefect.resource.id"}, posture=Posture.Reactive, threshold=1, within=timedelta(hours=1)),
        actions=[RunDeployment(source="selected", deployment_id=deployment_id, parameters=parameters)])

    async def create() -> str:
        async with get_client() as client:
            return str(await client.create_automation(automation))

    return asyncio.run(create())


def submit(deployment_id: Any, parameters: dict[str, Any], tag: str) -> Any:
    with sync_client() as client:
        return client.create_flow_run_from_deployment(deployment_id, parameters=parameters, tags=[tag]).id


def runs_of(deployment_id: Any) -> list[Any]:
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    found, offset = [], 0
    with sync_client() as client:
        while True:
            only = DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))
            page = client.read_flow_runs(deployment_filter=only, limit=200, offset=offset)
            found += page
            if len(page) < 200:
                return found
            offset += 200


def state_of(run: Any) -> str:
    return run.state.type.value if run.state else "?"


def wait_final(deployment_ids: list[Any], timeout: float) -> list[Any]:
    deadline = time.monotonic() + timeout
    while True:
        runs = [r for d in deployment_ids for r in runs_of(d)]
        if all(state_of(r) in FINAL for r in runs) or time.monotonic() > deadline:
            return runs
        time.sleep(2)


# ---------------------------------------------------------------------------------------- phases


def monitor_parameters(name: str, model: dict[str, Any], mlflow: dict[str, Any]) -> dict[str, Any]:
    return {"model_name": name, "source": {"uri": model["source"], "time_column": "event_time"},
            "window": model["current_window"], "retrain": False, "policy": POLICY, "mlflow_server": mlflow}


def bare_parameters(name: str, model: dict[str, Any], mlflow: dict[str, Any]) -> dict[str, Any]:
    return {"reference": model["reference"], "current": model["current"], "columns": COLUMNS}


def same_parameters(name: str, model: dict[str, Any], mlflow: dict[str, Any]) -> dict[str, Any]:
    return {**bare_parameters(name, model, mlflow), "model_name": name, "target": FEATURES["target"],
            "tracking_uri": mlflow["tracking_uri"]}


def train_champions(data: dict[str, dict[str, Any]], mlflow: dict[str, Any], procs: int) -> tuple[float, list[str]]:
    """Each model's first champion, by `continuous_training` in `procs` processes of this script.

    Returns the seconds it took and the models left without a champion (said, and left out of the run).
    """
    from mlflow import MlflowClient

    start = time.perf_counter()
    # MLflow creates its SQLite tables on first use: once, here, not racing in two processes
    MlflowClient(tracking_uri=mlflow["tracking_uri"]).search_experiments()
    names = list(data)
    spec = Path(tempfile.mkdtemp(prefix="bench-models-setup-")) / "data.json"
    spec.write_text(json.dumps({"data": data, "mlflow": mlflow}))
    children = [subprocess.Popen([sys.executable, __file__, "--train-only", str(spec), *names[i::procs]])
                for i in range(procs)]
    for child in children:
        child.wait()
    done = {json.loads(line)["done"] for path in spec.parent.glob("done-*") for line in path.read_text().splitlines()}
    missing = sorted(set(names) - done)
    if len(missing) == len(names):
        raise RuntimeError("no first champion was trained; see the errors above")
    return time.perf_counter() - start, missing


def train_only(spec: Path, names: list[str]) -> None:
    """The first champions of `names`, in this process (against the server in PREFECT_API_URL)."""
    loaded = json.loads(spec.read_text())
    data, mlflow = {n: loaded["data"][n] for n in names}, loaded["mlflow"]
    from prefect_mlops.blocks import DataSource, MlflowServer, ModelPolicy
    from prefect_mlops.flows import continuous_training
    from prefect_mlops.tasks.features import FeatureSpec
    from prefect_mlops.tasks.lineage import TrainerSpec

    done = spec.parent / f"done-{os.getpid()}"
    for name, model in data.items():
        try:
            report = continuous_training(name, DataSource(uri=model["source"], time_column="event_time"),
                                         FeatureSpec(**FEATURES), TrainerSpec(**TRAINER),
                                         policy=ModelPolicy(**POLICY), window=model["train_window"],
                                         mlflow_server=MlflowServer(**mlflow))
        except Exception as exc:  # one model's failure leaves it out of the run, said
            print(f"model {name}: the first cycle failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
            continue
        if report.outcome == "promoted":
            with done.open("a") as out:
                out.write(json.dumps({"done": name}) + "\n")
        else:
            print(f"model {name}: the first cycle was not promoted: {report.message}", file=sys.stderr, flush=True)


def interleaved(arms: list[tuple[str, Any, Any]], data: dict[str, dict[str, Any]], mlflow: dict[str, Any],
                sampler: Sampler, rounds: int, segment: float, queued: int, warmup: float) -> dict[str, Any]:
    """The arms in turns of `segment` s (A, B, C, then B, C, A, ...), `rounds` turns each, so that the machine's
    load falls on every arm alike. Each turn is a closed loop of one arm (`queued` runs kept not yet final); its
    runs that complete after the turn's first `warmup` s and before its end are counted. At a turn's end its runs
    not started yet are deleted and the started ones finish during the next turn's warm-up, uncounted.
    """
    names = list(data)
    totals = {label: {"completed": 0, "measured": 0.0, "submitted": 0, "cpu": {}, "rss": {}, "durations": [],
                      "lateness": [], "per_turn": [], "loads": []} for label, _, _ in arms}
    index = 0
    for turn in range(rounds):
        order = arms[turn % len(arms):] + arms[:turn % len(arms)]
        for label, deployment_id, parameters in order:
            total = totals[label]
            began = time.time()
            window_start, load = began + warmup, os.getloadavg()[0]
            cpu_before, rss_index = None, None
            while time.time() < began + segment:
                if cpu_before is None and time.time() >= window_start:
                    cpu_before, rss_index = sampler.snapshot(), len(next(iter(sampler.rss.values())))
                live = [r for r in runs_of(deployment_id) if state_of(r) not in FINAL]
                for _ in range(queued - len(live)):
                    model = names[index % len(names)]
                    submit(deployment_id, parameters(model, data[model], mlflow), label)
                    index += 1
                    total["submitted"] += 1
                time.sleep(1)
            ended = time.time()
            cpu_after = sampler.snapshot()
            runs = runs_of(deployment_id)
            done = [r for r in runs if state_of(r) == "COMPLETED" and r.end_time
                    and window_start <= r.end_time.timestamp() <= ended]
            with sync_client() as client:
                for run in runs:
                    if state_of(run) == "SCHEDULED":
                        client.delete_flow_run(run.id)
            total["completed"] += len(done)
            total["measured"] += ended - window_start
            total["per_turn"].append(len(done))
            total["loads"].append(round(load, 1))
            total["durations"] += [r.total_run_time.total_seconds() for r in done]
            total["lateness"] += [(r.start_time - r.expected_start_time).total_seconds() for r in done if r.start_time]
            for group, value in cpu_after.items():
                total["cpu"][group] = total["cpu"].get(group, 0.0) + value - (cpu_before or {}).get(group, 0.0)
                total["rss"].setdefault(group, []).extend(sampler.rss[group][rss_index or 0:])
            print(f"turn {turn + 1}, {label}: {len(done)} completed in {ended - window_start:.0f} s "
                  f"(load {load:.1f})", flush=True)
    out = {}
    for label, deployment_id, _ in arms:
        total = totals[label]
        runs = runs_of(deployment_id)
        failed = [r for r in runs if state_of(r) in ("FAILED", "CRASHED")]
        measured = total["measured"]
        use = {g: {"cpu_s": round(c, 1), "cores": round(c / measured, 2),
                   "rss_mean_mib": round(statistics.fmean(total["rss"][g] or [0.0])),
                   "rss_peak_mib": round(max(total["rss"][g] or [0.0]))} for g, c in total["cpu"].items()}
        out[label] = {"arm": label, "load_average": [min(total["loads"]), max(total["loads"])],
                      "measured_s": round(measured, 1), "completed": total["completed"], "failed": len(failed),
                      "submitted": total["submitted"], "per_turn": total["per_turn"],
                      "checks_per_min": round(total["completed"] / measured * 60, 2),
                      "run_time_median_s": round(statistics.median(total["durations"]), 2)
                      if total["durations"] else None,
                      "start_delay_median_s": round(statistics.median(total["lateness"]), 2)
                      if total["lateness"] else None,
                      "usage": use,
                      "failures": [f"{r.name}: {r.state.message[:300] if r.state else '?'}" for r in failed[:5]]}
    return out


def retrain_phase(ids: dict[str, Any], data: dict[str, dict[str, Any]], mlflow: dict[str, Any],
                  timeout: float) -> dict[str, Any]:
    """A monitor run for each drifted model; when its event has started the retraining, a hand-started
    training run of the same model (`force=True`: same data) at once, so two runs meet at the model lock.

    The stable models are monitored by the measured arm; `check_lock` runs over everything at the end.
    """
    drifted = [n for n in data if data[n]["drifted"]]
    for name in drifted:
        submit(ids["monitor"], monitor_parameters(name, data[name], mlflow), "retrain-phase")
    collided: set[str] = set()
    deadline = time.monotonic() + timeout
    while len(collided) < len(drifted) and time.monotonic() < deadline:
        for run in runs_of(ids["retrain"]):
            name = run.parameters.get("model_name")
            if name in data and name not in collided:
                submit(ids["nightly"], {"model_name": name, "source": {"uri": data[name]["source"],
                                                                        "time_column": "event_time"},
                                        "features": FEATURES, "trainer": TRAINER, "policy": POLICY,
                                        "mlflow_server": mlflow, "window": "latest", "trigger": "schedule",
                                        "force": True}, "retrain-phase")
                collided.add(name)
        if all(state_of(r) in FINAL for r in runs_of(ids["monitor"])) and len(collided) < len(drifted):
            time.sleep(5)  # the automation acts ~0.3 s after the event; a model whose monitor saw no drift stops here
            if not [r for r in runs_of(ids["retrain"]) if r.parameters.get("model_name") not in collided]:
                break
        time.sleep(1)
    runs = wait_final([ids["monitor"], ids["retrain"], ids["nightly"]], timeout)
    return {"monitor_runs": sum(1 for r in runs if r.deployment_id == ids["monitor"]),
            "collisions_started": len(collided)}


PROFILED = {  # (file ending, function): what the profile reports
    ("evidently/__init__.py", "<module>"): "import evidently (the HTML drift report)",
    ("tasks/drift.py", "_save_html"): "HTML drift report, its import included",
    ("skops/io/__init__.py", "<module>"): "import skops.io (loading the champion)",
    ("blocks/mlflow_server.py", "load_model"): "load the champion, its imports included",
    ("tasks/lineage.py", "find_champion"): "find-champion (MLflow client and registry)",
    ("tasks/performance.py", "check_performance"): "performance check",
    ("tasks/drift.py", "check_drift"): "drift check",
    ("tasks/drift.py", "log_drift_run"): "drift report logged to MLflow",
    ("mlflow/sklearn/__init__.py", "load_model"): "mlflow.sklearn.load_model (skops import included)",
    ("mlflow/tracking/client.py", "get_model_version_by_alias"): "MlflowClient alias lookup",
    ("tasks/performance.py", "_bootstrap"): "performance check: bootstrap",
    ("prefect_mlops/integrity.py", "verify_folder"): "model files checked against their digests",
    ("tasks/performance.py", "_reference"): "performance check: hold-out reference (MLflow)",
    ("tasks/performance.py", "_live_reference"): "performance check: live reference (MLflow)",
    ("sklearn/metrics/_ranking.py", "roc_auc_score"): "roc_auc_score",
    ("bench/many_models.py", "_drift_decision"): "drift statistics (bare flows)",
    ("tasks/ingest.py", "ingest_dataset"): "ingest the window (snapshot)",
    ("tasks/lineage.py", "read_importance"): "read the champion's feature importance (MLflow)",
    ("tasks/retrain.py", "decide_retraining"): "retrain decision",
    ("flows/drift_monitor.py", "drift_monitor"): "drift monitor's flow function (inside the engine)",
    ("mlflow/__init__.py", "<module>"): "import mlflow",
}


def profile_one(spec: Path, name: str, which: str) -> dict[str, float]:
    """One run of a flow, cold, in this fresh process, as a worker's flow-run process would: where its time goes."""
    import cProfile
    import pstats

    loaded = json.loads(spec.read_text())
    model, mlflow = loaded["data"][name], loaded["mlflow"]
    profile = cProfile.Profile()
    start = time.perf_counter()
    profile.enable()
    if which == "monitor":
        from prefect_mlops.flows.drift_monitor import drift_monitor

        drift_monitor(**monitor_parameters(name, model, mlflow))
    elif which == "same":
        bare_same_work(**same_parameters(name, model, mlflow))
    else:
        bare_drift(**bare_parameters(name, model, mlflow))
    profile.disable()
    out = {"total": time.perf_counter() - start}
    for (path, _, function), (_, _, _, cumulative, _) in pstats.Stats(profile).stats.items():
        for (ending, wanted), label in PROFILED.items():
            if path.endswith(ending) and function == wanted:
                out[label] = out.get(label, 0.0) + cumulative
    return {k: round(v, 2) for k, v in out.items()}


def profile_runs(data: dict[str, dict[str, Any]], mlflow: dict[str, Any]) -> dict[str, Any]:
    """A stable model's monitor run and its bare run, each cold in a fresh process (one after the other)."""
    spec = Path(tempfile.mkdtemp(prefix="bench-models-profile-")) / "data.json"
    spec.write_text(json.dumps({"data": data, "mlflow": mlflow}))
    name = next(n for n in data if not data[n]["drifted"])
    out = {}
    for which in ("bare", "same", "monitor"):
        done = subprocess.run([sys.executable, __file__, "--profile-one", str(spec), name, which],
                              capture_output=True, text=True, check=False)
        lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
        out[which] = json.loads(lines[-1]) if done.returncode == 0 and lines else {"error": done.stderr[-2000:]}
    return out


def check_lock(ids: dict[str, Any], data: dict[str, dict[str, Any]], runs: list[Any]) -> dict:
    """Exactly one retraining per drifted model, none for the others; no two runs of a model in the lock at once."""
    retrains = [r for r in runs if r.deployment_id == ids["retrain"]]
    per_model: dict[str, list[Any]] = {}
    for r in runs:
        if r.deployment_id in (ids["retrain"], ids["nightly"]):
            per_model.setdefault(r.parameters.get("model_name"), []).append(r)
    retrain_count = {n: sum(1 for r in retrains if r.parameters.get("model_name") == n) for n in data}
    flow_overlaps, lock_overlaps, lock_intervals = [], [], {}
    with sync_client() as client:
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

        for name, model_runs in per_model.items():
            spans = []
            for r in model_runs:
                tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[r.id])))
                held = [t for t in tasks if t.name.split("-")[0] in ("evaluate", "gate", "register", "deploy")
                        and t.start_time and t.end_time]
                if held:
                    spans.append((min(t.start_time for t in held), max(t.end_time for t in held), r.name))
            spans.sort()
            lock_intervals[name] = [(a.isoformat(), b.isoformat(), n) for a, b, n in spans]
            lock_overlaps += [f"{name}: {x[2]} and {y[2]}" for x, y in pairwise(spans) if y[0] < x[1]]
            flows = sorted((r.start_time, r.end_time, r.name) for r in model_runs if r.start_time and r.end_time)
            flow_overlaps += [f"{name}: {x[2]} and {y[2]}" for x, y in pairwise(flows) if y[0] < x[1]]
    states = {}
    for r in runs:
        states[state_of(r)] = states.get(state_of(r), 0) + 1
    drifted = [n for n in data if data[n]["drifted"]]
    return {"drifted_models": len(drifted), "retrains_per_drifted_model": sorted({retrain_count[n] for n in drifted}),
            "retrains_of_stable_models": sum(retrain_count[n] for n in data if not data[n]["drifted"]),
            "exactly_one_retrain_each": all(retrain_count[n] == 1 for n in drifted)
            and not any(retrain_count[n] for n in data if not data[n]["drifted"]),
            "ct_runs": sum(len(v) for v in per_model.values()), "ct_runs_with_lock_spans":
                sum(len(v) for v in lock_intervals.values()),
            "flow_run_overlaps": flow_overlaps, "lock_overlaps": lock_overlaps, "lock_held": not lock_overlaps,
            "run_states": states}


# ------------------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=50)
    parser.add_argument("--drifted", type=int, default=None, help="models whose data drifts (default: 1 in 10)")
    parser.add_argument("--rows", type=int, default=1000, help="rows per window per model")
    parser.add_argument("--rounds", type=int, default=2, help="turns of each arm, interleaved")
    parser.add_argument("--segment", type=float, default=90, help="seconds of one turn")
    parser.add_argument("--warmup", type=float, default=30, help="seconds of a turn not counted")
    parser.add_argument("--name", default="models", help="results to bench/results/<date>-<name>.json/.md")
    parser.add_argument("--concurrency", type=int, default=4, help="the work pool's concurrency limit")
    parser.add_argument("--queued", type=int, default=None, help="runs kept not yet final (default 2x concurrency)")
    parser.add_argument("--setup-procs", type=int, default=2, help="processes training the first champions")
    parser.add_argument("--skip-retrain", action="store_true")
    parser.add_argument("--skip-profile", action="store_true")
    parser.add_argument("--train-only", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--profile-one", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--write", action="store_true", help="results to bench/results and bench/README.md")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if args.train_only:
        train_only(Path(args.train_only[0]), args.train_only[1:])
        return 0
    if args.profile_one:
        print(json.dumps(profile_one(Path(args.profile_one[0]), *args.profile_one[1:])), flush=True)
        return 0
    drifted = args.drifted if args.drifted is not None else max(1, args.models // 10)
    queued = args.queued or 2 * args.concurrency

    from prefect_mlops.cli.processes import Server, Stack, api, free_port

    home = Path(tempfile.mkdtemp(prefix="bench-models-"))
    database = f"bench_models_{uuid.uuid4().hex[:10]}"
    subprocess.run(["createdb", "-h", "127.0.0.1", "-U", "postgres", database], check=True)
    server = Server(home=home / "prefect", port=free_port(),
                    database_url=f"postgresql+asyncpg://postgres@127.0.0.1:5432/{database}",
                    extra_env={"PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "2"})
    mlflow = {"tracking_uri": f"sqlite:///{home / 'mlflow.db'}", "artifact_location": (home / "mlartifacts").as_uri(),
              "experiment": "bench-models"}
    workspace = home / "workspace"
    os.environ["PREFECT_MLOPS_WORKSPACE"] = str(workspace)
    result: dict[str, Any] = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                              "models": args.models, "drifted": drifted, "rows_per_window": args.rows,
                              "pool_concurrency": args.concurrency, "queued": queued, "workers": 2,
                              "rounds": args.rounds, "segment_s": args.segment, "warmup_s": args.warmup,
                              "load_before": os.getloadavg()[0], "machine": machine()}
    stack = Stack(server.start())
    sampler = None
    try:
        with api(server.api_url):
            data = make_data(home, args.models, drifted, args.rows)
            ids = create_deployments(home, data, mlflow, args.concurrency)["deployments"]
            print(f"server {server.api_url}; home {home}", flush=True)
            os.environ["PREFECT_API_URL"] = server.api_url  # for the setup processes
            seconds, missing = train_champions(data, mlflow, args.setup_procs)
            result["setup_s"], result["left_out"] = round(seconds, 1), missing
            data = {n: m for n, m in data.items() if n not in missing}
            print(f"champions trained in {result['setup_s']} s", flush=True)
            stack.start_workers([POOL], query_seconds="1", PREFECT_MLOPS_WORKSPACE=str(workspace),
                                OMP_NUM_THREADS="1", GX_ANALYTICS_ENABLED="false",
                                MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false")
            # the second worker: start_workers names one per pool
            from prefect_mlops.cli.processes import Worker, wait_for_workers

            stack.workers.append(Worker(POOL, stack.workers[0].env, server.home / "worker-2.log").start())
            wait_for_workers([POOL])
            sampler = Sampler({"server": server.proc.pid, "worker 1": stack.workers[0].proc.pid,
                               "worker 2": stack.workers[1].proc.pid})
            sampler.start()
            if not args.skip_retrain:
                t0 = time.perf_counter()
                result["retrain_phase"] = retrain_phase(ids, data, mlflow, timeout=600)
                result["retrain_phase"]["seconds"] = round(time.perf_counter() - t0, 1)
                print(json.dumps(result["retrain_phase"], indent=1), flush=True)
            arms = interleaved([(LABELS["bare"], ids["bare"], bare_parameters),
                                (LABELS["same"], ids["same"], same_parameters),
                                (LABELS["monitor"], ids["monitor"], monitor_parameters)],
                               data, mlflow, sampler, args.rounds, args.segment, queued, args.warmup)
            for key, label in LABELS.items():
                result[key] = arms[label]
                print(json.dumps(result[key], indent=1), flush=True)
            # the target is against the same-work floor; the drift-only floor is reported beside it
            monitor = result["monitor"]["checks_per_min"]
            result["ratio"] = round(monitor / result["same"]["checks_per_min"], 3) \
                if result["same"]["checks_per_min"] else None
            result["ratio_drift_only"] = round(monitor / result["bare"]["checks_per_min"], 3) \
                if result["bare"]["checks_per_min"] else None
            # whatever the arms' monitor runs started on drift has to finish before the lock is judged
            runs = wait_final([ids["monitor"], ids["retrain"], ids["nightly"]], timeout=300)
            wait_final([ids["bare"], ids["same"]], timeout=120)
            result["lock"] = check_lock(ids, data, runs)
            print(json.dumps(result["lock"], indent=1), flush=True)
            if not args.skip_profile:
                result["profile"] = profile_runs(data, mlflow)
                print(json.dumps(result["profile"], indent=1), flush=True)
            result["load_after"] = os.getloadavg()[0]
    finally:
        if sampler:
            sampler.finish()
        stack.stop()
        subprocess.run(["dropdb", "-h", "127.0.0.1", "-U", "postgres", "--if-exists", "--force", database],
                       check=False, capture_output=True)
    (home / "result.json").write_text(json.dumps(result, indent=2, default=str))
    print(json.dumps({k: result.get(k) for k in ("ratio", "ratio_drift_only", "setup_s")}), flush=True)
    if args.write:
        write(result, args.name)
    return 0 if result.get("ratio") is not None else 1


def machine() -> str:
    import prefect

    return (f"{os.cpu_count()} cores, Python {platform.python_version()}, prefect {prefect.__version__}, "
            f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}")


def _arm_row(arm: dict[str, Any], same: dict[str, Any], bare: dict[str, Any]) -> str:
    use = arm["usage"]
    workers = [use[g] for g in use if g.startswith("worker")]
    cpu = sum(w["cpu_s"] for w in workers) + use["server"]["cpu_s"]

    def ratio(floor: dict[str, Any]) -> str:
        return f"{arm['checks_per_min'] / floor['checks_per_min']:.2f}x" if floor["checks_per_min"] else "-"

    return (f"| {arm['arm']} | {arm['checks_per_min']:.2f} | **{ratio(same)}** | {ratio(bare)} | "
            f"{arm['completed']} ({arm['failed']}) | {', '.join(map(str, arm.get('per_turn', [])))} | "
            f"{arm['run_time_median_s']} s | {arm['start_delay_median_s']} s | "
            f"{use['server']['cores']:.2f}, {use['server']['rss_mean_mib']:,} / "
            f"{use['server']['rss_peak_mib']:,} MiB | "
            + ", ".join(f"{w['cores']:.2f}" for w in workers) + " | "
            + ", ".join(f"{w['rss_mean_mib']:,} / {w['rss_peak_mib']:,}" for w in workers) + " MiB | "
            f"{cpu / max(arm['completed'], 1):.1f} s | {arm['load_average'][0]} to {arm['load_average'][1]} |")


def markdown(result: dict[str, Any]) -> str:
    day = result["date"][:10]
    lock = result.get("lock") or {}
    lines = [
        f"### Many models on one server ({day}, `make bench-models`)", "",
        f"Machine: {result['machine']}; load average {result['load_before']:.1f} at the start, "
        f"{result.get('load_after', float('nan')):.1f} at the end (a shared machine). One Prefect server "
        f"(PostgreSQL), one process work pool (concurrency limit {result['pool_concurrency']}), "
        f"{result['workers']} process workers; {result['models']} models, {result['drifted']} of them drifted"
        + (f" ({len(result['left_out'])} left out: no first champion)" if result.get("left_out") else "") + ", "
        f"{result['rows_per_window']:,} rows a window. The three arms take turns of {result['segment_s']:.0f} s "
        f"({result['rounds']} turns each, interleaved, so the machine's load falls on each alike); in a turn, runs "
        f"of that arm are created through the API round-robin over the models, {result['queued']} kept queued "
        f"(the workers never idle); runs completing after the turn's first {result['warmup_s']:.0f} s are "
        "counted. Drift checks per minute: those runs over the counted seconds. **The target ratio is against "
        "the same-work floor** (drift statistics, plus the champion looked up by alias, loaded with "
        "`mlflow.sklearn.load_model` and scored on the window's labelled rows); the drift-only floor is shown "
        "beside it. CPU (cores used) and RSS (mean / peak MiB) of each process tree, flow-run processes included "
        "in their worker's; CPU per check: server and workers together.", "",
        "| arm | drift checks / min | / same-work floor | / drift-only floor | completed (failed) | per turn | "
        "median run time | median start delay | server: cores, RSS | workers: cores | workers: RSS | "
        "CPU per check | load average (turn starts) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        *(_arm_row(result[key], result["same"], result["bare"]) for key in ("bare", "same", "monitor")), ""]
    if result.get("retrain_phase"):
        lines.append(
            f"Retraining on drift ({result['retrain_phase'].get('seconds', '-')} s before the arms: a monitor run "
            "of each drifted model, its event starting the retraining deployment through one automation, "
            "`for_each` model, `within` an hour; the moment that run exists, a training run of the same model "
            f"started by hand): retrainings per drifted model {lock.get('retrains_per_drifted_model')}, of stable "
            f"models {lock.get('retrains_of_stable_models')}; {lock.get('ct_runs')} training runs, "
            f"{lock.get('ct_runs_with_lock_spans')} of them reached evaluate; runs of one model overlapping as flow "
            f"runs: {len(lock.get('flow_run_overlaps', []))}, inside the model lock (evaluate -> deploy task runs): "
            f"{len(lock.get('lock_overlaps', []))}.")
    else:
        lines.append(
            "Retraining on drift: not run in this run (`--skip-retrain`); the drifted models' monitor runs in the "
            f"arms still started retrainings through the automation ({lock.get('ct_runs')} training runs, "
            f"retrainings per drifted model {lock.get('retrains_per_drifted_model')}, of stable models "
            f"{lock.get('retrains_of_stable_models')}, inside the model lock at once: "
            f"{len(lock.get('lock_overlaps', []))}), on the same pool, during whichever turn they fell in.")
    profile = result.get("profile") or {}
    if all("total" in profile.get(k, {}) for k in ("bare", "same", "monitor")):
        labels = [label for label in PROFILED.values() if any(label in profile[k] for k in profile)]
        lines += ["", "**Where a run's time goes** (one run of a stable model per flow, cold in a fresh process as a "
                  "worker starts it, under cProfile, after the arms; cumulative seconds, overlapping: an import is "
                  "inside the step that triggers it)", "",
                  "| | bare, drift only | bare, same work | drift monitor |", "|---|---|---|---|",
                  "| whole run | " + " | ".join(f"{profile[k]['total']:.2f}" for k in ("bare", "same", "monitor"))
                  + " |"]
        lines += ["| " + label + " | " + " | ".join(f"{profile[k][label]:.2f}" if label in profile[k] else "-"
                                                   for k in ("bare", "same", "monitor")) + " |" for label in labels]
    return "\n".join(lines) + "\n"


def write(result: dict[str, Any], name: str = "models") -> None:
    """Raw numbers to bench/results/<date>-<name>.json, the table to .md and between the README's markers."""
    day = result["date"][:10]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{day}-{name}.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    table = markdown(result)
    (RESULTS / f"{day}-{name}.md").write_text(table)
    start, end = "<!-- models:start -->", "<!-- models:end -->"
    text = README.read_text()
    if start in text and end in text:
        head, rest = text.split(start, 1)
        README.write_text(head + start + "\n" + table + end + rest.split(end, 1)[1])
    print(table)


if __name__ == "__main__":
    sys.exit(main())
