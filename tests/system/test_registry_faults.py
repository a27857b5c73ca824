"""The registry stays consistent under faults, against a real `mlflow server` on 127.0.0.1.

- The MLflow server is SIGKILLed right before and right after each registry write of a
  registration and promotion (found by recording a clean one first).
- A continuous-training flow process is sent SIGTERM or SIGKILL while it pauses between
  registry writes.
- Two continuous-training runs of one model are started at the same moment as two processes.

After each fault: the champion is unchanged or fully promoted through a passed gate, no version
the project made is left without an alias and without a final status (after the reconciler),
the aliases agree with the promotion record, and a rerun succeeds. The counts go to
test-artifacts/system-measurements.json ("registry faults: <kind>": tried, survived, what failed).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from mlflow import MlflowClient

from prefect_mlops.blocks import DataSource, MlflowServer, ModelPolicy
from prefect_mlops.demo import make_churn_data, period_window
from prefect_mlops.tasks.deploy import promote
from prefect_mlops.tasks.lineage import TrainerSpec
from prefect_mlops.tasks.reconcile import (
    CHALLENGER,
    CHAMPION,
    PREVIOUS,
    PROMOTED,
    STATUS_TAG,
    read_aliases,
    read_record,
    reconcile_model,
)
from prefect_mlops.tasks.register import register_version
from prefect_mlops.workspace import Workspace
from tests.conftest import ROWS_PER_PERIOD, free_port
from tests.system.stack import record
from tests.tasks.stages import Cycle, train_and_judge

pytestmark = pytest.mark.system

WRITES = ("create_registered_model", "create_model_version", "set_registered_model_alias",
          "delete_registered_model_alias", "set_registered_model_tag", "set_model_version_tag",
          "delete_model_version")
FAST_FAIL = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
TRAINER = TrainerSpec(estimator="sklearn.linear_model.LogisticRegression", params={"max_iter": 300})
NOT_WORSE = {"max_drop": 1.0, **({"promote_when": "not-worse"} if "promote_when" in ModelPolicy.model_fields
                                 else {})}
TALLY: dict[str, dict[str, Any]] = {}


class MlflowProcess:
    """One `mlflow server` process on the shared SQLite database, on a port of its own."""

    def __init__(self, home: Path) -> None:
        self.home, self.port = home, free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        exe = Path(sys.executable).parent / "mlflow"
        self.proc = subprocess.Popen(
            [str(exe), "server", "--backend-store-uri", f"sqlite:///{home / 'mlflow.db'}",
             "--default-artifact-root", (home / "artifacts").as_uri(), "--host", "127.0.0.1",
             "--port", str(self.port), "--workers", "1"],
            stdout=open(home / f"server-{self.port}.log", "ab"), stderr=subprocess.STDOUT, start_new_session=True)

    def ready(self, timeout: float = 300) -> MlflowProcess:
        import urllib.request

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=5):
                    return self
            except OSError:
                if self.proc.poll() is not None:
                    raise AssertionError(f"mlflow server on {self.port} exited {self.proc.returncode}") from None
                time.sleep(0.3)
        raise AssertionError(f"mlflow server on {self.port} not ready in {timeout} s")

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)  # its own session: the server and its workers
        self.proc.wait(30)


class MlflowServers:
    """The registry's server, killed at will; a standby on the same database takes over at once.

    Starting `mlflow server` takes 30-100 s on a busy machine: a standby started in advance
    stands in for "the server came back".
    """

    def __init__(self, home: Path) -> None:
        self.home = home
        self.current = MlflowProcess(home).ready()
        self.standby = MlflowProcess(home)
        self.kills = 0

    @property
    def uri(self) -> str:
        return self.current.uri

    def kill(self) -> None:
        self.current.kill()
        self.kills += 1

    def ensure_up(self) -> None:
        if self.current.proc.poll() is not None:
            self.current, self.standby = self.standby.ready(), MlflowProcess(self.home)

    def stop(self) -> None:
        self.current.kill()
        self.standby.kill()


@pytest.fixture(scope="module")
def mlflow_proc(tmp_path_factory):
    servers = MlflowServers(tmp_path_factory.mktemp("mlflow-server"))
    yield servers
    servers.stop()


@pytest.fixture(autouse=True)
def fail_fast(monkeypatch):
    """MLflow's client retries a dead server for minutes; a fault test wants the failure now."""
    for key, value in FAST_FAIL.items():
        monkeypatch.setenv(key, value)


@dataclass
class FaultEnv:
    home: Path
    data: Path
    servers: MlflowServers
    workspace: Workspace

    @property
    def server(self) -> MlflowServer:
        """The registry at the address of the server running now."""
        return MlflowServer(tracking_uri=self.servers.uri, artifact_location=(self.home / "mlartifacts").as_uri(),
                            experiment="faults")

    def client(self) -> MlflowClient:
        return self.server.client(self.workspace)


@pytest.fixture(scope="module")
def fault_env(tmp_path_factory, mlflow_proc) -> FaultEnv:
    home = tmp_path_factory.mktemp("faults")
    data = home / "churn.parquet"
    pd.concat([make_churn_data(p, rows=ROWS_PER_PERIOD) for p in range(3)]).to_parquet(data, index=False)
    return FaultEnv(home, data, mlflow_proc, Workspace(home / "workspace"))


def check_invariants(client: MlflowClient, name: str, allowed: set[str]) -> list[str]:
    """What is wrong with a model's registry entry; empty when consistent."""
    problems = []
    aliases = read_aliases(client, name)
    champion = aliases.get(CHAMPION)
    if champion not in allowed:
        problems.append(f"champion is {champion}, expected one of {sorted(allowed)}")
    elif champion is not None:
        tags = client.get_model_version(name, champion).tags
        if tags.get("prefect_mlops.gate") != "passed":
            problems.append(f"champion v{champion} has no passed gate")
        if tags.get(STATUS_TAG) not in (PROMOTED, None) and "prefect_mlops.promoted_from" not in tags:
            problems.append(f"champion v{champion} has status {tags.get(STATUS_TAG)}")
    if aliases.get(PREVIOUS) is not None and aliases.get(PREVIOUS) == champion:
        problems.append(f"@{PREVIOUS} is the champion v{champion}")
    if CHALLENGER in aliases:
        problems.append(f"@{CHALLENGER} left on v{aliases[CHALLENGER]} with no run going")
    aliased = {v for a, v in aliases.items() if a in (CHAMPION, PREVIOUS)}
    for version in client.search_model_versions(f"name='{name}'"):
        tags, number = version.tags or {}, str(version.version)
        final = tags.get(STATUS_TAG) in ("promoted", "failed") or "prefect_mlops.promoted_from" in tags
        if number not in aliased and not final:
            problems.append(f"v{number} has neither an alias nor a final status")
    found = read_record(client, name)
    if found is not None:
        if found.state == "pending":
            problems.append(f"promotion record {found.id} still pending")
        expected = (found.after if found.state == "done" else found.before).get(CHAMPION)
        if expected != champion:
            problems.append(f"record {found.id} ({found.state}) says champion {expected}, alias says {champion}")
    return problems


def tally(kind: str, fault: str, problems: list[str], note: str = "") -> None:
    entry = TALLY.setdefault(kind, {"tried": 0, "survived": 0, "failed": []})
    entry["tried"] += 1
    if problems:
        entry["failed"].append({"fault": fault, "problems": problems, "note": note})
    else:
        entry["survived"] += 1
    record(f"registry faults: {kind}", entry)


# ---------------------------------------------------------------------------- server killed at each write


@dataclass
class Cycles:
    first: Cycle  # judged with no champion: becomes v1
    second: Cycle  # judged against champion v1


def retarget(cycle: Cycle, name: str, champion: str | None = None) -> Cycle:
    """The same trained model and verdict, for another registered model name (and champion version)."""
    trained = cycle.trained.model_copy(update={"lineage": cycle.trained.lineage.model_copy(
        update={"model_name": name})})
    evaluation = cycle.evaluation.model_copy(update={"model_name": name})
    verdict = cycle.verdict.model_copy(update={"model_name": name})
    if champion is not None:
        verdict = verdict.model_copy(update={"champion_version": champion})
        if evaluation.champion is not None:
            evaluation = evaluation.model_copy(update={
                "champion": evaluation.champion.model_copy(update={"version": champion})})
    return Cycle(cycle.features, trained, evaluation, verdict)


def run_cycle(cycle: Cycle, server: MlflowServer, workspace: Workspace) -> str:
    model = register_version(cycle.trained, cycle.verdict, cycle.evaluation, mlflow_server=server,
                             workspace=workspace)
    return promote(model, cycle.evaluation, cycle.verdict, mlflow_server=server, workspace=workspace).champion_version


@pytest.fixture(scope="module")
def cycles(fault_env) -> Cycles:
    server, workspace = fault_env.server, fault_env.workspace
    source = DataSource(uri=str(fault_env.data), time_column="event_time")
    from prefect_mlops.tasks.features import FeatureSpec

    spec = FeatureSpec(target="churned", numeric=["tenure_months", "monthly_spend", "support_calls", "usage_hours"],
                       categorical=["plan", "channel"], slice_column="region", time_column="event_time")
    first = train_and_judge(source, spec, TRAINER, server=server, workspace=workspace, window=period_window(0),
                            name="base")
    assert first.verdict.passed, first.verdict.reasons
    assert run_cycle(first, server, workspace) == "1"
    second = train_and_judge(source, spec, TRAINER, server=server, workspace=workspace,
                             window="2024-02-01/2024-04-01", name="base", policy=ModelPolicy(**NOT_WORSE))
    assert second.verdict.passed and second.verdict.champion_version == "1", second.verdict.reasons
    return Cycles(first, second)


class WriteRecorder:
    """Wraps MlflowClient's write methods; calls `on_write(index, method, when)` around each."""

    def __init__(self, monkeypatch, on_write: Callable[[int, str, str], None]) -> None:
        self.calls: list[str] = []
        for method in WRITES:
            real = getattr(MlflowClient, method)
            monkeypatch.setattr(MlflowClient, method, self._wrap(method, real, on_write))

    def _wrap(self, method: str, real: Callable, on_write: Callable[[int, str, str], None]) -> Callable:
        def wrapped(client, *args, **kwargs):
            index = len(self.calls)
            self.calls.append(f"{method}{_brief(args)}")
            on_write(index, method, "before")
            result = real(client, *args, **kwargs)
            on_write(index, method, "after")
            return result
        return wrapped


def _brief(args: tuple) -> str:
    return "(" + ", ".join(str(a)[:20] for a in args[1:3]) + ")"


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_mlflow_server_killed_at_each_registry_write(cycles, fault_env, mlflow_proc, monkeypatch):
    workspace = fault_env.workspace

    # A clean registration and promotion, recorded: the writes to break one at a time.
    run_cycle(retarget(cycles.first, "probe"), fault_env.server, workspace)
    with monkeypatch.context() as patch:
        recorder = WriteRecorder(patch, lambda *_: None)
        assert run_cycle(retarget(cycles.second, "probe"), fault_env.server, workspace) == "2"
    writes = recorder.calls
    assert any(w.startswith("create_model_version") for w in writes) and len(writes) >= 6, writes
    record("registry writes of one promotion", writes)

    # Killed right before write k and right after write k-1 leave the server in the same place:
    # the first write is broken before it, every write after it.
    points = [(0, "before")] + [(index, "after") for index in range(len(writes))]
    for index, when in points:
        name = f"kill-{index:02d}-{when}"
        fault = f"server killed {when} write {index}: {writes[index]}"
        server = fault_env.server
        run_cycle(retarget(cycles.first, name), server, workspace)  # v1 is the champion

        def kill_here(i: int, method: str, moment: str, target=(index, when)) -> None:
            if (i, moment) == target:
                mlflow_proc.kill()
        message = ""
        with monkeypatch.context() as patch:
            WriteRecorder(patch, kill_here)
            try:
                run_cycle(retarget(cycles.second, name), server, workspace)
            except Exception as exc:
                message = str(exc)
        mlflow_proc.ensure_up()
        server, client = fault_env.server, fault_env.client()
        problems = []
        made = [str(v.version) for v in client.search_model_versions(f"name='{name}'")]
        if "Nothing was registered" in message and len(made) > 1:
            problems.append(f"error says nothing was registered, but versions are {made}: {message}")
        if "removed version" in message:
            problems.append(f"error claims a removal: {message}")
        reconcile_model(client, name)
        problems += check_invariants(client, name, {"1", "2"})
        champion = read_aliases(client, name)[CHAMPION]
        try:  # the rerun: a challenger judged against the champion in place now
            new = run_cycle(retarget(cycles.second, name, champion=champion), server, workspace)
            problems += check_invariants(client, name, {new})
        except Exception as exc:
            problems.append(f"rerun failed: {exc}")
        tally("server killed at a registry write", fault, problems, message[:500])
    failed = TALLY["server killed at a registry write"]["failed"]
    assert not failed, json.dumps(failed, indent=1)


# ---------------------------------------------------------------------------- flow process signalled


DRIVER = textwrap.dedent('''
    """Run continuous_training in this process; optionally pause (forever) at one registry write."""
    import json, sys, time
    from pathlib import Path
    from mlflow import MlflowClient

    cfg = json.loads(sys.argv[1])
    pause = cfg.get("pause")
    if pause:
        real = getattr(MlflowClient, pause["method"])
        seen = []

        def wrapped(self, *args, **kwargs):
            hit = pause.get("arg") in (None, *map(str, args))
            if hit:
                seen.append(1)
            hit = hit and len(seen) == pause.get("nth", 1)
            if hit and pause["when"] == "before":
                Path(pause["flag"]).write_text("paused")
                while True:
                    time.sleep(0.05)
            result = real(self, *args, **kwargs)
            if hit and pause["when"] == "after":
                Path(pause["flag"]).write_text("paused")
                while True:
                    time.sleep(0.05)
            return result
        setattr(MlflowClient, pause["method"], wrapped)

    from prefect_mlops.blocks import DataSource, MlflowServer, ModelPolicy
    from prefect_mlops.flows.continuous_training import continuous_training
    from prefect_mlops.tasks.features import FeatureSpec
    from prefect_mlops.tasks.lineage import TrainerSpec

    report = continuous_training(
        model_name=cfg["model"], source=DataSource(uri=cfg["data"], time_column="event_time"),
        features=FeatureSpec(target="churned", numeric=["tenure_months", "monthly_spend", "support_calls",
                             "usage_hours"], categorical=["plan", "channel"], slice_column="region",
                             time_column="event_time"),
        trainer=TrainerSpec(estimator="sklearn.linear_model.LogisticRegression", params={"max_iter": 300}),
        policy=ModelPolicy(**cfg["policy"]), window=cfg["window"], force=True,
        mlflow_server=MlflowServer(**cfg["mlflow"]), workspace=cfg["workspace"])
    print("REPORT " + json.dumps(report.model_dump() if hasattr(report, "model_dump") else str(report)))
''')


@dataclass
class FlowRunner:
    home: Path
    data: Path
    env_: FaultEnv
    workspace: Workspace

    @property
    def server(self) -> MlflowServer:
        return self.env_.server

    def start(self, model: str, window: str, pause: dict[str, Any] | None = None) -> subprocess.Popen:
        script = self.home / "driver.py"
        script.write_text(DRIVER)
        cfg = {"model": model, "data": str(self.data), "window": window, "policy": NOT_WORSE,
               "workspace": str(self.workspace.root), "pause": pause,
               "mlflow": self.server.model_dump(include={"tracking_uri", "artifact_location", "experiment"})}
        log = open(self.home / f"{model}-{int(time.time() * 1000)}.log", "wb")
        return subprocess.Popen([sys.executable, str(script), json.dumps(cfg)], env=self.env(), stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)

    def env(self) -> dict[str, str]:
        """No PREFECT_API_URL: each process starts the embedded API on one database in PREFECT_HOME."""
        env = {**os.environ, **FAST_FAIL, "PREFECT_HOME": str(self.home / "prefect-home"), "OMP_NUM_THREADS": "1",
               "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "GX_ANALYTICS_ENABLED": "false",
               "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "300"}  # a busy machine starts it slowly
        env.pop("PREFECT_API_URL", None)
        return env

    def repair(self, model: str) -> subprocess.CompletedProcess:
        """`prefect-mlops repair MODEL`, on the same embedded Prefect API as the flow processes."""
        exe = Path(sys.executable).parent / "prefect-mlops"
        return subprocess.run([str(exe), "repair", model, "--tracking-uri", self.server.tracking_uri],
                              env=self.env(), capture_output=True, text=True, timeout=300, check=False)


def _end_group(proc: subprocess.Popen) -> None:
    """The flow process and the embedded Prefect API it started (its own session)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        pass


@pytest.fixture(scope="module")
def flows(fault_env) -> FlowRunner:
    return FlowRunner(fault_env.home / "flows", fault_env.data, fault_env, fault_env.workspace)


def run_flow(flows: FlowRunner, model: str, window: str, timeout: float = 400) -> int:
    flows.home.mkdir(exist_ok=True)
    proc = flows.start(model, window)
    try:
        return proc.wait(timeout)
    finally:
        _end_group(proc)


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 400) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"the flow process ended ({proc.returncode}) before pausing at {path.name}")
        if time.monotonic() > deadline:
            raise AssertionError(f"the flow process did not reach {path.name} in {timeout} s")
        time.sleep(0.2)


SIGNAL_FAULTS = [
    ("SIGTERM", {"method": "set_registered_model_alias", "arg": "champion", "when": "after"}),
    ("SIGKILL", {"method": "set_registered_model_alias", "arg": "champion", "when": "after"}),
    ("SIGKILL", {"method": "set_registered_model_alias", "arg": "previous-champion", "when": "after"}),
    ("SIGKILL", {"method": "set_registered_model_tag", "arg": "prefect_mlops.promotion", "when": "after"}),
    ("SIGKILL", {"method": "create_model_version", "when": "after"}),
    ("SIGTERM", {"method": "set_registered_model_alias", "arg": "challenger", "when": "after"}),
]


# `make test` runs one case, the kill that leaves a half-registered version; `make test-slow` runs the others.
@pytest.mark.parametrize(("sig", "pause"), [
    pytest.param(s, p, marks=() if p["method"] == "create_model_version" else pytest.mark.slow,
                 id=f"{s}-{p['method']}-{p.get('arg', '')}") for s, p in SIGNAL_FAULTS])
def test_flow_process_signalled_between_registry_writes(flows, cycles, sig, pause):
    flows.home.mkdir(exist_ok=True)
    model = f"sig-{sig.lower()}-{pause['method'].split('_')[-1]}-{pause.get('arg', 'x')}".replace(".", "-")
    fault = f"{sig} of the flow process {pause['when']} {pause['method']}({pause.get('arg', '')})"
    client = flows.server.client(flows.workspace)
    run_cycle(retarget(cycles.first, model), flows.server, flows.workspace)  # v1 is the champion
    assert read_aliases(client, model) == {CHAMPION: "1"}

    flag = flows.home / f"{model}.paused"
    proc = flows.start(model, "2024-02-01/2024-04-01", pause={**pause, "flag": str(flag)})
    problems = []
    try:
        wait_for(flag, proc)
        os.kill(proc.pid, getattr(signal, sig))
        try:
            proc.wait(120)
        except subprocess.TimeoutExpired:
            problems.append(f"the flow process did not stop within 120 s of {sig}")
    finally:
        _end_group(proc)
    if sig == "SIGTERM":  # the run restores what it moved itself, before any reconciler
        left = read_aliases(client, model)
        if left.get(CHAMPION) != "1" or left.get(PREVIOUS) == "1":
            problems.append(f"after SIGTERM the aliases are {left}")
    if pause["method"] == "create_model_version":
        # Left to the rerun: a continuous-training run reconciles before anything else.
        if run_flow(flows, model, "2024-02-01/2024-04-01") != 0:
            problems.append("the rerun failed")
    else:
        repaired = flows.repair(model)
        if repaired.returncode != 0:
            problems.append(f"prefect-mlops repair failed: {repaired.stderr[-2000:]}")
        problems += check_invariants(client, model, {"1"})
        champion = read_aliases(client, model).get(CHAMPION)
        try:  # the rerun: a challenger judged against the champion in place now
            run_cycle(retarget(cycles.second, model, champion=champion), flows.server, flows.workspace)
        except Exception as exc:
            problems.append(f"rerun failed: {exc}")
    newest = str(max(int(v.version) for v in client.search_model_versions(f"name='{model}'")))
    problems += check_invariants(client, model, {newest})
    tally("flow process signalled", fault, problems)
    assert not problems, problems


# ---------------------------------------------------------------------------- two runs at once


def test_two_direct_runs_of_one_model_at_once_never_promote_over_a_champion_they_did_not_compare(flows, cycles):
    flows.home.mkdir(exist_ok=True)
    model = "pair"
    run_cycle(retarget(cycles.first, model), flows.server, flows.workspace)  # v1 is the champion
    assert flows.repair(model).returncode == 0  # and the embedded API's database exists before the two start
    procs = [flows.start(model, "2024-02-01/2024-04-01") for _ in range(2)]
    try:
        codes = [proc.wait(600) for proc in procs]
    finally:
        for proc in procs:
            _end_group(proc)
    client = flows.server.client(flows.workspace)
    problems = [f"run {i} exited {code}" for i, code in enumerate(codes) if code != 0]
    found = client.search_model_versions(f"name='{model}'")
    versions = {str(v.version): v.tags for v in found}
    verdicts = {str(v.version): v.description or "" for v in found}  # "Gate passed: <main reason>..."
    for number, tags in sorted(versions.items()):
        promoted_from = tags.get("prefect_mlops.promoted_from")
        if promoted_from is None or number == "1":
            continue
        judged = verdicts[number].split("\n\n")[0]
        if f"champion v{promoted_from}" not in judged:
            problems.append(f"v{number} replaced v{promoted_from} but was judged: {judged!r}")
    problems += check_invariants(client, model, {max(versions, key=int)})
    tally("two runs of one model at once", "two direct runs in two processes", problems)
    assert not problems, problems


# ---------------------------------------------------------------------------- the lock on a Prefect server


HOLDER = textwrap.dedent('''
    import sys, time
    from pathlib import Path
    from prefect_mlops.tasks.reconcile import model_lock

    with model_lock(sys.argv[1]):
        Path(sys.argv[2]).write_text("held")
        while True:
            time.sleep(0.1)
''')


@pytest.mark.timeout(900)
def test_the_model_lock_on_a_prefect_server_waits_for_a_live_holder_and_outlives_a_killed_one(tmp_path):
    from prefect_mlops.cli import Server, api
    from prefect_mlops.errors import ModelBusyError
    from prefect_mlops.tasks.reconcile import LOCK_LEASE, model_lock

    server = Server(home=tmp_path / "prefect", port=free_port(), extra_env={
        "PREFECT_SERVER_SERVICES_REPOSSESSOR_LOOP_SECONDS": "2", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"})
    server.start(timeout=600)
    try:
        script, flag = tmp_path / "holder.py", tmp_path / "held"
        script.write_text(HOLDER)
        holder = subprocess.Popen([sys.executable, str(script), "served", str(flag)],
                                  env=server.client_env(), start_new_session=True)
        try:
            wait_for(flag, holder, timeout=300)
            with api(server.api_url):
                with pytest.raises(ModelBusyError, match="another run has held the lock 'prefect-mlops-model-served'"):
                    with model_lock("served", timeout=5):
                        pass
                os.kill(holder.pid, signal.SIGKILL)  # no release: the server must reclaim the slot itself
                holder.wait(30)
                started = time.monotonic()
                with model_lock("served", timeout=LOCK_LEASE * 4):
                    waited = time.monotonic() - started
        finally:
            _end_group(holder)
    finally:
        server.stop()
    record("lock reclaimed after its holder was SIGKILLed (s)", round(waited, 1))
    assert waited <= LOCK_LEASE * 3
