"""Register: record a challenger that passed the gate as a new model version, aliased `challenger`.

A version is either fully registered (ready, tagged, aliased) or removed again: a failure
part-way deletes the version it created, and inside a Prefect transaction a later failure
(in deploy) rolls the registration back too.
"""

from __future__ import annotations

import math
import time

from prefect import task
from prefect.transactions import Transaction, get_transaction

from prefect_mlops.blocks.mlflow_server import MlflowServer
from prefect_mlops.errors import GateNotPassedError, RegistryError
from prefect_mlops.log import run_logger
from prefect_mlops.refs import ModelRef
from prefect_mlops.tasks.evaluate import Evaluation
from prefect_mlops.tasks.gate import GateVerdict
from prefect_mlops.tasks.lineage import TAG
from prefect_mlops.tasks.train import TrainedModel
from prefect_mlops.workspace import Workspace

CHALLENGER = "challenger"


def require_passed(verdict: GateVerdict | None, run_id: str, stage: str) -> None:
    """Raise unless `verdict` passed and judged the run `run_id`: no blessing, no promotion."""
    if verdict is None:
        raise GateNotPassedError(f"{stage} needs a gate verdict for run {run_id}; run the quality gate first")
    if not verdict.passed:
        raise GateNotPassedError(
            f"{stage} refused: the gate rejected run {run_id} of {verdict.model_name!r}: "
            + "; ".join(verdict.reasons)
        )
    if verdict.challenger_run_id != run_id:
        raise GateNotPassedError(
            f"{stage} refused: the verdict judged run {verdict.challenger_run_id}, not {run_id}; "
            "gate this run before promoting it"
        )


def register_version(
    trained: TrainedModel,
    verdict: GateVerdict,
    evaluation: Evaluation | None = None,
    *,
    mlflow_server: MlflowServer | None = None,
    workspace: Workspace | None = None,
    ready_timeout: float = 120,
) -> ModelRef:
    """Register `trained` as a new version with lineage tags and alias it `challenger`."""
    from mlflow.exceptions import MlflowException

    require_passed(verdict, trained.run_id, "register")
    server = mlflow_server or MlflowServer()
    name = trained.lineage.model_name
    server.check_reachable(workspace)
    client = server.client(workspace)
    tags = {k: v for k, v in trained.lineage.tags().items() if v}
    tags[f"{TAG}.gate"] = "passed"
    tags[f"{TAG}.gate.reason"] = verdict.main_reason[:5000]
    if evaluation is not None:
        tags.update({f"{TAG}.metric.{k}": f"{v:.6g}" for k, v in evaluation.challenger.overall.items()
                     if math.isfinite(v)})
    version = None
    try:
        try:
            client.create_registered_model(name, tags={f"{TAG}.managed": "true"})
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        created = client.create_model_version(name, source=trained.model_source, run_id=trained.run_id,
                                              tags=tags)
        version = str(created.version)
        deadline = time.monotonic() + ready_timeout
        while created.status != "READY":
            if created.status == "FAILED_REGISTRATION" or time.monotonic() > deadline:
                raise RegistryError(f"model {name!r} version {version}: registration ended {created.status}")
            time.sleep(0.5)
            created = client.get_model_version(name, version)
        client.set_registered_model_alias(name, CHALLENGER, version)
    except Exception as exc:
        if version is not None:
            _delete_quietly(client, name, version)
        if isinstance(exc, RegistryError):
            raise
        raise RegistryError(
            f"registering model {name!r} from run {trained.run_id} at {server.uri(workspace)} failed: {exc}. "
            "Nothing was registered; check the server and retry"
        ) from exc
    return ModelRef(name=name, version=version, run_id=trained.run_id, source=trained.model_source)


def unregister_version(model: ModelRef, mlflow_server: MlflowServer | None = None,
                       workspace: Workspace | None = None) -> None:
    """Remove a version this run registered (used when a later stage fails)."""
    _delete_quietly((mlflow_server or MlflowServer()).client(workspace), model.name, model.version)


def _delete_quietly(client: object, name: str, version: str) -> None:
    try:
        client.delete_model_version(name, version)  # deleting a version drops its aliases too
    except Exception as exc:  # the original failure matters more; say this one in the log
        run_logger().warning("could not delete model %s version %s: %s", name, version, exc)


@task(name="register", task_run_name="register-{verdict.model_name}")
def register(
    trained: TrainedModel,
    verdict: GateVerdict,
    evaluation: Evaluation | None = None,
    mlflow_server: MlflowServer | None = None,
    workspace: str | None = None,
) -> ModelRef:
    """Register a gated challenger (see `register_version`); rolled back with its transaction."""
    ws = Workspace(workspace)
    model = register_version(trained, verdict, evaluation, mlflow_server=mlflow_server, workspace=ws)
    txn = get_transaction()
    if txn is not None:
        txn.set("registered", model)
        txn.set("mlflow_server", mlflow_server)
        txn.set("workspace", ws)
    run_logger().info("registered %s version %s as @%s", model.name, model.version, CHALLENGER)
    return model


@register.on_rollback
def _unregister(txn: Transaction) -> None:
    model = txn.get("registered", None)
    if model is not None:
        unregister_version(model, txn.get("mlflow_server", None), txn.get("workspace", None))
        run_logger().warning("rolled back: removed %s version %s", model.name, model.version)
