"""DAG factories: continuous training and the drift monitor, the Prefect flows' branches as Airflow tasks.

Runs in Airflow's venv and imports no Prefect: every stage is a `@task.external_python` task
(`stage_task`) that runs `prefect_mlops.airflow.stages` in the project's venv, with JSON records
through XCom (references to snapshots and models, never frames). The operator resolves the MLflow
and S3 Connections when the task runs and hands them to the stage's process as environment
variables: they never enter XCom, rendered templates or logs.

Continuous training (`continuous_training_dag`), one DAG per model, one run at a time:

    plan -> prepare -> nothing new? -> skipped
                     \\-> validate -> feature_build -> train -> evaluate -> quality_gate -> rejected?
                                                                    \\-> register -> deploy -> report
                                                      (undo: register or deploy failed)

Drift (`drift_monitor_dag`): plan -> monitor (ingest, drift-check, performance-check, retrain
decision) -> emit: an event on the model's retrain Asset, with the drift share, the drifted
columns and the window in its extra, when the retrain policy calls for a retraining and no event
was emitted in the last `DEDUPE_SECONDS`. The training DAG is scheduled on that Asset.

Example:
    ```python
    from prefect_mlops.airflow.dags import continuous_training_dag, drift_monitor_dag, retrain_asset
    source = {"uri": "/data/churn.parquet", "time_column": "event_time"}
    features = {"target": "churned", "numeric": ["tenure_months"], "categorical": ["plan"]}
    trainer = {"estimator": "sklearn.linear_model.LogisticRegression", "params": {"max_iter": 300}}
    training = continuous_training_dag("churn", source, features, trainer, {"floors": {"roc_auc": 0.6}},
                                       schedule=retrain_asset("churn"))
    monitor = drift_monitor_dag("churn", source, schedule=None)
    assert training.dag_id == "churn_continuous_training" and "deploy" in training.task_ids
    ```
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from importlib.resources import files
from typing import Any

from airflow.providers.standard.decorators.external_python import _PythonExternalDecoratedOperator
from airflow.sdk import DAG, Asset, Param, TriggerRule, get_current_context, task
from airflow.sdk.bases.decorator import task_decorator_factory
from airflow.sdk.exceptions import AirflowSkipException

from prefect_mlops.airflow import (
    DEDUPE_SECONDS,
    MLFLOW_CONN,
    MLFLOW_ENV,
    PYTHON_ENV,
    PYTHON_VAR,
    S3_CONN,
    S3_ENV,
    WORKSPACE_VAR,
)

log = logging.getLogger(__name__)
JSON = dict[str, Any]
_FORM = json.loads(files("prefect_mlops.airflow").joinpath("form.json").read_text())
_TEXT_FIELDS = ("window", "suite_path", "workspace", "champion_degraded")


# ------------------------------------------------------------------------------------------- the stage operator


def _connection(conn_id: str) -> Any | None:
    from airflow.sdk import Connection
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        return Connection.get(conn_id)
    except AirflowNotFoundException:
        return None


def mlflow_settings(connection: Any) -> JSON:
    """The MLflow Connection as the MLflow Server block's fields.

    Login and password are basic auth (`mlflow server --app-name basic-auth`): the block's
    `username` and `password`. A password without a login is a bearer token (`token`). The
    credentials are read from login and password only, which Airflow encrypts and masks: a
    `username`, `password` or `token` in the extra is an error rather than silently unused.

    Example:
        ```python
        from types import SimpleNamespace
        from prefect_mlops.airflow.dags import mlflow_settings
        conn = SimpleNamespace(host="mlflow", port=5000, schema=None, login="admin", password="pw",
                               extra_dejson={"experiment": "churn"})
        found = mlflow_settings(conn)
        assert found["username"] == "admin" and found["password"] == "pw" and found["token"] is None
        assert mlflow_settings(SimpleNamespace(**{**vars(conn), "login": None}))["token"] == "pw"
        assert found["tracking_uri"] == "http://mlflow:5000"
        ```
    """
    extra = connection.extra_dejson or {}
    misplaced = sorted({"username", "password", "token"} & set(extra))
    if misplaced:
        raise ValueError(f"Airflow Connection {MLFLOW_CONN!r}: {', '.join(misplaced)} found in its extra; put the "
                         "user in the Connection's login and the password (or, without a login, the bearer token) "
                         "in its password field, where Airflow encrypts and masks it")
    uri = extra.get("tracking_uri")
    if not uri and connection.host:
        uri = f"{connection.schema or 'http'}://{connection.host}" + (f":{connection.port}" if connection.port
                                                                      else "")
    login, password = connection.login or None, connection.password or None
    return {"tracking_uri": uri, "username": login, "password": password if login else None,
            "token": None if login else password,
            **{k: extra.get(k) for k in ("registry_uri", "experiment", "artifact_location")}}


def connection_env() -> dict[str, str]:
    """The MLflow and S3 Connections as the environment of a stage's process (empty when not set)."""
    env: dict[str, str] = {}
    mlflow = _connection(MLFLOW_CONN)
    if mlflow is not None:
        env[MLFLOW_ENV] = json.dumps(mlflow_settings(mlflow))
    s3 = _connection(S3_CONN)
    if s3 is not None:
        extra = s3.extra_dejson or {}
        env[S3_ENV] = json.dumps({"s3_endpoint_url": extra.get("endpoint_url") or s3.host or None,
                                  "aws_access_key_id": s3.login or None,
                                  "aws_secret_access_key": s3.password or None,
                                  "region_name": extra.get("region_name")})
    return env


def project_python(configured: str | None) -> str:
    """The project venv's interpreter: the task's, else Variable `prefect_mlops_python`, else $PREFECT_MLOPS_PYTHON."""
    from airflow.sdk import Variable

    found = configured or Variable.get(PYTHON_VAR, default=None) or os.environ.get(PYTHON_ENV)
    if not found:
        raise ValueError(f"no Python for the prefect-mlops stages: set the Airflow Variable {PYTHON_VAR!r} (or "
                         f"${PYTHON_ENV}) to the interpreter of the venv where prefect-mlops is installed, e.g. "
                         "/opt/prefect-mlops/.venv/bin/python")
    return found


class StageOperator(_PythonExternalDecoratedOperator):
    """`@task.external_python` whose process gets the Connections as environment variables, never as arguments."""

    custom_operator_name = "@stage_task"

    def __init__(self, *, python: str | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("expect_airflow", False)  # the project's venv holds no Airflow
        kwargs.setdefault("expect_pendulum", False)
        # Rendered when the task runs (so the UI shows it); `execute` falls back to $PREFECT_MLOPS_PYTHON.
        super().__init__(python=python or f"{{{{ var.value.get('{PYTHON_VAR}', '') }}}}", **kwargs)

    def execute(self, context: Any) -> Any:
        self.python = project_python(self.python)
        self.env_vars = {**(self.env_vars or {}), **connection_env()}
        return super().execute(context)


def stage_task(python_callable: Callable | None = None, **kwargs: Any) -> Any:
    """A TaskFlow decorator: the function runs in the project's venv (see `StageOperator`)."""
    return task_decorator_factory(python_callable=python_callable, decorated_operator_class=StageOperator,
                                  **kwargs)


def call_stage(stage: str, records: dict) -> object:
    """Run `stage` with its records; Airflow copies this function's source into a process of the project's venv."""
    import importlib

    # Imported by name: this line runs in the project's venv, never in Airflow's (import-linter checks the rest).
    return importlib.import_module("prefect_mlops.airflow.stages").run(stage, **records)


def _stage(name: str, python: str | None, **kwargs: Any) -> Any:
    return stage_task(call_stage, task_id=name, python=python, **kwargs)


# ------------------------------------------------------------------------------------------------- the forms


def retrain_asset(model_name: str) -> Asset:
    """The Asset whose events retrain `model_name`: the drift DAG emits them, the training DAG is scheduled on it."""
    return Asset(name=f"prefect_mlops.retrain.{model_name}", uri=f"x-prefect-mlops://models/{model_name}/retrain",
                 group="prefect-mlops")


def form(flow: str, defaults: JSON) -> dict[str, Param]:
    """Typed Params with the Prefect form's fields and descriptions (`form.json`), defaults from the factory."""
    params = {}
    for name, schema in _FORM[flow].items():
        spec = {k: v for k, v in schema.items() if k not in ("default", "description")}
        default = defaults.get(name, schema.get("default"))
        params[name] = Param(default, description=schema.get("description"), **spec)
    return params


def _plan(model_name: str, context: Any) -> JSON:
    """This run's settings: the Params, the retrain event's facts, the Variables; nothing secret."""
    from airflow.sdk import Variable

    plan: JSON = {k: v for k, v in dict(context["params"]).items()}
    for name in _TEXT_FIELDS:  # an emptied form field is None, as in Prefect's form
        if plan.get(name) == "":
            plan[name] = None
    plan["model_name"] = model_name
    plan["workspace"] = plan.get("workspace") or Variable.get(WORKSPACE_VAR, default=None)
    run = context["dag_run"]
    plan["run"] = f"airflow:{run.dag_id}/{run.run_id}"
    run_type = str(getattr(run.run_type, "value", run.run_type))
    if run_type == "scheduled":
        plan["trigger"] = "schedule"
    events = [e for events in (context.get("triggering_asset_events") or {}).values() for e in events]
    if run_type == "asset_triggered" and events:
        extra = dict(max(events, key=lambda e: e.timestamp).extra or {})
        plan.update(window=extra.get("training_window") or extra.get("window"), max_rows=extra.get("max_rows"),
                    champion_degraded=extra.get("champion_degraded") or None,
                    trigger=extra.get("trigger") or "drift",
                    trigger_details={k: extra.get(k) for k in ("drift_share", "drifted_columns", "window",
                                                               "event_id") if extra.get(k) is not None})
    return plan


def _plan_task(model_name: str) -> Any:
    """The `plan` task of the DAG being defined: its output is every stage's `plan` record."""

    @task(task_id="plan")
    def plan_run() -> JSON:
        return _plan(model_name, get_current_context())

    return plan_run()


def _model_dag(model_name: str, flow: str, defaults: JSON, *, dag_id: str | None, schedule: Any,
               start_date: datetime | None, tags: list[str] | None, doc_md: str | None, description: str) -> DAG:
    """A DAG of one model with `flow`'s manual-run form; one run at a time, no catch-up of missed runs."""
    return DAG(
        dag_id=dag_id or f"{model_name}_{flow}",
        description=description,
        schedule=schedule,
        start_date=start_date or datetime(2024, 1, 1, tzinfo=timezone.utc),
        catchup=False,
        # One run of a model at a time: never two promotions racing; one retraining per burst of drift events.
        max_active_runs=1,
        params=form(flow, defaults),
        tags=tags or ["prefect-mlops", f"model:{model_name}"],
        doc_md=doc_md,
    )


def _report(model_name: str, outcome: str, message: str, **facts: Any) -> JSON:
    """The run's outcome in the shape of the flow's `CycleReport`."""
    log.info("%s: %s", outcome, message)
    return {"model_name": model_name, "outcome": outcome, "message": message, **facts}


# ----------------------------------------------------------------------------------------------- the factories


def continuous_training_dag(
    model_name: str,
    source: JSON,
    features: JSON,
    trainer: JSON | None = None,
    policy: JSON | None = None,
    schedule: Any = None,
    *,
    retrain_policy: JSON | None = None,
    dag_id: str | None = None,
    python: str | None = None,
    train_queue: str | None = None,
    train_pool: str | None = None,
    start_date: datetime | None = None,
    tags: list[str] | None = None,
) -> DAG:
    """Continuous training of `model_name` as a DAG: the branches of the Prefect flow `continuous-training`.

    `source`, `features`, `trainer`, `policy` and `retrain_policy` are the flow's parameters as
    JSON (the Data Source without endpoint and keys: those are the S3 Connection's); they are the
    defaults of the manual-run form. `schedule`: a cron, `retrain_asset(model_name)`, both
    (`AssetOrTimeSchedule`) or None. The train task goes to `train_queue` (default: the trainer's
    compute `label`, e.g. `gpu`) and `train_pool`: the Airflow analogue of the GPU work pool.
    `python`: the project venv's interpreter (default: Variable `prefect_mlops_python`).
    """
    trainer = trainer or {}
    label = trainer.get("label")
    queue = train_queue or label
    defaults = {"source": source, "features": features, "trainer": trainer, "policy": policy,
                "retrain_policy": retrain_policy}
    with _model_dag(model_name, "continuous_training", defaults, dag_id=dag_id, schedule=schedule,
                    start_date=start_date, tags=tags, doc_md=continuous_training_dag.__doc__,
                    description=f"Continuous training of {model_name}: the quality gate decides on promotion.",
                    ) as dag:

        @task.branch(task_id="anything_new")
        def anything_new(prepared: JSON) -> str:
            return "skipped" if prepared["skip"] else "validate"

        @task(task_id="skipped")
        def skipped(prepared: JSON) -> JSON:
            return _report(model_name, "skipped", prepared["skip"], window=prepared["window"],
                           data_fingerprint=prepared["dataset"]["fingerprint"],
                           champion_version=prepared["champion_version"])

        @task.branch(task_id="gate_passed")
        def gate_passed(verdict: JSON) -> str:
            return "register" if verdict["passed"] else "rejected"

        @task(task_id="rejected")
        def rejected(prepared: JSON, evaluation: JSON, verdict: JSON) -> JSON:
            message = f"gate rejected the challenger of {model_name!r}: " + "; ".join(verdict["reasons"])
            return _report(model_name, "rejected", message, **_metrics(prepared, evaluation, verdict))

        @task(task_id="promoted")
        def promoted(prepared: JSON, evaluation: JSON, verdict: JSON, registered: JSON, promotion: JSON) -> JSON:
            facts = _metrics(prepared, evaluation, verdict)
            if promotion.get("trial"):
                message = (f"{model_name} v{registered['model']['version']} on trial as @{promotion['trial']} "
                           f"beside champion v{promotion['champion_version']}: {verdict['main_reason']}")
                return _report(model_name, "on-trial", message, **facts,
                               challenger_version=registered["model"]["version"])
            message = f"{model_name} v{promotion['champion_version']} promoted to champion: {verdict['main_reason']}"
            return _report(model_name, "promoted", message, **{**facts, "champion_version":
                           promotion["champion_version"]}, challenger_version=registered["model"]["version"])

        def stage(name: str, **records: Any) -> Any:
            """A stage task in the project's venv; `records` are the XComs it reads."""
            options = {"queue": queue or "default", "pool": train_pool or "default_pool"} if name == "train" else {}
            if name == "undo":  # register and deploy are undone on failure: the version goes, aliases settle
                options["trigger_rule"] = TriggerRule.ONE_FAILED
            return _stage(name, python, **options)(stage=name, records=records)

        plan = _plan_task(model_name)
        prepared = stage("prepare", plan=plan)
        branch = anything_new(prepared)
        branch >> skipped(prepared)
        validation = stage("validate", plan=plan, prepared=prepared)
        branch >> validation
        built = stage("feature_build", plan=plan, prepared=prepared)
        validation >> built
        trained = stage("train", plan=plan, prepared=prepared, validation=validation, features=built)
        evaluation = stage("evaluate", plan=plan, prepared=prepared, features=built, trained=trained)
        verdict = stage("quality_gate", plan=plan, evaluation=evaluation)
        gate = gate_passed(verdict)
        gate >> rejected(prepared, evaluation, verdict)
        registered = stage("register", plan=plan, features=built, trained=trained, evaluation=evaluation,
                           verdict=verdict)
        gate >> registered
        promotion = stage("deploy", plan=plan, prepared=prepared, validation=validation, registered=registered,
                          verdict=verdict)
        promotion >> stage("undo", plan=plan, registered=registered)
        promoted(prepared, evaluation, verdict, registered, promotion)
    return dag


def _metrics(prepared: JSON, evaluation: JSON, verdict: JSON) -> JSON:
    metric = evaluation["primary_metric"]
    champion = evaluation.get("champion")
    return {"window": prepared["window"], "data_fingerprint": prepared["dataset"]["fingerprint"],
            "champion_version": prepared["champion_version"] if champion is None else champion["version"],
            "primary_metric": metric, "challenger_metric": evaluation["challenger"]["overall"][metric],
            "champion_metric": champion["overall"][metric] if champion else None,
            "gate_reason": verdict["main_reason"]}


def drift_monitor_dag(
    model_name: str,
    source: JSON,
    policy: JSON | None = None,
    retrain_policy: JSON | None = None,
    schedule: Any = timedelta(hours=6),
    *,
    dag_id: str | None = None,
    python: str | None = None,
    dedupe_seconds: int = DEDUPE_SECONDS,
    start_date: datetime | None = None,
    tags: list[str] | None = None,
) -> DAG:
    """The drift monitor of `model_name`: when the retrain policy says so, one event on `retrain_asset(model_name)`.

    The event's extra holds the drift share, the drifted columns, the window judged and the
    training window; the training DAG scheduled on the Asset reads them. A second event within
    `dedupe_seconds` of the last one is not emitted (the Prefect trigger's `within`).
    """
    asset = retrain_asset(model_name)
    defaults = {"source": source, "policy": policy, "retrain_policy": retrain_policy}
    with _model_dag(model_name, "drift_monitor", defaults, dag_id=dag_id, schedule=schedule, start_date=start_date,
                    tags=tags, doc_md=drift_monitor_dag.__doc__, description=f"Compares the latest data of "
                    f"{model_name} with its champion's; retrains through an Asset.") as dag:

        @task(task_id="emit", inlets=[asset], outlets=[asset])
        def emit(found: JSON) -> JSON:
            context = get_current_context()
            decision, drift = found["decision"], found["drift"]
            if not decision["retrain"]:
                raise AirflowSkipException(f"{model_name}: no retraining: "
                                           + ("; ".join(decision["reasons"]) or "nothing to judge"))
            earlier = list(context["inlet_events"][asset])
            if earlier:
                last = max(e.timestamp for e in earlier)
                age = (datetime.now(timezone.utc) - last).total_seconds()
                if age < dedupe_seconds:
                    raise AirflowSkipException(
                        f"{model_name}: a retraining event was emitted {age:.0f} s ago, within the {dedupe_seconds} s "
                        "dedupe window: one retraining per burst")
            extra = {"model_name": model_name, "trigger": decision["trigger"], "window": found["window"] or "latest",
                     "training_window": decision["training_window"] or "latest", "max_rows": decision["max_rows"],
                     "champion_degraded": decision["champion_degraded"] or "",
                     "drift_share": drift["drift_share"], "drifted_columns": drift["drifted_columns"],
                     "champion_version": found["champion_version"], "reasons": decision["reasons"]}
            context["outlet_events"][asset].extra = extra
            log.warning("%s: retrain (%s) on %s: %s", model_name, decision["trigger"],
                        decision["training_window"] or "all rows", "; ".join(decision["reasons"]))
            return extra

        plan = _plan_task(model_name)
        found = _stage("monitor", python)(stage="monitor", records={"plan": plan})
        emit(found)
    return dag
