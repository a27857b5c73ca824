"""The lifecycle stages as Airflow runs them: JSON records in, JSON records out, in the project's venv.

Airflow's `@task.external_python` runs each stage here, in the environment that holds Prefect,
MLflow, GX and Evidently (Airflow's own pins cannot share one; DEVELOPERS.md says why). Each
function calls the same plain stage functions the Prefect flows call, with the same records,
and returns them as JSON: references to snapshots and models, never frames. The MLflow tracking
URI and credentials and the S3 endpoint and keys come from the Airflow Connections, which the task
operator hands over as environment variables (`MLFLOW_ENV`, `S3_ENV`): never through XCom. A stage
takes them out of its environment before it runs (`connection`), so no child process inherits them.

The continuous-training DAG's order is the flow's (`prefect_mlops.flows.continuous_training`):
prepare (settle, ingest, skip?) -> validate -> feature-build -> train -> evaluate -> gate ->
register (refit, register) -> deploy, and `undo` takes a registration back when a later stage
failed. One DAG run per model at a time (`max_active_runs=1`) stands in for the model's lock.

Example:
    ```python
    from prefect_mlops.airflow.stages import STAGES
    assert {"prepare", "validate", "feature_build", "train", "evaluate", "quality_gate", "register",
            "deploy", "undo", "monitor"} <= set(STAGES)
    ```
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable
from typing import Any

from prefect_mlops.airflow import MLFLOW_ENV, S3_ENV

JSON = dict[str, Any]
_CONNECTIONS: dict[str, JSON] = {}  # the Connections handed over, once taken out of the environment


def connection(variable: str) -> JSON:
    """The Connection handed over in environment variable `variable` (`MLFLOW_ENV`, `S3_ENV`); {} when none.

    The variable is removed from the environment when read (its settings are kept in this
    process): it holds passwords and keys, which no child process of a stage should inherit.
    Set again, it is read again.

    Example:
        ```python
        import os
        from prefect_mlops.airflow import S3_ENV
        from prefect_mlops.airflow.stages import connection
        os.environ[S3_ENV] = '{"region_name": "eu-west-1"}'
        assert connection(S3_ENV) == {"region_name": "eu-west-1"} and S3_ENV not in os.environ
        assert connection(S3_ENV) == {"region_name": "eu-west-1"}
        ```
    """
    handed = os.environ.pop(variable, None)
    if handed is not None:
        _CONNECTIONS[variable] = {k: v for k, v in json.loads(handed or "{}").items() if v not in (None, "")}
    return dict(_CONNECTIONS.get(variable, {}))


def _server(plan: JSON) -> Any:
    """The MLflow Server in force: the Connection's (from the environment), else the workspace's store."""
    from prefect_mlops.blocks import MlflowServer

    return MlflowServer(**connection(MLFLOW_ENV))


def _source(plan: JSON) -> Any:
    """The Data Source: the plan's uri, format and time column; endpoint and keys from the S3 Connection."""
    from prefect_mlops.blocks import DataSource

    return DataSource(**{**plan["source"], **connection(S3_ENV)})


def _workspace(plan: JSON) -> Any:
    from prefect_mlops.workspace import Workspace

    return Workspace(plan.get("workspace") or None)


def _policy(plan: JSON) -> Any:
    from prefect_mlops.blocks import ModelPolicy

    return ModelPolicy(**(plan.get("policy") or {}))


def _retrain_policy(plan: JSON) -> Any:
    from prefect_mlops.blocks import RetrainPolicy

    return RetrainPolicy(**(plan.get("retrain_policy") or {}))


def _dump(record: Any) -> Any:
    return None if record is None else record.model_dump(mode="json")


def prepare(plan: JSON) -> JSON:
    """Check the recipe, settle what a killed run left, ingest, and say whether there is anything to train on."""
    from prefect_mlops.refs import Window
    from prefect_mlops.tasks.features import FeatureSpec, check_columns
    from prefect_mlops.tasks.ingest import ingest_dataset
    from prefect_mlops.tasks.lineage import TrainerSpec, find_model, recipe_digest
    from prefect_mlops.tasks.reconcile import reconcile_registry
    from prefect_mlops.tasks.retrain import why_untrainable
    from prefect_mlops.tasks.train import budget_change

    name, server, ws = plan["model_name"], _server(plan), _workspace(plan)
    features, trainer, policy = FeatureSpec(**plan["features"]), TrainerSpec(**plan["trainer"]), _policy(plan)
    policy.check_metrics(features.task)  # a bad policy fails before any work starts
    trainer.check(features.task)
    parsed = Window.parse(plan.get("window"))
    window = str(parsed) if parsed else None
    # One DAG run of a model at a time (max_active_runs=1) holds the place of the Prefect lock.
    reconcile_registry(name, mlflow_server=server, workspace=ws, lock=False)
    dataset = ingest_dataset(_source(plan), name=name, window=window, workspace=ws, max_rows=plan.get("max_rows"))
    champion = find_model(name, mlflow_server=server, workspace=ws)
    made_by = champion.lineage if champion else None
    skip = None
    same = made_by and not plan.get("force") and made_by.dataset.fingerprint == dataset.fingerprint \
        and made_by.params_digest == recipe_digest(features, trainer)
    # Same data and recipe, but a champion fit on a sample is fit again when the budget now allows more rows.
    if same and not budget_change(made_by.training, _retrain_policy(plan).training_budget, trainer, dataset,
                                  features):
        skip = (f"nothing new to train on: champion v{champion.model.version} was trained on the same data "
                f"({dataset.short()}) with the same parameters; pass force=True to retrain anyway")
    else:
        check_columns(dataset, features)  # a missing target is named as such, before any expectation runs
        skip = why_untrainable(dataset, features, min_rows=_retrain_policy(plan).min_training_rows)
    return {"window": window, "dataset": _dump(dataset), "skip": skip,
            "champion_version": champion.model.version if champion else None}


def validate(plan: JSON, prepared: JSON) -> JSON:
    """The data contract and profile (GX): fails the task, naming every broken expectation, unless warn_only."""
    from prefect_mlops.errors import DataValidationError
    from prefect_mlops.refs import DatasetRef
    from prefect_mlops.tasks.validate import describe_failures, validate_dataset

    dataset = DatasetRef(**prepared["dataset"])
    report = validate_dataset(dataset, suite_path=plan.get("suite_path") or None, warn_only=True,
                              workspace=_workspace(plan))
    if not report.passed:
        if not plan.get("warn_only"):
            raise DataValidationError(describe_failures(report))
        logging.getLogger("prefect_mlops").warning(describe_failures(report))
    return {"suite_path": report.suite_path, "passed": report.passed,
            "failures": len(report.failures), "profile_deviations": len(report.profile_deviations)}


def feature_build(plan: JSON, prepared: JSON) -> JSON:
    """Check the feature columns and choose the hold-out rows."""
    from prefect_mlops.refs import DatasetRef
    from prefect_mlops.tasks.features import FeatureSpec, build_feature_set

    return _dump(build_feature_set(DatasetRef(**prepared["dataset"]), FeatureSpec(**plan["features"]),
                                   workspace=_workspace(plan)))


def train(plan: JSON, prepared: JSON, validation: JSON, features: JSON) -> JSON:
    """Fit and log a challenger with its lineage; the DAG sends this task to the trainer's queue and pool."""
    from prefect_mlops import __version__
    from prefect_mlops.tasks.features import FeatureSet
    from prefect_mlops.tasks.lineage import Lineage, TrainerSpec, recipe_digest
    from prefect_mlops.tasks.train import git_commit, package_versions, train_model

    feature_set, trainer = FeatureSet(**features), TrainerSpec(**plan["trainer"])
    facts: JSON = {}
    if "trigger" in Lineage.model_fields:  # what started the run, recorded with the version
        facts["trigger"] = {"kind": plan.get("trigger", "manual"), "airflow_run": plan.get("run"),
                            **(plan.get("trigger_details") or {})}
    lineage = Lineage(model_name=plan["model_name"], dataset=feature_set.dataset, features=feature_set.spec,
                      trainer=trainer, params_digest=recipe_digest(feature_set.spec, trainer),
                      suite_path=validation["suite_path"], code_version=__version__, git_commit=git_commit(),
                      packages=package_versions(), flow_run_id=plan.get("run"), **facts)
    trained = train_model(feature_set, trainer, lineage=lineage, mlflow_server=_server(plan),
                          workspace=_workspace(plan), budget=_retrain_policy(plan).training_budget)
    return _dump(trained)


def evaluate(plan: JSON, prepared: JSON, features: JSON, trained: JSON) -> JSON:
    """Score challenger and champion on the hold-out and log the challenger's reference metrics."""
    from prefect_mlops.tasks.evaluate import evaluate_models, record_evaluation
    from prefect_mlops.tasks.features import FeatureSet
    from prefect_mlops.tasks.lineage import find_model
    from prefect_mlops.tasks.retrain import record_retraining
    from prefect_mlops.tasks.train import TrainedModel

    server, ws = _server(plan), _workspace(plan)
    model, challenger = plan["model_name"], TrainedModel(**trained)
    if plan.get("trigger") in ("drift", "performance"):  # a signal's retraining starts the cool-down
        record_retraining(model, prepared["window"], mlflow_server=server, workspace=ws)
    # The champion may have moved while this run trained: compare against the one in place now.
    champion = find_model(model, mlflow_server=server, workspace=ws)
    evaluation = evaluate_models(challenger, FeatureSet(**features), champion=champion, policy=_policy(plan),
                                 mlflow_server=server, workspace=ws,
                                 champion_degraded=plan.get("champion_degraded") or None)
    record_evaluation(challenger, evaluation, mlflow_server=server, workspace=ws)
    return _dump(evaluation)


def quality_gate(plan: JSON, evaluation: JSON) -> JSON:
    """The gate's verdict, with its reasons."""
    from prefect_mlops.tasks.evaluate import Evaluation
    from prefect_mlops.tasks.gate import judge

    verdict = judge(Evaluation(**evaluation), _policy(plan))
    return {**_dump(verdict), "reasons": verdict.reasons, "main_reason": verdict.main_reason}


def _verdict(verdict: JSON) -> Any:
    from prefect_mlops.tasks.gate import GateVerdict

    return GateVerdict(**{k: v for k, v in verdict.items() if k not in ("reasons", "main_reason")})


def register(plan: JSON, features: JSON, trained: JSON, evaluation: JSON, verdict: JSON) -> JSON:
    """Refit a passed challenger on its whole window (the retrain policy's), then register it as `@challenger`."""
    from prefect_mlops.tasks.evaluate import Evaluation
    from prefect_mlops.tasks.features import FeatureSet
    from prefect_mlops.tasks.register import register_version
    from prefect_mlops.tasks.train import TrainedModel, refit_challenger

    server, ws = _server(plan), _workspace(plan)
    challenger, judged = TrainedModel(**trained), Evaluation(**evaluation)
    if _retrain_policy(plan).refit_full_window and challenger.lineage.trainer.kind == "sklearn":
        challenger, smoke = refit_challenger(challenger, FeatureSet(**features), judged.smoke_sample_uri,
                                             mlflow_server=server, workspace=ws)
        judged = judged.model_copy(update={"smoke_sample_uri": smoke})
    model = register_version(challenger, _verdict(verdict), judged, mlflow_server=server, workspace=ws)
    return {"model": _dump(model), "evaluation": _dump(judged)}


def deploy(plan: JSON, prepared: JSON, validation: JSON, registered: JSON, verdict: JSON) -> JSON:
    """Smoke-test and promote (or put on trial, per the policy's strategy); the suite follows a new champion."""
    from prefect_mlops.refs import DatasetRef, ModelRef
    from prefect_mlops.tasks.deploy import promote
    from prefect_mlops.tasks.evaluate import Evaluation
    from prefect_mlops.tasks.validate import evolve_suite

    server, ws = _server(plan), _workspace(plan)
    model, evaluation, gate = ModelRef(**registered["model"]), Evaluation(**registered["evaluation"]), \
        _verdict(verdict)
    strategy = getattr(_policy(plan), "deploy_strategy", "direct")
    if strategy != "direct":
        from prefect_mlops.tasks.rollout import start_trial

        promotion = start_trial(model, evaluation, gate, strategy=strategy, mlflow_server=server, workspace=ws)
        return {**_dump(promotion), "suite": None}
    promotion = promote(model, evaluation, gate, mlflow_server=server, workspace=ws)
    suite = evolve_suite(validation["suite_path"], DatasetRef(**prepared["dataset"]),
                         version=promotion.champion_version, workspace=ws)
    return {**_dump(promotion), "suite": suite.reason}


def undo(plan: JSON, registered: JSON | None) -> JSON:
    """After register or deploy failed: take out the version this run registered and settle the aliases."""
    from prefect_mlops.refs import ModelRef
    from prefect_mlops.tasks.reconcile import reconcile_registry
    from prefect_mlops.tasks.register import unregister_version

    server, ws = _server(plan), _workspace(plan)
    left = "nothing was registered"
    if registered and registered.get("model"):
        left = unregister_version(ModelRef(**registered["model"]), server, ws, reason="rolled back: deploy failed")
    settled = reconcile_registry(plan["model_name"], mlflow_server=server, workspace=ws, lock=False)
    return {"registration": left, "registry": settled.summary()}


def monitor(plan: JSON) -> JSON:
    """The drift monitor's checks: drift and performance of the current window, and the retrain decision."""
    from prefect_mlops.errors import DriftCheckError
    from prefect_mlops.refs import Window
    from prefect_mlops.tasks.drift import check_drift
    from prefect_mlops.tasks.ingest import ingest_dataset
    from prefect_mlops.tasks.lineage import find_model, read_importance
    from prefect_mlops.tasks.performance import check_performance
    from prefect_mlops.tasks.retrain import decide_retraining, monitoring_window, read_retrained_through

    name, server, ws = plan["model_name"], _server(plan), _workspace(plan)
    retrain_policy = _retrain_policy(plan)
    drift_share = plan.get("drift_share") or retrain_policy.drift_share
    parsed = Window.parse(plan.get("window"))
    window = str(parsed) if parsed else None
    champion = find_model(name, mlflow_server=server, workspace=ws)
    if champion is None or champion.lineage is None:
        raise DriftCheckError(f"model {name!r} has no @champion with lineage to compare against; "
                              "run continuous training first")
    recipe, source = champion.lineage, _source(plan)
    current = ingest_dataset(source, name=f"{name}-current", window=window, workspace=ws)
    wider = monitoring_window(window, champion, current.rows, policy=retrain_policy)
    if wider:  # too few rows to judge: every row the champion has not seen
        current = ingest_dataset(source, name=f"{name}-current", window=wider, workspace=ws)
    importance = read_importance(champion, mlflow_server=server, workspace=ws)
    drift = check_drift(current, recipe.dataset, model_name=name, columns=recipe.features.feature_columns,
                        drift_share=drift_share, importance=importance, min_rows=retrain_policy.min_rows,
                        alpha=retrain_policy.alpha, workspace=ws, report=plan.get("report") or "drifted")
    performance = check_performance(current, champion, policy=_policy(plan), retrain_policy=retrain_policy,
                                    mlflow_server=server, workspace=ws)
    decision = decide_retraining(model_name=name, champion=champion, window=window, policy=retrain_policy,
                                 drift=drift, performance=performance,
                                 retrained_through=read_retrained_through(server.client(ws), name))
    return {"window": window, "champion_version": champion.model.version, "drift": _dump(drift),
            "performance": _dump(performance), "decision": _dump(decision),
            "recipe": {"features": recipe.features.model_dump(mode="json"),
                       "trainer": recipe.trainer.model_dump(mode="json"), "suite_path": recipe.suite_path}}


STAGES: dict[str, Callable[..., Any]] = {
    f.__name__: f for f in (prepare, validate, feature_build, train, evaluate, quality_gate, register, deploy,
                            undo, monitor)}


def run(stage: str, **records: Any) -> Any:
    """Run one stage with its JSON records (what the Airflow task calls in this venv)."""
    if stage not in STAGES:
        raise KeyError(f"unknown stage {stage!r}; expected one of {sorted(STAGES)}")
    for variable in (MLFLOW_ENV, S3_ENV):  # out of the environment before anything can start a child process
        connection(variable)
    logging.basicConfig(stream=sys.stdout, level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from prefect_mlops.log import install_line_limit

    install_line_limit()
    return json.loads(json.dumps(STAGES[stage](**records), default=str))


# ------------------------------------------------------------------ the manual-run form, from the flows' own schema

# Parameters that Airflow takes elsewhere: the DAG is one model's; the MLflow server and the source's
# endpoint and keys are Connections (never a form field, so never in a run's conf).
# `retrain`: the drift DAG never retrains in its own run; its Asset event schedules the retraining DAG.
_NOT_PARAMS = {"model_name", "mlflow_server", "retrain"}
_SOURCE_FIELDS = ("uri", "format", "time_column")
_BLOCK_KEYS = ("block_type_slug", "block_schema_references", "secret_fields", "position")
FORM_FILE = "form.json"


def _inline(node: Any, definitions: dict[str, Any]) -> Any:
    """`node` with every `$ref` replaced by its definition, Prefect's Block keys left out."""
    if isinstance(node, list):
        return [_inline(item, definitions) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        return _inline({**definitions[node["$ref"].rsplit("/", 1)[-1]],
                        **{k: v for k, v in node.items() if k != "$ref"}}, definitions)
    found = {k: _inline(v, definitions) for k, v in node.items() if k not in _BLOCK_KEYS}
    if "default" in found and found["default"] is None and isinstance(found.get("type"), str):
        found["type"] = [found["type"], "null"]  # empty is a value: Airflow validates defaults and nested fields
    return found


def _param(spec: dict[str, Any], definitions: dict[str, Any]) -> dict[str, Any]:
    """A flow parameter's schema as an Airflow Param's: an optional model becomes `type: [object, null]`."""
    options = spec.get("anyOf")
    if options and any("$ref" in o for o in options):
        model = next(o for o in options if "$ref" in o)
        nullable = any(o.get("type") == "null" for o in options)
        inner = _inline(model, definitions)
        rest = {k: v for k, v in spec.items() if k != "anyOf"}
        return _inline({**inner, **rest, "type": ["object", "null"] if nullable else "object"}, definitions)
    return _inline(spec, definitions)


def form_schema() -> dict[str, Any]:
    """The Airflow Params' schemas, from the Prefect flows' parameter schemas (the forms in Prefect's UI).

    Same fields, types, enums, defaults and descriptions; the source keeps its uri, format and time
    column (its endpoint and keys are the S3 Connection's), and the MLflow server is a Connection.
    `python -m prefect_mlops.airflow.stages form` writes it to `form.json`, which the DAGs read
    (Airflow's venv cannot import the flows); tests check the file is current.
    """
    from prefect_mlops.flows import continuous_training, drift_monitor

    forms: dict[str, Any] = {}
    for key, flow in (("continuous_training", continuous_training), ("drift_monitor", drift_monitor)):
        schema = flow.parameters.model_dump()
        definitions = schema.get("definitions", {})
        params: dict[str, Any] = {}
        for name, spec in sorted(schema["properties"].items(), key=lambda item: item[1].get("position", 0)):
            if name in _NOT_PARAMS:
                continue
            param = _param(spec, definitions)
            if name == "source":
                param["properties"] = {k: v for k, v in param["properties"].items() if k in _SOURCE_FIELDS}
                param["description"] += (" Here: its uri, format and time column; the endpoint and keys come "
                                         "from the Airflow Connection prefect_mlops_s3.")
                param["additionalProperties"] = False
            params[name] = param
        forms[key] = params
    return forms


def write_form(path: str | None = None) -> str:
    """Write `form_schema()` as JSON next to this module (or to `path`); returns the path."""
    from pathlib import Path

    target = Path(path) if path else Path(__file__).with_name(FORM_FILE)
    target.write_text(json.dumps(form_schema(), indent=1) + "\n")
    return str(target)


if __name__ == "__main__":  # python -m prefect_mlops.airflow.stages form
    if sys.argv[1:] != ["form"]:
        sys.exit("usage: python -m prefect_mlops.airflow.stages form  (rewrites form.json from the flows)")
    print(write_form())  # noqa: T201
