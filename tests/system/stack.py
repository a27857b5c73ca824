"""Helpers of the system tests: the running stack, a webhook receiver, drift events, measurements."""

from __future__ import annotations

import json
import statistics
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from prefect_mlops.blocks import MlflowServer
from prefect_mlops.cli import DEFAULT_POOLS, Stack, free_port
from prefect_mlops.tasks.lineage import find_model
from prefect_mlops.workspace import Workspace

GPU_ENV = {"PREFECT_MLOPS_DEVICE": "cuda", "CUDA_VISIBLE_DEVICES": "0,1"}  # "0,1": not the pool's default "0"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


class Receiver:
    """A webhook receiver on 127.0.0.1 that keeps every JSON body it is sent."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        received = self.messages

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    received.append(json.loads(body or b"{}"))
                except json.JSONDecodeError:
                    received.append({"raw": body.decode(errors="replace")})
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hook"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def wait_for(self, predicate, timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for message in list(self.messages):
                if predicate(message):
                    return message
            time.sleep(0.5)
        subjects = [m.get("subject") for m in self.messages]
        raise AssertionError(f"no matching notification within {timeout} s; received subjects: {subjects}")

    def stop(self) -> None:
        self.httpd.shutdown()


@dataclass
class System:
    """The running server, its workers and what the tests need to drive and inspect them."""

    home: Path
    stack: Stack
    receiver: Receiver
    mlflow: MlflowServer
    workspace: Workspace
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def ui_url(self) -> str:
        return self.stack.server.ui_url

    def client(self):
        from prefect import get_client

        return get_client(sync_client=True)

    def deployment(self, name: str):
        with self.client() as client:
            return client.read_deployment_by_name(name)

    def run(self, name: str, **parameters: Any):
        """Start a deployment's run with parameter overrides; returns at once."""
        from prefect.deployments import run_deployment

        return run_deployment(name, parameters=parameters, timeout=0, as_subflow=False)

    def read(self, run_id: Any):
        with self.client() as client:
            return client.read_flow_run(run_id)

    def wait(self, run_id: Any, timeout: float = 240, until: str = "final"):
        """Poll a flow run until it is final (or Running with until='running')."""
        deadline = time.monotonic() + timeout
        while True:
            run = self.read(run_id)
            state = run.state
            if state is not None and (state.is_final() or (until == "running" and state.is_running())):
                return run
            if time.monotonic() > deadline:
                raise AssertionError(f"flow run {run.name} still {state.name if state else '?'} after {timeout} s; "
                                     f"see the worker logs in {self.stack.server.home}")
            time.sleep(0.25 if until == "running" else 1)

    def runs_of(self, name: str, since: datetime | None = None) -> list[Any]:
        """Flow runs of a deployment (created after `since`), oldest first."""
        from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
        from prefect.client.schemas.sorting import FlowRunSort

        deployment = self.deployment(name)
        with self.client() as client:
            runs = client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id])),
                sort=FlowRunSort.ID_DESC, limit=200)
        runs = [r for r in runs if since is None or r.created >= since]
        return sorted(runs, key=lambda r: r.created)

    def states(self, run_id: Any) -> list[Any]:
        with self.client() as client:
            return sorted(client.read_flow_run_states(run_id), key=lambda s: s.timestamp)

    def version_made_by(self, model: str, flow_run_id: Any) -> Any:
        """The registered version whose training run was made by a continuous-training flow run."""
        client = self.mlflow.client(self.workspace)
        found = [v for v in client.search_model_versions(f"name='{model}'")
                 if client.get_run(v.run_id).data.tags.get("prefect_mlops.flow_run_id") == str(flow_run_id)]
        assert len(found) == 1, f"{len(found)} versions of {model} made by flow run {flow_run_id}"
        return found[0]

    def champion(self, model: str) -> str | None:
        found = find_model(model, mlflow_server=self.mlflow, workspace=self.workspace)
        return found.model.version if found else None


def system_config(home: Path, data: Path, receiver: Receiver, mlflow: MlflowServer) -> dict[str, Any]:
    """What `prefect-mlops deploy --config` would read: pools, blocks, notifications."""
    return {
        "_dir": str(home),
        "work_pools": DEFAULT_POOLS,
        "blocks": {
            "prefect-mlops-data-source": {"churn": {"uri": str(data), "time_column": "event_time"}},
            "prefect-mlops-mlflow-server": {"default": mlflow.model_dump(exclude={"block_type_slug"})},
            "prefect-mlops-model-policy": {"churn": {"floors": {"roc_auc": 0.6}, "max_drop": 0.01}},
            "prefect-mlops-retrain-policy": {"churn": {}},
            "prefect-mlops-compute-route": {"gpu": {"work_pool": "gpu", "env": GPU_ENV, "gpu_count": 1,
                                                    "start_timeout_seconds": 60}},
            "custom-webhook": {"ops-alerts": {"name": "ops-alerts", "url": receiver.url,
                                              "json_data": {"subject": "{{subject}}", "body": "{{body}}"}}},
        },
        "notifications": {"block": "custom-webhook/ops-alerts",
                          "on": ["promotion", "rejection", "drift", "failure"]},
    }


def pause_schedules_and_clear_runs() -> None:
    """The yaml's cron and interval schedules stay defined but paused: tests start every run themselves."""
    from prefect import get_client

    with get_client(sync_client=True) as client:
        for deployment in client.read_deployments():
            for schedule in deployment.schedules or []:
                client.update_deployment_schedule(deployment.id, schedule.id, active=False)
        for run in client.read_flow_runs():
            if run.state is not None and run.state.is_scheduled():
                client.delete_flow_run(run.id)


def median_and_all(latencies: list[float]) -> str:
    return f"median {statistics.median(latencies):.2f} s of {len(latencies)}: " + \
        ", ".join(f"{x:.2f}" for x in latencies)


def drift_event(model: str, window: str) -> Any:
    """A `prefect_mlops.drift.detected` event shaped like the drift monitor's."""
    from prefect.events import Event

    from prefect_mlops.tasks.drift import DRIFT_EVENT, model_resource_id

    return Event(event=DRIFT_EVENT,
                 resource={"prefect.resource.id": model_resource_id(model), "prefect.resource.name": model,
                           "prefect-mlops.model": model},
                 payload={"model_name": model, "drift_share": 0.75, "threshold": 0.5,
                          "drifted_columns": ["tenure_months"], "window": window, "report": "system-test"})


def emit(events: list[Any], spacing: float = 0.0) -> list[float]:
    """Send events to the server over its events websocket; returns the wall-clock time of each send."""
    import asyncio

    from prefect.events.clients import PrefectEventsClient

    async def send() -> list[float]:
        sent = []
        async with PrefectEventsClient() as client:
            for event in events:
                sent.append(time.time())
                await client.emit(event)
                if spacing:
                    await asyncio.sleep(spacing)
        return sent

    return asyncio.run(send())


def count_events(name: str, resource_id: str, since: datetime) -> int:
    from prefect import get_client
    from prefect.events.filters import EventFilter, EventNameFilter, EventOccurredFilter, EventResourceFilter

    with get_client(sync_client=True) as client:
        page = client.read_events(EventFilter(occurred=EventOccurredFilter(since=since),
                                              event=EventNameFilter(name=[name]),
                                              resource=EventResourceFilter(id=[resource_id])), limit=50)
    return page.total


def running_at(system: System, run_id: Any) -> float:
    """When the server recorded the run's Running state (epoch seconds)."""
    (running,) = [s for s in system.states(run_id) if s.type.value == "RUNNING"]
    return running.timestamp.timestamp()


def record(name: str, value: Any) -> None:
    """Keep a measurement under test-artifacts/ (and print it: `pytest -s` shows it)."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / "system-measurements.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    data[name] = value
    path.write_text(json.dumps(data, indent=2, default=str))
    print(f"{name}: {value}")
