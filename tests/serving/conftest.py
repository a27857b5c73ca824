"""A registry with a champion and a gated challenger, and a real uvicorn serving it on 127.0.0.1."""

from __future__ import annotations

import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from prefect_mlops.blocks import DataSource, MlflowServer, ModelPolicy
from prefect_mlops.cli import free_port
from prefect_mlops.demo import period_window
from prefect_mlops.tasks.features import FeatureSpec
from prefect_mlops.tasks.lineage import TrainerSpec
from prefect_mlops.tasks.reconcile import CHAMPION
from prefect_mlops.tasks.register import register_version
from prefect_mlops.workspace import Workspace
from tests.tasks.stages import promote_cycle, train_and_judge

RECORD = {"tenure_months": 12, "monthly_spend": 55.0, "support_calls": 2, "usage_hours": 30.0, "plan": "basic",
          "channel": "web"}
FEATURES = FeatureSpec(target="churned", numeric=["tenure_months", "monthly_spend", "support_calls", "usage_hours"],
                       categorical=["plan", "channel"], slice_column="region", time_column="event_time")
LENIENT = ModelPolicy(max_drop=1.0, promote_when="not-worse")


@dataclass
class Registry:
    server: MlflowServer
    workspace: Workspace
    source: DataSource

    @property
    def client(self):
        return self.server.client(self.workspace)

    def challenger(self, period: int, trainer: TrainerSpec | None = None) -> str:
        """Train, gate and register a version (not promoted); its number."""
        cycle = train_and_judge(self.source, FEATURES, trainer or TrainerSpec(
            estimator="sklearn.linear_model.LogisticRegression", params={"max_iter": 300}),
            server=self.server, workspace=self.workspace, window=period_window(period), policy=LENIENT)
        assert cycle.verdict.passed, cycle.verdict.reasons
        return register_version(cycle.trained, cycle.verdict, cycle.evaluation, mlflow_server=self.server,
                                workspace=self.workspace).version

    def corrupt_copy(self, version: str) -> str:
        """A new version whose model file is garbage (the registry says it is fine)."""
        original = self.client.get_model_version("churn", version)
        folder = Path(self.workspace.folder("corrupt")) / f"of-v{version}"
        shutil.copytree(original.source.removeprefix("file://"), folder)
        for saved in folder.glob("model.*"):  # model.skops or model.pkl, whichever the version was saved as
            saved.write_bytes(b"not a model at all")
        created = self.client.create_model_version("churn", folder.as_uri(), run_id=original.run_id,
                                                   tags=dict(original.tags))
        return str(created.version)


@pytest.fixture(scope="module")
def registry(tmp_path_factory, churn_file) -> Registry:
    root = tmp_path_factory.mktemp("serving")
    reg = Registry(MlflowServer(tracking_uri=f"sqlite:///{root / 'mlflow.db'}",
                                artifact_location=(root / "mlartifacts").as_uri(), experiment="serving"),
                   Workspace(root / "workspace"), DataSource(uri=str(churn_file), time_column="event_time"))
    first = train_and_judge(reg.source, FEATURES, TrainerSpec(estimator="sklearn.linear_model.LogisticRegression",
                                                              params={"max_iter": 300}),
                            server=reg.server, workspace=reg.workspace, window=period_window(0))
    promote_cycle(first, server=reg.server, workspace=reg.workspace)
    return reg


class Service:
    """uvicorn in a thread of this process, on a free port."""

    def __init__(self, app) -> None:
        import uvicorn

        self.app = app
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    access_log=False))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Service:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)

    @property
    def service(self):
        return self.app.state.service


def serve(registry: Registry, **settings) -> Service:
    from prefect_mlops.serving.app import ServeSettings, create_app

    return Service(create_app(ServeSettings(model_name="churn", mlflow_server=registry.server,
                                            workspace=str(registry.workspace.root), poll_seconds=0.2,
                                            flush_seconds=0.5, **settings)))


def wait_for(condition, seconds: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"{what} not met within {seconds} s"
        time.sleep(0.05)


def predict(client: httpx.Client, record: dict | None = None, **extra) -> httpx.Response:
    return client.post("/predict", json={"records": [record or RECORD], **extra})


def champion(registry: Registry) -> str:
    return str(registry.client.get_model_version_by_alias("churn", CHAMPION).version)
