"""Run the stages' plain functions in order, for tests that need a trained or promoted model."""

from __future__ import annotations

from dataclasses import dataclass

from prefect_mlops.blocks import DataSource, MlflowServer, ModelPolicy
from prefect_mlops.tasks.deploy import Promotion, promote
from prefect_mlops.tasks.evaluate import Evaluation, evaluate_models
from prefect_mlops.tasks.features import FeatureSet, FeatureSpec, build_feature_set
from prefect_mlops.tasks.gate import GateVerdict, judge
from prefect_mlops.tasks.ingest import ingest_dataset
from prefect_mlops.tasks.lineage import Lineage, TrainerSpec, find_model, recipe_digest
from prefect_mlops.tasks.register import register_version
from prefect_mlops.tasks.train import TrainedModel, train_model
from prefect_mlops.workspace import Workspace


@dataclass
class Cycle:
    features: FeatureSet
    trained: TrainedModel
    evaluation: Evaluation
    verdict: GateVerdict


def train_and_judge(source: DataSource, spec: FeatureSpec, trainer: TrainerSpec, *, server: MlflowServer,
                    workspace: Workspace, window: str | None = None, policy: ModelPolicy | None = None,
                    name: str = "churn") -> Cycle:
    policy = policy or ModelPolicy()
    dataset = ingest_dataset(source, name=name, window=window, workspace=workspace)
    features = build_feature_set(dataset, spec, workspace=workspace)
    lineage = Lineage(model_name=name, dataset=dataset, features=spec, trainer=trainer,
                      params_digest=recipe_digest(spec, trainer))
    trained = train_model(features, trainer, lineage=lineage, mlflow_server=server, workspace=workspace)
    champion = find_model(name, mlflow_server=server, workspace=workspace)
    evaluation = evaluate_models(trained, features, champion=champion, policy=policy, mlflow_server=server,
                                 workspace=workspace, bootstrap_samples=50)
    return Cycle(features, trained, evaluation, judge(evaluation, policy))


def promote_cycle(cycle: Cycle, *, server: MlflowServer, workspace: Workspace) -> Promotion:
    model = register_version(cycle.trained, cycle.verdict, cycle.evaluation, mlflow_server=server,
                             workspace=workspace)
    return promote(model, cycle.evaluation, cycle.verdict, mlflow_server=server, workspace=workspace)
