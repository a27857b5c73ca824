"""Fleet: many models -> one drift monitor per model, fanned out on a Dask cluster -> one report per model.

Wide data: columns -> drift statistics per column group, fanned out on a Dask cluster -> one drift report.

Each model's monitor is the `drift-monitor` flow, unchanged, run as one task on a Dask worker:
the same decisions as running the models one after another, and a retraining it starts holds the
model's lock (`model_lock`, a Prefect global concurrency limit) wherever it runs. A model that
fails is reported as failed; the others' reports are kept. `drift-check-columns` fans out one
model's drift statistics by column group and decides once, as `check_drift` does.

Dask is imported only when the flow runs: importing this module stays light.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Literal

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.states import Completed, Failed
from pydantic import BaseModel, Field

from prefect_mlops.blocks import DataSource, MlflowServer, ModelPolicy, RetrainPolicy
from prefect_mlops.errors import ConfigError, shorten
from prefect_mlops.flows.drift_monitor import MonitorReport, drift_monitor
from prefect_mlops.refs import DatasetRef, ModelName, OptionalFloat, OptionalInt, OptionalObject, OptionalText
from prefect_mlops.tasks.drift import DriftReport, drift_report
from prefect_mlops.tasks.drift_columns import column_groups, drift_statistics_of
from prefect_mlops.workspace import Workspace

if TYPE_CHECKING:
    from prefect_dask import DaskTaskRunner

# One thread per worker process: a monitor is CPU-bound numpy/scipy work, and the GIL would make a
# second thread wait; more parallelism comes from more workers (processes), not threads.
THREADS_PER_WORKER = 1


class FleetModel(BaseModel):
    """One model the fleet watches: its registered name, its data, and optionally its own window.

    Example:
        ```python
        from prefect_mlops.blocks import DataSource
        from prefect_mlops.flows.fleet import FleetModel
        model = FleetModel(model_name="churn", source=DataSource(uri="data/churn.parquet"), window="latest")
        assert model.model_name == "churn"
        ```
    """

    model_name: ModelName = Field(description="Registered model whose champion is watched.")
    source: DataSource = Field(description="Where this model's current data comes from.")
    window: OptionalText = Field(default=None, description="ISO-8601 'start/end' or 'latest'; empty: the fleet's.")


class ModelOutcome(BaseModel):
    """One model's monitor: its report, or why it failed; and the worker that ran it."""

    model_name: str
    status: Literal["done", "failed"]
    monitor: MonitorReport | None = None
    error: str | None = Field(default=None, description="The failure, as '<ErrorType>: <message>'.")
    worker: str | None = Field(default=None, description="The Dask worker's address ('local' outside Dask).")
    worker_name: str | None = Field(default=None, description="The Dask worker's name (a pod's name on Kubernetes).")
    pid: int | None = Field(default=None, description="The process id that ran the monitor.")


class FleetReport(BaseModel):
    """Every model's outcome, in the order the models were given, and the cluster that ran them."""

    cluster: str = Field(description="'LocalCluster(<n> workers)' or the scheduler address that was used.")
    outcomes: list[ModelOutcome]

    @property
    def failed(self) -> list[str]:
        return [o.model_name for o in self.outcomes if o.status == "failed"]

    @property
    def drifted(self) -> list[str]:
        return [o.model_name for o in self.outcomes if o.monitor and o.monitor.drift.detected]


def dask_task_runner(address: str | None = None, n_workers: int = 2) -> DaskTaskRunner:
    """A Prefect `DaskTaskRunner`: the cluster at `address`, or a temporary `LocalCluster` of `n_workers` processes.

    With an address (`tcp://scheduler:8786`) nothing else is passed: the cluster's own workers,
    resources and scaling apply. Without one, a LocalCluster of `n_workers` processes, one thread
    each, lives as long as the runner.

    Example:
        ```python
        from prefect_mlops.flows.fleet import dask_task_runner
        runner = dask_task_runner("tcp://10.0.0.5:8786")
        assert runner.address == "tcp://10.0.0.5:8786" and not runner.cluster_kwargs
        assert dask_task_runner(n_workers=3).cluster_kwargs["n_workers"] == 3
        ```
    """
    from prefect_dask import DaskTaskRunner

    if address:
        return DaskTaskRunner(address=address)
    if n_workers < 1:
        raise ConfigError(f"n_workers must be at least 1 Dask worker process, got {n_workers}; "
                          "or pass the address of a running Dask scheduler")
    # No dashboard: it needs bokeh, which is not a dependency, and would only warn.
    return DaskTaskRunner(cluster_kwargs={"n_workers": n_workers, "processes": True,
                                          "threads_per_worker": THREADS_PER_WORKER, "dashboard_address": None})


@contextmanager
def dask_cluster(address: str | None = None, n_workers: int = 2) -> Iterator[DaskTaskRunner]:
    """A started `dask_task_runner`, connected before any work is submitted; a scheduler that does not
    answer is named, with what to do, instead of failing the first task.

    Example:
        ```python
        import dask
        from prefect_mlops.errors import ConfigError
        from prefect_mlops.flows.fleet import dask_cluster
        with dask.config.set({"distributed.comm.timeouts.connect": "1s"}):
            try:
                with dask_cluster("tcp://127.0.0.1:1"):
                    raise AssertionError("nothing listens on port 1")
            except ConfigError as exc:
                assert "the Dask scheduler at 'tcp://127.0.0.1:1'" in str(exc)
        ```
    """
    with dask_task_runner(address, n_workers) as runner:
        try:
            runner.client  # noqa: B018 - the property connects (or starts the LocalCluster)
        except OSError as exc:  # distributed's connect timeout and refused connections are OSErrors
            where = f"the Dask scheduler at {address!r}" if address else f"a LocalCluster of {n_workers} workers"
            raise ConfigError(f"could not reach {where} ({type(exc).__name__}: {shorten(str(exc), 300)}); "
                              "check the address and that the scheduler runs (`dask scheduler`), or leave "
                              "`address` empty for a LocalCluster on this machine") from exc
        yield runner


def where_running() -> dict[str, Any]:
    """The Dask worker's address and name ('local' outside a Dask worker) and this process's id.

    Example:
        ```python
        import os
        from prefect_mlops.flows.fleet import where_running
        assert where_running() == {"worker": "local", "worker_name": "local", "pid": os.getpid()}
        ```
    """
    try:
        from distributed import get_worker

        worker = get_worker()
        address, name = worker.address, str(worker.name)
    except (ImportError, ValueError):  # not on a Dask worker (ValueError), or no Dask installed
        address = name = "local"
    return {"worker": address, "worker_name": name, "pid": os.getpid()}


def run_monitor(model_name: str, source: DataSource, window: str | None = None, drift_share: float | None = None,
                retrain: bool = False, policy: ModelPolicy | None = None, mlflow_server: MlflowServer | None = None,
                workspace: str | None = None, retrain_policy: RetrainPolicy | None = None) -> ModelOutcome:
    """One model's `drift-monitor` flow, and where it ran (see `monitor_model`)."""
    report = drift_monitor(model_name, source, window=window, drift_share=drift_share, retrain=retrain,
                           policy=policy, mlflow_server=mlflow_server, workspace=workspace,
                           retrain_policy=retrain_policy)
    return ModelOutcome(model_name=model_name, status="done", monitor=report, **where_running())


@task(name="monitor-model", task_run_name="monitor-{model_name}")
def monitor_model(model_name: str, source: DataSource, window: str | None = None, drift_share: float | None = None,
                  retrain: bool = False, policy: ModelPolicy | None = None, mlflow_server: MlflowServer | None = None,
                  workspace: str | None = None, retrain_policy: RetrainPolicy | None = None) -> ModelOutcome:
    """One model's `drift-monitor` flow, on whichever worker the runner picks; its outcome says which."""
    # The body only calls a module-level function: Dask pickles this task's function by value (the module's
    # name holds the Task, not the function), which would carry drift_monitor without its module's globals,
    # and its parameters' type hints would not resolve on the worker. A module function travels by reference.
    return run_monitor(model_name, source, window=window, drift_share=drift_share, retrain=retrain, policy=policy,
                       mlflow_server=mlflow_server, workspace=workspace, retrain_policy=retrain_policy)


def check_fleet(models: list[FleetModel]) -> None:
    """Refuse an empty fleet and a model listed twice (two monitors of one model would race).

    Example:
        ```python
        from prefect_mlops.blocks import DataSource
        from prefect_mlops.errors import ConfigError
        from prefect_mlops.flows.fleet import FleetModel, check_fleet
        churn = FleetModel(model_name="churn", source=DataSource(uri="churn.parquet"))
        try:
            check_fleet([churn, churn])
            raise AssertionError("a model listed twice was accepted")
        except ConfigError as exc:
            assert "['churn'] are listed more than once" in str(exc)
        ```
    """
    if not models:
        raise ConfigError("monitor-models: no models to monitor; pass at least one {model_name, source}")
    names = [m.model_name for m in models]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError(f"monitor-models: models {twice} are listed more than once; list each model once "
                          "(give it the window to watch)")


def _collect(model_name: str, future: Any) -> ModelOutcome:
    """The outcome of one submitted monitor; its failure (or its worker's death) becomes a failed outcome.

    The failure is read from the task run's final state on the Prefect API, not unpickled from the
    worker: some exceptions (pydantic's, for one) do not survive the trip, their message does.
    """
    future.wait()  # never raises: a failed task and a dead worker both end the wait
    state = future.state
    if state.is_completed():
        return future.result()
    if state.is_final():
        error = state.message or state.name
    else:  # the task never reported an end: its worker died (KilledWorker) or the cluster went away
        exc = future.wrapped_future.exception()
        error = f"{type(exc).__name__}: {exc}" if exc else f"the task run ended in state {state.name}"
    return ModelOutcome(model_name=model_name, status="failed", error=shorten(error, 2000))


def render_fleet(report: FleetReport) -> str:
    """Markdown for the Prefect UI: one row per model.

    Example:
        ```python
        from prefect_mlops.flows.fleet import FleetReport, ModelOutcome, render_fleet
        report = FleetReport(cluster="LocalCluster(2 workers)", outcomes=[
            ModelOutcome(model_name="churn", status="failed", error="DriftCheckError: no @champion")])
        assert "| churn | failed |" in render_fleet(report)
        ```
    """
    lines = [f"# Fleet: {len(report.outcomes)} models on {report.cluster}", "",
             f"{len(report.drifted)} drifted, {len(report.failed)} failed.", "",
             "| model | status | decision | drift share | retrain | worker | note |", "|---|---|---|---|---|---|---|"]
    for o in report.outcomes:
        m = o.monitor
        decision = m.decision.trigger if m and m.decision and m.decision.retrain else "no"
        lines.append(f"| {o.model_name} | {o.status} | {m.drift.decision if m else ''} | "
                     f"{f'{m.drift.drift_share:.1%}' if m else ''} | {decision if m else ''} | {o.worker or ''} | "
                     f"{(o.error or '').replace('|', '/')} |")
    return "\n".join(lines)


@flow(name="monitor-models", log_prints=True, validate_parameters=True)
def monitor_models(
    models: list[FleetModel],
    address: OptionalText = None,
    n_workers: int = 2,
    window: OptionalText = None,
    drift_share: OptionalFloat = None,
    retrain: bool = False,
    policy: ModelPolicy | None = None,
    mlflow_server: MlflowServer | None = None,
    workspace: OptionalText = None,
    retrain_policy: RetrainPolicy | None = None,
) -> FleetReport:
    """Run the drift monitor of every model in parallel on a Dask cluster; one outcome per model.

    A model that fails does not stop the others: its outcome holds the error. The run ends `Completed`
    when every model's monitor ran, `Partial` (a completed state) when some failed, `Failed` when all did.

    Args:
        models: The models to watch, each with its data source (and optionally its own window).
        address: Address of a running Dask scheduler (e.g. tcp://dask-scheduler:8786); empty: a temporary
            LocalCluster on this machine. The workers need this package and reach the same Prefect API,
            MLflow server and workspace as the flow.
        n_workers: Worker processes of the temporary LocalCluster (ignored with an address).
        window: ISO-8601 interval 'start/end' of the current data, or 'latest', for models without their own.
        drift_share: Importance-weighted share of drifted columns at which data counts as drifted; empty: the
            retrain policy's.
        retrain: Retrain a model in its monitor when its policy calls for it (see drift-monitor).
        policy: Quality-gate rules for those retrainings.
        mlflow_server: Tracking server and registry; the workspace's SQLite store when empty.
        workspace: Folder for snapshots, suites and reports, seen by every worker.
        retrain_policy: Triggers, windows, minimum rows and cool-down; the defaults when empty.
    """
    check_fleet(models)
    logger = get_run_logger()
    shared = {"drift_share": drift_share, "retrain": retrain, "policy": policy, "mlflow_server": mlflow_server,
              "workspace": workspace, "retrain_policy": retrain_policy}
    with dask_cluster(address, n_workers) as runner:
        futures = [runner.submit(monitor_model, {"model_name": m.model_name, "source": m.source,
                                                 "window": m.window or window, **shared}) for m in models]
        outcomes = [_collect(m.model_name, f) for m, f in zip(models, futures, strict=True)]
    report = FleetReport(cluster=address or f"LocalCluster({n_workers} workers)", outcomes=outcomes)
    for o in outcomes:
        if o.status == "failed":
            logger.error("monitor of %s failed: %s", o.model_name, o.error)
    create_markdown_artifact(render_fleet(report), key="fleet", description="Each model's drift monitor")
    summary = (f"{len(outcomes)} models monitored on {report.cluster}: {len(report.drifted)} drifted "
               f"{report.drifted}, {len(report.failed)} failed {report.failed}")
    logger.info(summary)
    # The UI shows a run with a failed model apart from a clean one, and a run where every model failed as failed.
    if report.failed and len(report.failed) == len(outcomes):
        return Failed(message=summary + "; " + "; ".join(f"{o.model_name}: {o.error}" for o in outcomes))
    if report.failed:
        return Completed(name="Partial", message=summary, data=report)
    return report


@flow(name="drift-check-columns", log_prints=True, validate_parameters=True)
def drift_check_columns(
    current: DatasetRef,
    reference: DatasetRef,
    model_name: ModelName,
    columns: list[str],
    columns_per_task: int = 50,
    address: OptionalText = None,
    n_workers: int = 2,
    drift_share: float = 0.5,
    importance: OptionalObject = None,
    min_rows: int = 100,
    alpha: float = 0.05,
    sample_rows: OptionalInt = None,
    workspace: OptionalText = None,
) -> DriftReport:
    """Drift of wide data: each group of `columns_per_task` columns on a Dask worker, then one decision.

    The report equals `check_drift`'s on the same snapshots (the statistics of column groups, merged,
    are those of all the columns at once; Holm correction, weights and decision are computed here).

    Args:
        current: Snapshot of the current window (from ingest).
        reference: Snapshot the model was trained on (its lineage's dataset).
        model_name: The model the check is for (names the report).
        columns: The columns to compare.
        columns_per_task: Columns per Dask task; each task streams only its own columns.
        address: Address of a running Dask scheduler; empty: a temporary LocalCluster of `n_workers` processes.
        n_workers: Worker processes of the temporary LocalCluster (ignored with an address).
        drift_share: Importance-weighted share of drifted columns at which the data counts as drifted (0-1).
        importance: Column -> weight (e.g. permutation importance); empty: equal weights.
        min_rows: Rows a side below which nothing is decided.
        alpha: Level of the Holm-corrected tests.
        sample_rows: Statistics on a seeded sample of at most this many rows a side; empty: every row.
        workspace: Folder for the HTML report, seen by every worker.
    """
    groups = column_groups(columns, columns_per_task)
    with dask_cluster(address, n_workers) as runner:
        futures = [runner.submit(drift_statistics_of, {"current": current, "reference": reference, "columns": group,
                                                       "model_name": model_name, "group": index,
                                                       "sample_rows": sample_rows})
                   for index, group in enumerate(groups)]
        per_column = {column: values for future in futures for column, values in future.result().items()}
    report = drift_report(per_column, current, reference, model_name=model_name, columns=columns,
                          drift_share=drift_share, importance=importance, min_rows=min_rows, alpha=alpha,
                          workspace=Workspace(workspace), sample_rows=sample_rows)
    get_run_logger().info("drift of %s over %d columns in %d groups: %s", model_name, len(columns), len(groups),
                          report.reason)
    return report
