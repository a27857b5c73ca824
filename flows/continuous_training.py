"""Continuous training: ingest -> validate -> feature-build -> train -> evaluate -> gate -> register -> deploy."""

from __future__ import annotations

from typing import Literal

from prefect import flow, get_run_logger
from prefect.states import Completed
from prefect.transactions import transaction
from pydantic import BaseModel

from prefect_mlops import __version__
from prefect_mlops.blocks import DataSource, MlflowServer, ModelPolicy, RetrainPolicy
from prefect_mlops.refs import ModelName, OptionalInt, OptionalObject, OptionalText, Window
from prefect_mlops.tasks.deploy import deploy
from prefect_mlops.tasks.evaluate import evaluate
from prefect_mlops.tasks.features import FeatureSpec, check_columns, feature_build
from prefect_mlops.tasks.gate import quality_gate
from prefect_mlops.tasks.ingest import ingest
from prefect_mlops.tasks.lineage import Lineage, TrainerSpec, describe_trigger, find_champion, recipe_digest
from prefect_mlops.tasks.reconcile import model_lock, reconcile
from prefect_mlops.tasks.register import register
from prefect_mlops.tasks.retrain import record_retraining, why_untrainable
from prefect_mlops.tasks.route import train_on_route
from prefect_mlops.tasks.train import budget_change, git_commit, package_versions, refit, start_model_files, train
from prefect_mlops.tasks.validate import learn_suite_ahead, update_suite, validate


class CycleReport(BaseModel):
    """What one continuous-training run did, in a person's words."""

    model_name: str
    outcome: Literal["promoted", "on-trial", "rejected", "skipped"]
    message: str
    window: str | None = None
    data_fingerprint: str
    champion_version: str | None = None
    challenger_version: str | None = None
    primary_metric: str | None = None
    challenger_metric: float | None = None
    champion_metric: float | None = None
    gate_reason: str | None = None


@flow(name="continuous-training", log_prints=True, validate_parameters=True)
def continuous_training(
    model_name: ModelName,
    source: DataSource,
    features: FeatureSpec,
    trainer: TrainerSpec = TrainerSpec(),
    policy: ModelPolicy | None = None,
    window: OptionalText = None,
    suite_path: OptionalText = None,
    warn_only: bool = False,
    force: bool = False,
    mlflow_server: MlflowServer | None = None,
    workspace: OptionalText = None,
    retrain_policy: RetrainPolicy | None = None,
    max_rows: OptionalInt = None,
    champion_degraded: OptionalText = None,
    trigger: Literal["manual", "drift", "performance", "schedule"] = "manual",
    trigger_details: OptionalObject = None,
) -> CycleReport:
    """Train a challenger on fresh data and promote it only if it passes the quality gate.

    Args:
        model_name: Registered model name in MLflow.
        source: Where the training data comes from.
        features: Feature, target, slice and split columns.
        trainer: Estimator (or torch network), its parameters, seed and compute route.
        policy: Quality-gate rules; the defaults when empty.
        window: ISO-8601 interval 'start/end' on the source's time column, or 'latest' for all rows.
        suite_path: Path of a Great Expectations suite (JSON) to validate against; empty: the model's learned
            suite, learned from the data on first use and saved under the workspace's suites/ for review.
        warn_only: Log failed expectations instead of stopping the run.
        force: Train even when the data and parameters match the champion's.
        mlflow_server: Tracking server and registry; the workspace's SQLite store when empty.
        workspace: Folder, on the machine that runs the flow, for data snapshots, learned suites, drift reports
            and the default MLflow store; empty: $PREFECT_MLOPS_WORKSPACE, else ~/.prefect-mlops.
        retrain_policy: Minimum training rows and the refit on the whole window; the defaults when empty.
        max_rows: Train on at most this many latest rows of the window (the retrain policy's cap).
        champion_degraded: Why the champion measurably degraded (set by the monitor); the gate then promotes
            a challenger that is not worse, instead of requiring a gain beyond noise.
        trigger: What started this run; a drift or performance retraining starts the retrain policy's
            cool-down, a manual or scheduled one does not.
        trigger_details: What the trigger knows (the monitor's event id and name, drift share, drifted columns),
            recorded with `trigger` in the version's `prefect_mlops.trigger` tag.
    """
    logger = get_run_logger()
    policy = policy or ModelPolicy()
    policy.check_metrics(features.task)  # a bad policy fails before any work starts
    trainer.check(features.task)  # so does an estimator that does not import, fit this task or take its params
    window = str(Window.parse(window)) if Window.parse(window) else None
    server = mlflow_server or MlflowServer()
    retrain_policy = retrain_policy or RetrainPolicy()
    digest = recipe_digest(features, trainer)
    start_model_files(trainer)  # skops' import runs on another core while the data is read and the model fits
    reconcile(model_name, mlflow_server=server, workspace=workspace)  # settle what a killed run left

    dataset = ingest(source, name=model_name, window=window, workspace=workspace, max_rows=max_rows)
    champion = find_champion(model_name, mlflow_server=server, workspace=workspace)
    made_by = champion.lineage if champion else None
    same = made_by and not force and made_by.dataset.fingerprint == dataset.fingerprint \
        and made_by.params_digest == digest
    # Same data and recipe, but a champion fit on a sample is fit again when the budget now allows more rows.
    grown = same and budget_change(made_by.training, retrain_policy.training_budget, trainer, dataset, features)
    if grown:
        logger.info("retraining on the same data with the same parameters: %s", grown)
    elif same:
        message = (f"nothing new to train on: champion v{champion.model.version} was trained on the same data "
                   f"({dataset.short()}) with the same parameters; pass force=True to retrain anyway")
        logger.info(message)
        return Completed(name="Skipped", message=message, data=CycleReport(
            model_name=model_name, outcome="skipped", message=message, window=window,
            data_fingerprint=dataset.fingerprint, champion_version=champion.model.version))

    check_columns(dataset, features)  # a missing target is named as such, before any expectation runs
    untrainable = why_untrainable(dataset, features, min_rows=retrain_policy.min_training_rows)
    if untrainable:
        logger.warning(untrainable)
        return Completed(name="Skipped", message=untrainable, data=CycleReport(
            model_name=model_name, outcome="skipped", message=untrainable, window=window,
            data_fingerprint=dataset.fingerprint, champion_version=champion.model.version if champion else None))

    validation = validate(dataset, suite_path=suite_path, warn_only=warn_only, workspace=workspace)
    # The suite a promotion would re-learn from this data, learned while the challenger trains.
    suite_ahead = learn_suite_ahead.submit(dataset, validation.suite_path, workspace)
    feature_set = feature_build(dataset, features, workspace=workspace)
    lineage = Lineage(model_name=model_name, dataset=dataset, features=features, trainer=trainer,
                      params_digest=digest, suite_path=validation.suite_path, code_version=__version__,
                      git_commit=git_commit(), packages=package_versions(),
                      trigger=describe_trigger(trigger, trigger_details))
    if trainer.label:
        trained = train_on_route(feature_set, trainer, lineage, mlflow_server=server, workspace=workspace,
                                 budget=retrain_policy.training_budget)
    else:
        trained = train(feature_set, trainer, lineage, mlflow_server=server, workspace=workspace,
                        budget=retrain_policy.training_budget)
    if trigger in ("drift", "performance"):  # a signal's retraining starts the cool-down; a schedule's does not
        record_retraining(model_name, window, mlflow_server=server, workspace=workspace)
    with model_lock(model_name):  # one run of this model at a time from evaluate to deploy
        # The champion may have moved while this run trained: compare against the one in place now.
        champion = find_champion(model_name, mlflow_server=server, workspace=workspace)
        evaluation = evaluate(trained, feature_set, champion=champion, policy=policy, mlflow_server=server,
                              workspace=workspace, champion_degraded=champion_degraded or None)
        verdict = quality_gate(evaluation, policy)

        metric = evaluation.primary_metric
        report = CycleReport(
            model_name=model_name, outcome="rejected", message="", window=window, data_fingerprint=dataset.fingerprint,
            champion_version=champion.model.version if champion else None, primary_metric=metric,
            challenger_metric=evaluation.challenger.overall[metric],
            champion_metric=evaluation.champion.overall[metric] if evaluation.champion else None,
            gate_reason=verdict.main_reason)
        if not verdict.passed:
            message = f"gate rejected the challenger of {model_name!r}: " + "; ".join(verdict.reasons)
            return Completed(name="Rejected", message=message, data=report.model_copy(update={"message": message}))

        if retrain_policy.refit_full_window and trainer.kind == "sklearn":
            trained, smoke = refit(trained, feature_set, evaluation.smoke_sample_uri, mlflow_server=server,
                                   workspace=workspace)
            evaluation = evaluation.model_copy(update={"smoke_sample_uri": smoke})
        with transaction():  # a failed deploy rolls the registration back: nothing half-promoted
            model = register(trained, verdict, evaluation, mlflow_server=server, workspace=workspace)
            promotion = deploy(model, evaluation, verdict, mlflow_server=server, workspace=workspace,
                               strategy=policy.deploy_strategy)
        if promotion.trial is not None:  # canary or shadow: the champion stays until the rollout promotes
            message = (f"{model_name} v{model.version} on trial as @{promotion.trial} beside champion "
                       f"v{promotion.champion_version}: {verdict.main_reason}")
            logger.info(message)
            return report.model_copy(update={"outcome": "on-trial", "message": message,
                                             "challenger_version": model.version})
        # The learned profile follows the new champion's data; a suite a person edited is left alone.
        update_suite(validation.suite_path, dataset, promotion.champion_version, workspace=workspace,
                     learned=suite_ahead)
    message = f"{model_name} v{promotion.champion_version} promoted to champion: {verdict.main_reason}"
    logger.info(message)
    return report.model_copy(update={"outcome": "promoted", "message": message,
                                     "champion_version": promotion.champion_version,
                                     "challenger_version": model.version})
