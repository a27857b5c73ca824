"""`prefect-mlops`: deploy the flows to a Prefect server, run a local one, or show the whole loop on it.

Thin over Prefect: work pools, queues, blocks and automations are created through Prefect's
client, deployments through `prefect deploy`, servers and workers through `prefect server start`
and `prefect worker start`. Every command prints what it created.

    prefect-mlops deploy [--config FILE] [--prefect-file FILE]   pools, queues, blocks, deployments, alerts
    prefect-mlops up [--config FILE] [--database-url URL]        a local server and one worker per pool
    prefect-mlops demo-server [--keep] [--database-url URL]      the continuous-training story on a server
    prefect-mlops backtest [--stream NAME ...] [--policy FILE]   what a retrain policy would have done on past data
    prefect-mlops repair MODEL [--tracking-uri URI]              settle an interrupted promotion of MODEL
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

DEPLOYMENT_DIRS = (Path.cwd() / "deployments", Path(__file__).resolve().parents[2] / "deployments")
DEFAULT_POOLS: dict[str, dict[str, Any]] = {
    "cpu": {"type": "process", "base_job_template": "job_templates/process.json"},
    "gpu": {"type": "process", "base_job_template": "job_templates/process-gpu.json"},
}
NOTIFY_NAME = "prefect-mlops: {kind}"
MLOPS_FLOWS = ["continuous-training", "drift-monitor", "rollback", "batch-score", "train-on-pool"]


# ---------------------------------------------------------------------------- processes


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def prefect_exe() -> str:
    """The `prefect` command next to this Python, else the one on PATH."""
    return shutil.which("prefect", path=str(Path(sys.executable).parent)) or shutil.which("prefect") or "prefect"


def quiet_env(home: Path, **extra: str) -> dict[str, str]:
    """An environment for Prefect processes with a private PREFECT_HOME and no telemetry."""
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_CLI_PROMPT": "false", "PYTHONUNBUFFERED": "1", **extra}
    env.pop("PREFECT_PROFILES_PATH", None)
    return env


@dataclass
class Server:
    """A `prefect server start` process on a loopback port."""

    home: Path
    port: int
    database_url: str | None = None
    log_path: Path | None = None
    proc: subprocess.Popen | None = None
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    @property
    def ui_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client_env(self, **extra: str) -> dict[str, str]:
        """The environment of a client or worker of this server."""
        return quiet_env(self.home, PREFECT_API_URL=self.api_url, **extra)

    def start(self, timeout: float = 120) -> Server:
        with socket.socket() as sock:  # else the health check could be answered by another server
            if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                raise RuntimeError(f"port {self.port} is in use; choose another with --port")
        self.home.mkdir(parents=True, exist_ok=True)
        env = quiet_env(self.home, PREFECT_SERVER_API_HOST="127.0.0.1", PREFECT_SERVER_API_PORT=str(self.port),
                        PREFECT_UI_API_URL=self.api_url, **self.extra_env)
        env.pop("PREFECT_API_URL", None)
        if self.database_url:
            env["PREFECT_API_DATABASE_CONNECTION_URL"] = self.database_url
        self.log_path = self.log_path or self.home / "server.log"
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([prefect_exe(), "server", "start", "--host", "127.0.0.1", "--port",
                                      str(self.port)], env=env, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prefect server exited with {self.proc.returncode}; see {self.log_path}")
            try:
                with urllib.request.urlopen(f"{self.api_url}/health", timeout=2) as reply:  # noqa: S310
                    if reply.status == 200:
                        return self
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"prefect server on port {self.port} not healthy after {timeout} s; see {self.log_path}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@contextmanager
def _sigint_not_ignored() -> Iterator[None]:
    """A process started in the background ignores SIGINT and its children inherit that, so a worker
    would ignore the SIGINTs that stop it: let children inherit the default instead."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        yield
        return
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)


@dataclass
class Worker:
    """A `prefect worker start` process for one work pool."""

    pool: str
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen | None = None

    def start(self) -> Worker:
        log = open(self.log_path, "ab")
        with _sigint_not_ignored():
            self.proc = subprocess.Popen([prefect_exe(), "worker", "start", "--pool", self.pool,
                                          "--name", f"{self.pool}-worker-{os.getpid()}"],
                                         env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def stop(self) -> None:
        """SIGINT twice (a worker ignores SIGTERM and finishes its loop on the first SIGINT), then SIGKILL."""
        if not self.proc or self.proc.poll() is not None:
            return
        for _ in range(2):
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(5)
                return
            except subprocess.TimeoutExpired:
                continue
        self.proc.kill()
        self.proc.wait(10)


def wait_for_workers(pools: list[str], timeout: float = 60) -> None:
    """Return once every pool has an online worker."""
    from prefect import get_client

    deadline = time.monotonic() + timeout
    waiting = list(pools)
    with get_client(sync_client=True) as client:
        while waiting and time.monotonic() < deadline:
            waiting = [p for p in waiting if not any(
                str(getattr(w.status, "value", w.status)).upper() == "ONLINE"
                for w in client.read_workers_for_work_pool(p))]
            if waiting:
                time.sleep(0.5)
    if waiting:
        raise TimeoutError(f"no worker came online for work pools {waiting} within {timeout} s")


@contextmanager
def api(url: str) -> Iterator[None]:
    """Point this process's Prefect client at a server."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: url}):
        yield


# ---------------------------------------------------------------------------- deploy


def find_deployments_dir() -> Path:
    """`./deployments`, else the one next to this package's source tree."""
    for folder in DEPLOYMENT_DIRS:
        if (folder / "prefect.yaml").exists():
            return folder
    raise FileNotFoundError("no deployments/prefect.yaml here or next to the package; pass --prefect-file")


def read_config(path: Path | None) -> dict[str, Any]:
    """A deploy config (YAML or JSON): work_pools, blocks, notifications. Relative paths are the file's."""
    if path is None:
        return {}
    import yaml

    text = os.path.expandvars(path.read_text())  # ${VAR} from the environment: secrets stay out of the file
    config = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    if not isinstance(config, dict):
        raise SystemExit(f"{path}: expected a mapping with work_pools, blocks and notifications")
    config["_dir"] = str(path.resolve().parent)
    return config


def resolve(path: str, base: str | Path) -> Path:
    """A config path: absolute, relative to the config's folder, or relative to the deployments folder."""
    candidate = Path(path)
    if candidate.is_absolute():
        return candidate
    for root in (Path(base), *DEPLOYMENT_DIRS):
        if (root / candidate).exists():
            return root / candidate
    raise FileNotFoundError(f"{path}: not found next to the config ({base}) nor in deployments/")


async def ensure_pools(pools: dict[str, dict[str, Any]], base: str | Path) -> list[str]:
    """Create missing work pools and queues; returns what was created."""
    from prefect import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    made: list[str] = []
    async with get_client() as client:
        for name, spec in pools.items():
            spec = spec or {}
            try:
                await client.read_work_pool(name)
            except ObjectNotFound:
                template = {}
                if spec.get("base_job_template"):
                    template = json.loads(resolve(spec["base_job_template"], base).read_text())
                await client.create_work_pool(WorkPoolCreate(
                    name=name, type=spec.get("type", "process"), base_job_template=template,
                    description=spec.get("description")))
                made.append(f"work pool {name!r} ({spec.get('type', 'process')})")
            for queue in spec.get("queues", []):
                try:
                    await client.create_work_queue(name=queue, work_pool_name=name)
                    made.append(f"work queue {name}/{queue}")
                except ObjectAlreadyExists:
                    pass
    return made


def save_blocks(blocks: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    """Save `{block type slug: {name: values}}`, overwriting; returns `slug/name` of each."""
    import prefect.blocks.notifications  # noqa: F401 - registers Prefect's notification blocks
    from prefect.blocks.core import Block
    from prefect.utilities.dispatch import lookup_type

    import prefect_mlops.blocks  # noqa: F401 - registers this package's blocks

    saved = []
    for slug, documents in (blocks or {}).items():
        try:
            cls = lookup_type(Block, slug)
        except KeyError as exc:
            raise SystemExit(f"block type {slug!r} is unknown here; install the package that defines it") from exc
        for name, values in (documents or {}).items():
            cls(**(values or {})).save(name, overwrite=True)
            saved.append(f"{slug}/{name}")
    return saved


def apply_deployments(prefect_file: Path, env: dict[str, str] | None = None) -> str:
    """`prefect --no-prompt deploy --all` from the prefect.yaml's folder; returns its output."""
    done = subprocess.run([prefect_exe(), "--no-prompt", "deploy", "--all", "--prefect-file", str(prefect_file)],
                          cwd=prefect_file.parent, env=env or {**os.environ, "PREFECT_CLI_PROMPT": "false"},
                          capture_output=True, text=True, timeout=600, check=False)
    if done.returncode != 0:
        raise SystemExit(f"prefect deploy failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done.stdout


async def pin_block_references(deployment_names: list[str]) -> list[str]:
    """Replace `{"$ref": {"block_document_slug": ...}}` parameters with the block's id, as the UI writes them.

    prefect.yaml names blocks by slug (portable, kept as references by `prefect deploy`); the UI's
    block pickers only recognise ids, so after deploying each slug is resolved once, here.
    """
    from prefect import get_client
    from prefect.client.schemas.actions import DeploymentUpdate
    from prefect.exceptions import ObjectNotFound

    pinned: list[str] = []
    missing: set[str] = set()
    async with get_client() as client:
        async def pin(value: Any) -> Any:
            if isinstance(value, dict):
                slug = value.get("$ref", {}).get("block_document_slug") if isinstance(value.get("$ref"), dict) else None
                if slug:
                    block_type, _, name = slug.partition("/")
                    try:
                        document = await client.read_block_document_by_name(name=name, block_type_slug=block_type)
                    except ObjectNotFound:
                        missing.add(slug)
                        return value  # still a valid reference: runs load the block once it is saved
                    return {"$ref": {"block_document_id": str(document.id)}}
                return {key: await pin(item) for key, item in value.items()}
            return value

        for name in deployment_names:
            deployment = await client.read_deployment_by_name(name)
            parameters = await pin(deployment.parameters)
            if parameters != deployment.parameters:
                await client.update_deployment(deployment.id, DeploymentUpdate(parameters=parameters))
                pinned.append(f"{name} (to block ids: the UI's block pickers show them)")
    pinned += [f"nothing for block {slug}: not saved yet; save it (e.g. with --config) before the first run"
               for slug in sorted(missing)]
    return pinned


def notification_automations(block_document_id: str, kinds: list[str]) -> list[Any]:
    """Automations that send promotion, rejection, drift and failure messages through one notification block."""
    from prefect.automations import Automation, EventTrigger, SendNotification

    ct_flow = {"prefect.resource.role": "flow", "prefect.resource.name": "continuous-training"}
    any_run = {"prefect.resource.id": "prefect.flow-run.*"}
    model = "{{ flow_run.parameters['model_name'] }}"
    run = "flow run {{ flow_run.name }} ({{ flow_run.id }})"
    specs = {
        "promotion": (EventTrigger(expect={"prefect.flow-run.Completed"}, match=any_run,
                                   match_related=ct_flow, posture="Reactive", threshold=1),
                      f"prefect-mlops: {model} promoted a new champion",
                      f"Continuous training of {model} promoted a new champion in {run}."),
        "rejection": (EventTrigger(expect={"prefect.flow-run.Rejected"}, match=any_run,
                                   match_related=ct_flow, posture="Reactive", threshold=1),
                      f"prefect-mlops: gate rejected the challenger of {model}",
                      f"{{{{ flow_run.state.message }}}} ({run})"),
        # One drift alert per model per hour, however many monitors report it (like the retraining).
        "drift": (EventTrigger(expect={"prefect_mlops.drift.detected"},
                               match={"prefect.resource.id": "prefect-mlops.model.*"}, for_each={"prefect.resource.id"},
                               posture="Reactive", threshold=1, within=timedelta(hours=1)),
                  "prefect-mlops: drift detected for {{ event.payload.model_name }}",
                  "{{ event.payload.model_name }}: drift share {{ event.payload.drift_share }} on window "
                  "{{ event.payload.window }}; drifted columns {{ event.payload.drifted_columns }}. "
                  "Report: {{ event.payload.report }}"),
        "failure": (EventTrigger(expect={"prefect.flow-run.Failed", "prefect.flow-run.Crashed"},
                                 match=any_run,
                                 match_related={"prefect.resource.role": "flow", "prefect.resource.name": MLOPS_FLOWS},
                                 posture="Reactive", threshold=1),
                    "prefect-mlops: {{ flow.name }} run {{ flow_run.name }} {{ flow_run.state.name }}",
                    f"{{{{ flow.name }}}} {run} ended {{{{ flow_run.state.name }}}}: {{{{ flow_run.state.message }}}}"),
    }
    unknown = sorted(set(kinds) - set(specs))
    if unknown:
        raise SystemExit(f"notifications.on: unknown kinds {unknown}; choose from {sorted(specs)}")
    return [Automation(name=NOTIFY_NAME.format(kind=kind), description=f"prefect-mlops {kind} notification",
                       trigger=trigger, actions=[SendNotification(block_document_id=block_document_id,
                                                                  subject=subject, body=body)])
            for kind, (trigger, subject, body) in specs.items() if kind in kinds]


async def ensure_notifications(spec: dict[str, Any]) -> list[str]:
    """Replace the prefect-mlops notification automations with ones for `spec` (block + kinds)."""
    import prefect.blocks.notifications  # noqa: F401 - registers Prefect's notification blocks
    from prefect import get_client
    from prefect.blocks.core import Block
    from prefect.utilities.dispatch import lookup_type

    slug, _, name = str(spec["block"]).partition("/")
    if not name:
        raise SystemExit(f"notifications.block {spec['block']!r}: write it as '<block type slug>/<name>'")
    kinds = list(spec.get("on") or ["promotion", "rejection", "drift", "failure"])
    async with get_client() as client:
        document = await client.read_block_document_by_name(name=name, block_type_slug=slug)
        if not issubclass(lookup_type(Block, slug), _notification_base()):
            raise SystemExit(f"notifications.block {spec['block']!r} is not a notification block")
        for automation in await client.read_automations():
            if automation.name.startswith(NOTIFY_NAME.format(kind="")):
                await client.delete_automation(automation.id)
    made = []
    for automation in notification_automations(str(document.id), kinds):
        await automation.acreate()
        made.append(f"automation {automation.name!r} -> {spec['block']}")
    return made


def _notification_base() -> type:
    from prefect.blocks.abstract import NotificationBlock

    return NotificationBlock


def deploy(config: dict[str, Any], prefect_file: Path | None = None, *, env: dict[str, str] | None = None,
           say: Any = print) -> dict[str, list[str]]:
    """Pools and queues, blocks, deployments, then notification automations, against the current API."""
    base = config.get("_dir", Path.cwd())
    created: dict[str, list[str]] = {}
    created["pools"] = asyncio.run(ensure_pools(config.get("work_pools") or DEFAULT_POOLS, base))
    for line in created["pools"]:
        say(f"created {line}")
    created["blocks"] = save_blocks(config.get("blocks") or {})
    for line in created["blocks"]:
        say(f"saved block {line}")
    prefect_file = prefect_file or find_deployments_dir() / "prefect.yaml"
    output = apply_deployments(prefect_file, env)
    created["deployments"] = sorted({line.split("'")[1] for line in output.splitlines()
                                     if "Deployment '" in line and "successfully created" in line})
    for line in created["deployments"]:
        say(f"applied deployment {line}")
    for line in asyncio.run(pin_block_references(created["deployments"])):
        say(f"block references pinned: {line}")
    created["automations"] = []
    if config.get("notifications"):
        created["automations"] = asyncio.run(ensure_notifications(config["notifications"]))
        for line in created["automations"]:
            say(f"created {line}")
    return created


# ---------------------------------------------------------------------------- up and demo-server


@dataclass
class Stack:
    """A server and its workers, started and stopped together."""

    server: Server
    workers: list[Worker] = field(default_factory=list)

    def start_workers(self, pools: list[str], **env: str) -> None:
        worker_env = self.server.client_env(PREFECT_WORKER_QUERY_SECONDS=env.pop("query_seconds", "2"), **env)
        for pool in pools:
            self.workers.append(Worker(pool, worker_env, self.server.home / f"worker-{pool}.log").start())
        with api(self.server.api_url):
            wait_for_workers(pools)

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()
        self.server.stop()


def _exit_on_first_sigterm(*_: Any) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.exit(143)


def start_stack(home: Path, database_url: str | None, port: int | None = None) -> Stack:
    # SIGTERM (kill, a service manager) stops the stack like Ctrl-C does, through the caller's `finally`;
    # a second one must not cut that cleanup short.
    signal.signal(signal.SIGTERM, _exit_on_first_sigterm)
    server = Server(home=home / "prefect", port=port or free_port(), database_url=database_url)
    print(f"starting Prefect server on {server.ui_url} ({'PostgreSQL' if database_url else 'SQLite'}) ...",
          flush=True)
    return Stack(server.start())


def cmd_deploy(args: argparse.Namespace) -> int:
    config = read_config(args.config)
    deploy(config, args.prefect_file)
    return 0


def cmd_repair(args: argparse.Namespace) -> int:
    """Settle an interrupted promotion and tag versions left by killed runs, under the model's lock."""
    from prefect_mlops.blocks import MlflowServer
    from prefect_mlops.tasks.reconcile import reconcile_registry
    from prefect_mlops.workspace import Workspace

    if args.mlflow_block:
        server = MlflowServer.load(args.mlflow_block)
    else:
        server = MlflowServer(tracking_uri=args.tracking_uri)
    report = reconcile_registry(args.model, mlflow_server=server, workspace=Workspace(args.workspace),
                                lock=not args.no_lock)
    print(report.summary())
    for action in report.actions:
        print(f"  - {action}")
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    home = Path(args.home).resolve()
    stack = start_stack(home, args.database_url, args.port)
    try:
        config = read_config(args.config)
        pools = list(config.get("work_pools") or DEFAULT_POOLS)
        with api(stack.server.api_url):
            deploy(config, args.prefect_file, env=stack.server.client_env())
        stack.start_workers(pools, PREFECT_MLOPS_WORKSPACE=str(home / "workspace"))
        print(f"\nworkers online for pools {', '.join(pools)}")
        print(f"Prefect UI: {stack.server.ui_url}")
        print(f"export PREFECT_API_URL={stack.server.api_url}   # to use it from another shell")
        print("Ctrl-C stops the server and the workers.", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the cleanup short
        print("\nstopping ...")
    finally:
        stack.stop()
    return 0


def demo_config(home: Path) -> dict[str, Any]:
    """Blocks and pools for the demo: data, a SQLite MLflow store, the churn policy, compute routes."""
    return {
        "_dir": str(home),
        "work_pools": DEFAULT_POOLS,
        "blocks": {
            "prefect-mlops-data-source": {"churn": {"uri": str(home / "data" / "churn.parquet"),
                                                    "time_column": "event_time"}},
            "prefect-mlops-mlflow-server": {"default": {"tracking_uri": f"sqlite:///{home / 'mlflow.db'}",
                                                        "artifact_location": (home / "mlartifacts").as_uri(),
                                                        "experiment": "churn"}},
            "prefect-mlops-model-policy": {"churn": {"floors": {"roc_auc": 0.65}, "max_drop": 0.01,
                                                     "slice_floors": {"roc_auc": 0.55}}},
            "prefect-mlops-retrain-policy": {"churn": {}},  # the defaults, from `make backtest`
            "prefect-mlops-compute-route": {
                "gpu": {"work_pool": "gpu", "env": {"PREFECT_MLOPS_DEVICE": "cuda", "CUDA_VISIBLE_DEVICES": "0"},
                        "gpu_count": 1, "start_timeout_seconds": 120},
                "cpu": {"work_pool": "cpu"},
            },
        },
    }


def wait_final(run_id: Any, timeout: float = 600) -> Any:
    """Poll a flow run until it is final."""
    from prefect import get_client

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            run = client.read_flow_run(run_id)
            if run.state and run.state.is_final():
                return run
            if time.monotonic() > deadline:
                state = run.state.name if run.state else "?"
                raise TimeoutError(f"flow run {run.name} still {state} after {timeout} s")
            time.sleep(1)


def runs_of(deployment_name: str) -> list[Any]:
    """The flow runs of a deployment, newest first."""
    from prefect import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name(deployment_name)
        return client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id])),
                                     sort=FlowRunSort.START_TIME_DESC)


def gate_verdict(run: Any) -> list[str]:
    """The quality gate's verdict of a continuous-training run, from its `gate-verdict-*` artifact."""
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run.id])))
    for artifact in artifacts:
        if (artifact.key or "").startswith("gate-verdict"):
            rows = [[cell.strip(" *") for cell in line.strip("|").split("|")]
                    for line in str(artifact.data).splitlines() if line.startswith("| ")][1:]
            return [artifact.description or "",
                    *(f"- {rule} ({passed}): {reason}" for rule, passed, reason, *_ in rows)]
    return [f"{run.state.name}: {run.state.message or 'no gate verdict (the run stopped before the gate)'}"]


def describe(run: Any, ui: str) -> str:
    """One flow run in words: name, state, message and where to look at it."""
    state = run.state
    return (f"{run.name} [{state.name if state else '?'}] {state.message if state and state.message else ''}\n"
            f"    {ui}/v2/runs/flow-run/{run.id}")


def cmd_demo_server(args: argparse.Namespace) -> int:
    import pandas as pd

    from prefect_mlops.demo import DRIFTED_PERIOD, make_churn_data, period_window

    home = Path(args.home or tempfile.mkdtemp(prefix="prefect-mlops-demo-")).resolve()
    (home / "data").mkdir(parents=True, exist_ok=True)
    pd.concat([make_churn_data(p) for p in range(DRIFTED_PERIOD + 1)]).to_parquet(home / "data" / "churn.parquet",
                                                                                  index=False)
    started = time.perf_counter()
    stack = start_stack(home, args.database_url, args.port)
    ui = stack.server.ui_url
    try:
        with api(stack.server.api_url):
            from prefect.deployments import run_deployment

            print("\n=== 1. work pools, blocks, deployments, automations")
            deploy(demo_config(home), env=stack.server.client_env())
            stack.start_workers(list(DEFAULT_POOLS), PREFECT_MLOPS_WORKSPACE=str(home / "workspace"))
            print(f"workers online for pools {', '.join(DEFAULT_POOLS)}; UI: {ui}")

            print("\n=== 2. first training of churn on period 0 (trains on the gpu pool through the 'gpu' route)")
            first = run_deployment("continuous-training/churn", parameters={"window": period_window(0)}, timeout=0)
            first = wait_final(first.id)
            print(describe(first, ui))
            print("\n".join(gate_verdict(first)))
            if not first.state.is_completed():
                raise SystemExit("the first training did not complete; see the run above")

            print(f"\n=== 3. drift monitor on period {DRIFTED_PERIOD} (drifted)")
            monitor = run_deployment("drift-monitor/churn", parameters={"window": period_window(DRIFTED_PERIOD)},
                                     timeout=0)
            monitor = wait_final(monitor.id)
            print(describe(monitor, ui))

            print("\n=== 4. the retraining that the drift event started")
            deadline = time.monotonic() + 60
            retrains = []
            while not retrains and time.monotonic() < deadline:
                retrains = runs_of("continuous-training/churn-retrain-on-drift")
                time.sleep(1)
            if not retrains:
                raise SystemExit("no retraining run appeared within 60 s of the drift event")
            retrain = wait_final(retrains[0].id)
            trigger = retrain.created_by.display_value if retrain.created_by else "?"
            print(f"flow run id: {retrain.id}")
            print(f"started by:  {retrain.created_by.type if retrain.created_by else '?'} {trigger!r} "
                  f"(prefect_mlops.drift.detected for prefect-mlops.model.churn), window "
                  f"{retrain.parameters.get('window')}")
            print(f"final state: {retrain.state.name}")
            print("gate:        " + "\n             ".join(gate_verdict(retrain)))
            print(f"UI:          {ui}/v2/runs/flow-run/{retrain.id}")
        print(f"\nDone in {time.perf_counter() - started:.0f} s. Everything is under {home}.")
        if args.keep:
            print(f"Server and workers keep running: {ui}  (Ctrl-C stops them)", flush=True)
            while True:
                time.sleep(3600)
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the cleanup short
        print("\nstopping ...")
    finally:
        stack.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `prefect-mlops` command."""
    parser = argparse.ArgumentParser(prog="prefect-mlops", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", type=Path, help="YAML or JSON: work_pools, blocks, notifications")
        p.add_argument("--prefect-file", type=Path, help="prefect.yaml to apply (default: deployments/prefect.yaml)")

    p = sub.add_parser("deploy", help="create pools, queues and blocks, apply the deployments (PREFECT_API_URL)")
    common(p)
    p.set_defaults(func=cmd_deploy)

    p = sub.add_parser("repair", help="settle an interrupted promotion of MODEL and tag versions left by killed runs")
    p.add_argument("model", help="registered model name")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else the workspace's)")
    p.add_argument("--mlflow-block", help="name of a saved MLflow Server block to use instead")
    p.add_argument("--workspace", help="workspace folder of the embedded MLflow store")
    p.add_argument("--no-lock", action="store_true", help="skip the model's Prefect lock (no Prefect API at hand)")
    p.set_defaults(func=cmd_repair)

    for name, func, text in (("up", cmd_up, "run a local Prefect server and one worker per work pool"),
                             ("demo-server", cmd_demo_server, "the continuous-training story on a Prefect server")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--database-url", help="e.g. postgresql+asyncpg://postgres@127.0.0.1:5432/prefect "
                       "(default: SQLite under --home)")
        p.add_argument("--port", type=int, help="server port (default: a free one)")
        if name == "up":
            common(p)
            p.add_argument("--home", default=".prefect-mlops-server", help="folder for the server and workspace")
        else:
            p.add_argument("--home", help="folder for everything the demo writes (default: a new temporary one)")
            p.add_argument("--keep", action="store_true", help="leave the server and workers running at the end")
        p.set_defaults(func=func)

    p = sub.add_parser("backtest", help="replay past data through the flows: the policy vs a static model and "
                       "an oracle (needs the backtest extra)")
    from prefect_mlops.backtest.run import add_arguments

    add_arguments(p)
    p.set_defaults(func=cmd_backtest)

    args = parser.parse_args(argv)
    return args.func(args)


def cmd_backtest(args: argparse.Namespace) -> int:
    from prefect_mlops.backtest.run import main as backtest

    return backtest(args=args)


if __name__ == "__main__":
    raise SystemExit(main())
