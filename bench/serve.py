"""`make bench-serve`: the scoring service against `mlflow models serve` on the same model, same run.

    python bench/serve.py [--seconds 8] [--clients 1,8,32]

Trains and registers a churn champion (the project's default HistGradientBoosting pipeline) in a
temporary MLflow store, then starts, one at a time on 127.0.0.1, each in its own process with
one worker: `prefect-mlops serve churn` and `mlflow models serve -m <the champion's files>
--env-manager local`. For each number of concurrent clients, a load (one asyncio
client process, bounded: it stops after `--seconds`) sends one-row requests in the same
`dataframe_records` body both servers take (a raw asyncio HTTP/1.1 keep-alive client: httpx
cost more CPU per request than the servers), and records requests per second, p50 and p99
latency and failures. The floor is a bare `model.predict` of one row in this process; the
service's own share is also read from its /metrics (handler time minus predict time). Last, 8
clients run while `@champion` moves to a second version: every request must succeed and the
new version must be served. Results: bench/results/<date>-serve.json and .md.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
RECORD = {"tenure_months": 12, "monthly_spend": 55.0, "support_calls": 2, "usage_hours": 30.0, "plan": "basic",
          "channel": "web"}
BODY = {"dataframe_records": [RECORD]}


def free_port() -> int:
    from prefect_mlops.cli import free_port as free

    return free()


def train_two_versions(home: Path) -> tuple[str, str]:
    """A champion (v1) and a gated second version (v2) of `churn`; the tracking URI."""
    import pandas as pd

    from prefect_mlops.blocks import DataSource, MlflowServer, ModelPolicy
    from prefect_mlops.demo import make_churn_data, period_window
    from prefect_mlops.tasks.deploy import promote
    from prefect_mlops.tasks.evaluate import evaluate_models
    from prefect_mlops.tasks.features import FeatureSpec, build_feature_set
    from prefect_mlops.tasks.gate import judge
    from prefect_mlops.tasks.ingest import ingest_dataset
    from prefect_mlops.tasks.lineage import Lineage, TrainerSpec, find_model, recipe_digest
    from prefect_mlops.tasks.register import register_version
    from prefect_mlops.tasks.train import train_model
    from prefect_mlops.workspace import Workspace

    data = home / "churn.parquet"
    pd.concat([make_churn_data(p, rows=3000) for p in range(2)]).to_parquet(data, index=False)
    uri = f"sqlite:///{home / 'mlflow.db'}"
    server = MlflowServer(tracking_uri=uri, artifact_location=(home / "mlartifacts").as_uri(), experiment="bench")
    workspace = Workspace(home / "workspace")
    spec = FeatureSpec(target="churned", numeric=["tenure_months", "monthly_spend", "support_calls", "usage_hours"],
                       categorical=["plan", "channel"], time_column="event_time")
    trainer = TrainerSpec()
    policy = ModelPolicy(max_drop=1.0, promote_when="not-worse")
    source = DataSource(uri=str(data), time_column="event_time")
    versions = []
    for period in (0, 1):
        dataset = ingest_dataset(source, name="churn", window=period_window(period), workspace=workspace)
        features = build_feature_set(dataset, spec, workspace=workspace)
        lineage = Lineage(model_name="churn", dataset=dataset, features=spec, trainer=trainer,
                          params_digest=recipe_digest(spec, trainer))
        trained = train_model(features, trainer, lineage=lineage, mlflow_server=server, workspace=workspace)
        evaluation = evaluate_models(trained, features, champion=find_model("churn", mlflow_server=server,
                                                                            workspace=workspace),
                                     policy=policy, mlflow_server=server, workspace=workspace, bootstrap_samples=20)
        verdict = judge(evaluation, policy)
        model = register_version(trained, verdict, evaluation, mlflow_server=server, workspace=workspace)
        if period == 0:
            promote(model, evaluation, verdict, mlflow_server=server, workspace=workspace)
        versions.append(model.version)
    return uri, versions[1]


def bare_predict_ms(uri: str, home: Path) -> float:
    """Median time of a bare `model.predict` of one row (the floor), in ms."""
    import pandas as pd

    from prefect_mlops.blocks import MlflowServer
    from prefect_mlops.workspace import Workspace

    server = MlflowServer(tracking_uri=uri)
    client = server.client()
    version = client.get_model_version_by_alias("churn", "champion")
    model = server.load_model(version.source, Workspace(home / "workspace"))
    frame = pd.DataFrame([RECORD])
    for _ in range(20):
        model.predict(frame)
    times = []
    for _ in range(300):
        started = time.perf_counter()
        model.predict(frame)
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def start(kind: str, uri: str, home: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    # `mlflow models serve` runs a bare `uvicorn`: the venv's bin must be on PATH.
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "OMP_NUM_THREADS": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    if kind == "prefect-mlops":
        command = [sys.executable, "-m", "prefect_mlops.cli", "serve", "churn", "--port", str(port),
                   "--tracking-uri", uri, "--workspace", str(home / "workspace"), "--poll-seconds", "2",
                   "--log-uri", str(home / "predictions")]
    else:
        # The champion's files by path: with models:/ MLflow writes a `registered_model_meta` file into a local
        # artifact folder, which the integrity check then (rightly) refuses as a file added after registration.
        from mlflow import MlflowClient

        source = MlflowClient(tracking_uri=uri).get_model_version_by_alias("churn", "champion").source
        command = [str(Path(sys.executable).parent / "mlflow"), "models", "serve", "-m", source,
                   "--env-manager", "local", "--host", "127.0.0.1", "-p", str(port), "-w", "1"]
    log = open(home / f"{kind}.log", "w")  # the child holds it; closed when this process ends
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = (home / f"{kind}.log").read_text()[-3000:]
            raise SystemExit(f"{kind} exited with {process.returncode}:\n{tail}")
        try:
            if httpx.post(f"{url}/invocations" if kind == "mlflow" else f"{url}/predict", json=BODY,
                          timeout=5).status_code == 200:
                return process, url
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    process.kill()
    raise SystemExit(f"{kind} did not answer within 180 s:\n{(home / f'{kind}.log').read_text()[-3000:]}")


def own_times(url: str) -> tuple[float, float, float, float]:
    """The service's request-seconds sum and count and predict-seconds sum and count, from its /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    found = dict.fromkeys(("request_sum", "request_count", "predict_sum", "predict_count"), 0.0)
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics", timeout=30).text):
        for sample in family.samples:
            for kind in ("request", "predict"):
                for part in ("sum", "count"):
                    if sample.name == f"prefect_mlops_serve_{kind}_seconds_{part}":
                        found[f"{kind}_{part}"] += sample.value
    return found["request_sum"], found["request_count"], found["predict_sum"], found["predict_count"]


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


async def load(url: str, path: str, clients: int, seconds: float, *, on_second: object = None) -> dict:
    """`clients` concurrent keep-alive connections sending one-row requests for `seconds`.

    A raw asyncio HTTP/1.1 client with the request bytes built once: on 2 shared cores an httpx
    client spends more CPU per request than either server, and capped both at the same rate.
    Only 200 answers count as requests (rps, p50, p99); the others are counted in `failed`.
    """
    host, port = url.removeprefix("http://").split(":")
    payload = json.dumps(BODY).encode()
    request = (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(payload)}\r\n\r\n").encode() + payload
    latencies: list[float] = []  # of 200 answers only: a fast error is no throughput
    failures: list[str] = []
    versions: list[str] = []
    deadline = time.monotonic() + seconds

    async def one() -> None:
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            while time.monotonic() < deadline:
                started = time.perf_counter()
                try:
                    writer.write(request)
                    head = await reader.readuntil(b"\r\n\r\n")
                    length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                    body = await reader.readexactly(length)
                    status = int(head.split(b" ", 2)[1])
                except (OSError, asyncio.IncompleteReadError, ValueError, IndexError) as exc:
                    failures.append(repr(exc))
                    writer.close()
                    reader, writer = await asyncio.open_connection(host, int(port))
                    continue
                if status != 200:
                    failures.append(str(status))
                    continue
                latencies.append(time.perf_counter() - started)
                if path == "/predict" and on_second is not None:
                    versions.append(json.loads(body)["model_version"])
        finally:
            writer.close()

    started = time.monotonic()
    tasks = [asyncio.create_task(one()) for _ in range(clients)]
    if on_second is not None:
        await asyncio.sleep(seconds / 3)
        await asyncio.to_thread(on_second)
    await asyncio.gather(*tasks)
    elapsed = time.monotonic() - started
    latencies.sort()
    ok = len(latencies) or float("nan")  # no answer at all: no latency to report
    return {"clients": clients, "requests": len(latencies), "failed": len(failures), "rps": len(latencies) / elapsed,
            "p50_ms": latencies[len(latencies) // 2] * 1000 if latencies else ok,
            "p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000 if latencies else ok,
            "versions": sorted(set(versions)), "last_version": versions[-1] if versions else None,
            "failures": failures[:5]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="load per configuration (default 8)")
    parser.add_argument("--clients", default="1,8,32", help="concurrent clients (default 1,8,32)")
    args = parser.parse_args()
    clients = [int(c) for c in args.clients.split(",")]
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as folder:
        home = Path(folder)
        print("training two versions of churn ...", flush=True)
        uri, second = train_two_versions(home)
        rows: dict[str, list[dict]] = {}
        floors: dict[str, float] = {}
        for kind in ("mlflow", "prefect-mlops"):
            process, url = start(kind, uri, home)
            try:
                # The floor just before each server's runs: on a shared machine the load changes by the minute.
                floors[kind] = bare_predict_ms(uri, home)
                print(f"bare model.predict of one row: {floors[kind]:.3f} ms", flush=True)
                rows[kind] = []
                for n in clients:
                    path = "/predict" if kind == "prefect-mlops" else "/invocations"
                    before = own_times(url) if kind == "prefect-mlops" else None
                    result = asyncio.run(load(url, path, n, args.seconds))
                    if before is not None:  # inside the service: handler time minus predict time, same moment
                        after = own_times(url)
                        result["service_ms"] = (after[0] - before[0]) / max(1, after[1] - before[1]) * 1000
                        result["predict_ms"] = (after[2] - before[2]) / max(1, after[3] - before[3]) * 1000
                    rows[kind].append(result)
                    print(f"{kind:14s} {n:3d} clients: {result['rps']:8.1f} req/s  p50 {result['p50_ms']:7.2f} ms  "
                          f"p99 {result['p99_ms']:7.2f} ms  failed {result['failed']}", flush=True)
                if kind == "prefect-mlops":
                    from mlflow import MlflowClient

                    def swap() -> None:
                        MlflowClient(tracking_uri=uri).set_registered_model_alias("churn", "champion", second)

                    swap_result = asyncio.run(load(url, "/predict", 8, max(args.seconds, 9.0), on_second=swap))
                    print(f"alias swap under 8 clients: {swap_result['requests']} requests, {swap_result['failed']} "
                          f"failed, versions served {swap_result['versions']}, last {swap_result['last_version']}")
            finally:
                stop(process)
    table = ["| clients | MLflow req/s | ours req/s | ratio | MLflow p50 / p99 ms | ours p50 / p99 ms |",
             "|---:|---:|---:|---:|---:|---:|"]
    for theirs, ours in zip(rows["mlflow"], rows["prefect-mlops"], strict=True):
        table.append(f"| {ours['clients']} | {theirs['rps']:.0f} | {ours['rps']:.0f} | "
                     f"{ours['rps'] / theirs['rps']:.2f}x | {theirs['p50_ms']:.2f} / {theirs['p99_ms']:.2f} | "
                     f"{ours['p50_ms']:.2f} / {ours['p99_ms']:.2f} |")
    floor = floors["prefect-mlops"]
    added = rows["prefect-mlops"][0]["p50_ms"] - floor
    one = rows["prefect-mlops"][0]
    inside = one["service_ms"] - one["predict_ms"]
    notes = [f"Bare `model.predict` of one row, measured just before the service's runs: {floor:.2f} ms (before "
             f"MLflow's: {floors['mlflow']:.2f} ms); the service's p50 at 1 client adds {added:.2f} ms (HTTP, JSON, "
             "validation, batching, logging, and the client's own share of the CPU).",
             f"Inside the service at 1 client (its /metrics, same moment): {one['service_ms']:.2f} ms per request "
             f"from handler to answer, of which predict {one['predict_ms']:.2f} ms: {inside:.2f} ms added.",
             f"Alias swap under 8 clients: {swap_result['requests']} requests, {swap_result['failed']} failed; "
             f"versions served {', '.join(swap_result['versions'])}, the last v{swap_result['last_version']}."]
    markdown = "\n".join([*table, "", *notes])
    print("\n" + markdown)
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = dt.date.today().isoformat()
    (RESULTS / f"{stamp}-serve.json").write_text(json.dumps(
        {"floor_predict_ms": floors, "added_ms": added, "added_inside_ms": inside, "load_average": os.getloadavg(),
         "rows": rows, "swap": swap_result, "cpus": os.cpu_count(), "seconds": args.seconds}, indent=2))
    (RESULTS / f"{stamp}-serve.md").write_text(markdown + "\n")
    failed = swap_result["failed"] or swap_result["last_version"] != second
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
