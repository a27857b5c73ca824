"""Route the train stage to a work pool: `TrainerSpec.label` -> `ComputeRoute` block -> `train-on-pool` run.

The continuous-training flow trains in its own process unless the trainer names a compute
label. With a label, `train_on_route` loads the `ComputeRoute` block saved under that name,
runs the route's `train-on-pool` deployment on the route's pool and queue with the route's
job variables, waits for it, and reads the trained model back from the child run's
persisted result. A pool that does not exist, or that no worker serves, fails the cycle
with the pool's name before anything is registered or promoted.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

from prefect import get_run_logger, task
from prefect.runtime import flow_run
from pydantic import SecretBytes, SecretStr

from prefect_mlops.blocks.compute_route import ComputeRoute
from prefect_mlops.blocks.mlflow_server import MlflowServer
from prefect_mlops.blocks.retrain_policy import TrainingBudget
from prefect_mlops.errors import ConfigError, TrainingError
from prefect_mlops.tasks.features import FeatureSet
from prefect_mlops.tasks.lineage import Lineage, TrainerSpec
from prefect_mlops.tasks.train import TrainedModel
from prefect_mlops.workspace import Workspace

if TYPE_CHECKING:
    from prefect.client.schemas.objects import FlowRun

__all__ = ["block_parameter", "load_route", "pinned_server", "record_compute", "route_parameters", "train_on_route"]

DEVICE_ENV = "PREFECT_MLOPS_DEVICE"
COMPUTE_TAG = "prefect_mlops.compute"


def load_route(label: str) -> ComputeRoute:
    """The `ComputeRoute` block saved under the label's name."""
    try:
        return ComputeRoute.load(label)
    except ValueError as exc:
        raise ConfigError(
            f"trainer.label {label!r}: no Compute Route block named {label!r} ({exc}). Save one, e.g. "
            f"ComputeRoute(work_pool={label!r}).save({label!r}) or `prefect-mlops deploy --config FILE`, "
            "or clear the label to train in the flow's own process"
        ) from exc


def block_parameter(block: Any) -> Any:
    """A Block as a flow-run parameter: a reference when saved, its fields when it holds no secret."""
    if block is None:
        return None
    block_id = getattr(block, "_block_document_id", None)
    if block_id is not None:
        return {"$ref": {"block_document_id": str(block_id)}}
    if holds_secret(block):
        raise ConfigError(
            f"{type(block).__name__} holds a secret and is not saved: save the block (block.save('name')) "
            "so that the training run receives a reference, not the secret"
        )
    return block.model_dump(mode="json")


def holds_secret(block: Any) -> bool:
    """Whether any field of `block` holds a secret (`SecretStr`/`SecretBytes`, e.g. a token or a password)."""
    return any(isinstance(getattr(block, name, None), (SecretStr, SecretBytes)) for name in type(block).model_fields)


def pinned_server(server: MlflowServer, workspace: str) -> MlflowServer:
    """The server as this process resolves it, so another process (with another environment) agrees.

    A block without a tracking URI means "$MLFLOW_TRACKING_URI, else the workspace's SQLite store",
    which the training run could resolve differently; it is sent by value with the URI filled in.
    A saved block holding any secret (a token or a password) stays a reference: a secret must not
    travel as a parameter.
    """
    if server.tracking_uri or (holds_secret(server) and server._block_document_id is not None):
        return server
    ws = Workspace(workspace)
    pinned = server.model_copy(update={"tracking_uri": server.uri(ws),
                                       "artifact_location": server.artifact_location or ws.artifact_root})
    pinned._block_document_id = None  # a reference would point at the unpinned block
    return pinned


def check_route(route: ComputeRoute, label: str) -> int:
    """Fail with the pool's name when the route's pool or deployment is missing; returns online workers."""
    from prefect import get_client
    from prefect.exceptions import ObjectNotFound

    pool, name = route.work_pool, route.deployment_name()
    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(pool)
        except ObjectNotFound as exc:
            raise TrainingError(
                f"compute route {label!r}: work pool {pool!r} does not exist. Create it "
                f"(`prefect work-pool create {pool} --type process`, or `prefect-mlops deploy`) and start a worker "
                f"(`prefect worker start --pool {pool}`). Nothing was trained, registered or promoted"
            ) from exc
        try:
            deployment = client.read_deployment_by_name(name)
        except ObjectNotFound as exc:
            raise TrainingError(
                f"compute route {label!r}: deployment {name!r} does not exist on this Prefect server; "
                "apply the deployments (`prefect-mlops deploy`). Nothing was trained, registered or promoted"
            ) from exc
        if deployment.work_pool_name != pool:
            raise ConfigError(f"compute route {label!r} names work pool {pool!r} but deployment {name!r} runs on "
                              f"{deployment.work_pool_name!r}; fix the route's work_pool or deployment")
        workers = client.read_workers_for_work_pool(pool)
    return sum(1 for worker in workers if str(getattr(worker.status, "value", worker.status)).upper() == "ONLINE")


def wait_for_run(run_id: Any, route: ComputeRoute, label: str) -> FlowRun:
    """Poll a child run until it ends; cancel it and fail when no worker starts it or it runs too long."""
    from prefect import get_client
    from prefect.states import Cancelled, Cancelling

    pool = route.work_pool
    queue = route.work_queue or "the deployment's queue"
    with get_client(sync_client=True) as client:
        started = time.monotonic()
        running_since: float | None = None
        while True:
            run = client.read_flow_run(run_id)
            state = run.state
            if state is not None and state.is_final():
                return run
            now = time.monotonic()
            if running_since is None and state is not None and state.is_running():
                running_since = now
            if running_since is None and now - started > route.start_timeout_seconds:
                client.set_flow_run_state(run_id, Cancelled(message="no worker picked it up"), force=True)
                raise TrainingError(
                    f"compute route {label!r}: no worker of work pool {pool!r} ({queue}) started training run "
                    f"{run.name!r} within {route.start_timeout_seconds:g} s (state {state.name if state else '?'}). "
                    f"Start one with `prefect worker start --pool {pool}`. The run was cancelled; nothing was "
                    "registered or promoted"
                )
            if running_since is not None and now - running_since > route.timeout_seconds:
                client.set_flow_run_state(run_id, Cancelling(message="training timed out"), force=True)
                raise TrainingError(
                    f"compute route {label!r}: training run {run.name!r} on work pool {pool!r} ran longer than "
                    f"{route.timeout_seconds:g} s and was cancelled; nothing was registered or promoted"
                )
            time.sleep(1.0 if running_since is None else 2.0)


def trained_model_of(run: FlowRun, pool: str) -> TrainedModel:
    """The `TrainedModel` a completed train-on-pool run persisted, or a TrainingError naming the run."""
    state = run.state
    if state is None or not state.is_completed():
        raise TrainingError(
            f"training run {run.name!r} ({run.id}) on work pool {pool!r} ended "
            f"{state.name if state else 'without a state'}: {state.message if state else ''}. "
            "Nothing was registered or promoted"
        )
    try:
        result = state.result()
    except Exception as exc:
        raise TrainingError(
            f"training run {run.name!r} ({run.id}) completed but its result could not be read ({exc}); the "
            "flow and the pool's workers need a shared result storage (PREFECT_DEFAULT_RESULT_STORAGE_BLOCK)"
        ) from exc
    return result if isinstance(result, TrainedModel) else TrainedModel.model_validate(result)


def record_compute(trained: TrainedModel, mlflow_server: MlflowServer | None, workspace: str | None) -> dict[str, str]:
    """Tag the MLflow run with where it trained: label, work pool, device, flow run."""
    from prefect import get_client

    run_id = flow_run.get_id()
    pool = ""
    if run_id:
        with get_client(sync_client=True) as client:
            pool = client.read_flow_run(run_id).work_pool_name or ""
    tags = {f"{COMPUTE_TAG}.label": trained.lineage.trainer.label or "",
            f"{COMPUTE_TAG}.work_pool": pool,
            f"{COMPUTE_TAG}.device": os.environ.get(DEVICE_ENV, "cpu"),
            f"{COMPUTE_TAG}.cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES", ""),
            f"{COMPUTE_TAG}.flow_run_id": run_id or ""}
    client = (mlflow_server or MlflowServer()).client(Workspace(workspace))
    for key, value in tags.items():
        client.set_tag(trained.run_id, key, value)
    return tags


def route_parameters(features: FeatureSet, trainer: TrainerSpec, lineage: Lineage, mlflow_server: MlflowServer | None,
                     workspace: str | None, budget: TrainingBudget | None) -> dict[str, Any]:
    """The `train-on-pool` run's parameters: everything the fit needs, the retrain policy's budget included."""
    workspace = str(Workspace(workspace).root)  # the training run must see the same workspace and store
    server = pinned_server(mlflow_server or MlflowServer(), workspace)
    return {"features": features.model_dump(mode="json"), "trainer": trainer.model_dump(mode="json"),
            "lineage": lineage.model_dump(mode="json"), "mlflow_server": block_parameter(server),
            "workspace": workspace, "budget": budget.model_dump(mode="json") if budget else None}


@task(name="train-on-route", task_run_name="train-{lineage.model_name}-on-{trainer.label}")
def train_on_route(
    features: FeatureSet,
    trainer: TrainerSpec,
    lineage: Lineage,
    mlflow_server: MlflowServer | None = None,
    workspace: str | None = None,
    budget: TrainingBudget | None = None,
) -> TrainedModel:
    """Train on the work pool that `trainer.label` routes to (see the module docstring).

    The retrain policy's `budget` travels with the run; a share of the available memory is then the
    worker's, measured where the fit runs.
    """
    label = trainer.label
    if not label:
        raise ConfigError("train_on_route needs trainer.label; use the `train` task to train in-process")
    logger = get_run_logger()
    route = load_route(label)
    online = check_route(route, label)
    if not online:
        logger.warning("no worker of work pool %r is online; waiting up to %g s for one", route.work_pool,
                       route.start_timeout_seconds)
    from prefect.deployments import run_deployment

    lineage = lineage.model_copy(update={"flow_run_id": lineage.flow_run_id or flow_run.get_id()})
    parameters = route_parameters(features, trainer, lineage, mlflow_server, workspace, budget)
    child = run_deployment(route.deployment_name(), parameters=parameters, job_variables=route.job_variables(),
                           work_queue_name=route.work_queue, timeout=0,
                           flow_run_name=f"train-{lineage.model_name}-on-{label}")
    logger.info("training %s on work pool %r (queue %s) as flow run %s (%s)", lineage.model_name, route.work_pool,
                route.work_queue or "default", child.name, child.id)
    trained = trained_model_of(wait_for_run(child.id, route, label), route.work_pool)
    logger.info("trained on work pool %r -> MLflow run %s", route.work_pool, trained.run_id)
    return trained
