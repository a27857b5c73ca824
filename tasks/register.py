"""Register: record a challenger that passed the gate as a new model version, aliased `challenger`.

A version is either fully registered (ready, tagged, aliased) or taken out again: a failure
part-way deletes the version it created, or tags it `prefect_mlops.status=failed` when the
delete fails too, and the error says which. Inside a Prefect transaction a later failure (in
deploy) rolls the registration back the same way. A version left behind by a killed process
is found and tagged by the reconciler (`prefect_mlops.tasks.reconcile`).
"""

from __future__ import annotations

import math
import time

from prefect import task
from prefect.transactions import Transaction, get_transaction

from prefect_mlops.blocks.mlflow_server import MlflowServer
from prefect_mlops.errors import GateNotPassedError, RegistryError
from prefect_mlops.integrity import DIGEST_TAG
from prefect_mlops.log import run_logger
from prefect_mlops.refs import ModelRef
from prefect_mlops.tasks.evaluate import Evaluation
from prefect_mlops.tasks.gate import GateVerdict
from prefect_mlops.tasks.lineage import GATE_TAG, TAG
from prefect_mlops.tasks.reconcile import CHALLENGER, discard_version
from prefect_mlops.tasks.train import TrainedModel
from prefect_mlops.workspace import Workspace

__all__ = ["CHALLENGER", "register", "register_version", "require_passed", "unregister_version"]


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


def describe_version(trained: TrainedModel, verdict: GateVerdict, evaluation: Evaluation | None = None) -> str:
    """The version's description in the registry: the verdict and its main reason, the hold-out, the data.

    Example:
        ```python
        from types import SimpleNamespace as NS
        from prefect_mlops.tasks.register import describe_version
        data = NS(name="churn", fingerprint="ab" * 32, rows=200, window="2024-01-01/2024-02-01")
        fit = NS(method="sample", summary=lambda: "sample: 150 of 160 rows")
        trained = NS(lineage=NS(dataset=data, trainer=NS(kind="sklearn", estimator="m.Est"), training=fit,
                                trigger={"kind": "drift", "drift_share": 0.8}))
        text = describe_version(trained, NS(main_reason="better by 0.1"))
        assert text.startswith("Gate passed: better by 0.1") and "drift (drift share 0.8)" in text
        assert "(200 rows, fit sample: 150 of 160 rows," in text
        ```
    """
    lineage = trained.lineage
    lines = [f"Gate passed: {verdict.main_reason}"]
    if evaluation is not None:
        champion = evaluation.champion
        shown = [f"{k} {v:.4f}" + (f" (champion v{champion.version} {champion.overall[k]:.4f})"
                                   if champion and math.isfinite(champion.overall.get(k, math.nan)) else "")
                 for k, v in evaluation.challenger.overall.items() if math.isfinite(v)]
        lines.append(f"Hold-out of {evaluation.holdout_rows} rows: {', '.join(shown)}.")
    trainer = lineage.trainer.estimator if lineage.trainer.kind == "sklearn" else "torch"
    data = lineage.dataset
    fit = lineage.training
    # A fit on a sample says so: the data's row count alone would claim every row was learned from.
    rows = f"{data.rows} rows" if fit is None or fit.method == "all" else f"{data.rows} rows, fit {fit.summary()}"
    lines.append(f"Trained with {trainer} on {data.name}@{data.fingerprint[:12]} ({rows}, window "
                 f"{data.window or 'all rows'}).")
    trigger = dict(lineage.trigger or {})
    if trigger:
        kind = trigger.pop("kind", "unknown")
        said = [f"drift share {trigger['drift_share']:.2g}" if isinstance(trigger.get("drift_share"), float)
                else None, f"event {trigger['event_id']}" if trigger.get("event_id") else None]
        said = ", ".join(s for s in said if s)
        lines.append(f"Started by: {kind}" + (f" ({said})." if said else "."))
    return "\n\n".join(lines)[:5000]


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
    # A few tags a person filters by (the rest of the lineage in one JSON tag); the verdict in words.
    tags = {k: v for k, v in trained.lineage.tags().items() if v}
    tags[GATE_TAG] = "passed"
    if trained.sha256:  # the files' checksums: every load checks them first (prefect_mlops.integrity)
        tags[DIGEST_TAG] = trained.sha256
    description = describe_version(trained, verdict, evaluation)
    version = None
    try:
        try:
            client.create_registered_model(name, tags={f"{TAG}.managed": "true"})
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        created = client.create_model_version(name, source=trained.model_source, run_id=trained.run_id,
                                              tags=tags, description=description)
        version = str(created.version)
        deadline = time.monotonic() + ready_timeout
        while created.status != "READY":
            if created.status == "FAILED_REGISTRATION" or time.monotonic() > deadline:
                raise RegistryError(f"model {name!r} version {version}: registration ended {created.status}")
            time.sleep(0.5)
            created = client.get_model_version(name, version)
        client.set_registered_model_alias(name, CHALLENGER, version)
    except BaseException as exc:  # SIGTERM arrives as a BaseException: clean up on that too
        left = _clean_up(client, name, version, trained.run_id, f"registration failed: {exc!r}")
        if not isinstance(exc, Exception):
            run_logger().warning("registration of %s interrupted (%r): %s", name, exc, left)
            raise
        raise RegistryError(
            f"registering model {name!r} from run {trained.run_id} at {server.uri(workspace)} failed: {exc}. "
            f"{left}; check the server and retry"
        ) from exc
    return ModelRef(name=name, version=version, run_id=trained.run_id, source=trained.model_source)


def _clean_up(client: object, name: str, version: str | None, run_id: str, reason: str) -> str:
    """Take out what a failed registration made; a sentence saying what was left."""
    if version is not None:
        return discard_version(client, name, version, reason)
    # The server may have created the version and failed before answering: look for it by run.
    try:
        made = [str(v.version) for v in client.search_model_versions(f"name='{name}' and run_id='{run_id}'")]
    except Exception:
        return (f"The server may have created a version of {name!r} before failing (it could not be asked); "
                f"the next run or `prefect-mlops repair {name}` tags any such version failed")
    if not made:
        return "Nothing was registered"
    return "; ".join(discard_version(client, name, v, reason) for v in made)


def unregister_version(model: ModelRef, mlflow_server: MlflowServer | None = None,
                       workspace: Workspace | None = None, reason: str = "a later stage failed") -> str:
    """Take out a version this run registered (used when a later stage fails); says what was left."""
    try:
        client = (mlflow_server or MlflowServer()).client(workspace)
    except Exception as exc:
        return f"version {model.version} could not be reached for removal ({exc}); `prefect-mlops repair` tags it"
    return discard_version(client, model.name, model.version, reason)


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
        left = unregister_version(model, txn.get("mlflow_server", None), txn.get("workspace", None),
                                  reason="rolled back: deploy failed")
        run_logger().warning("rolled back the registration of %s: %s", model.name, left)
