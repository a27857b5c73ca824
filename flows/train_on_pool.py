"""Train on a work pool: the train stage as its own deployment, so a `gpu` pool's workers run it.

The continuous-training flow starts it through a `ComputeRoute` (see `prefect_mlops.tasks.route`)
and reads the returned `TrainedModel` back from the persisted result.
"""

from __future__ import annotations

from prefect import flow

from prefect_mlops.blocks import MlflowServer
from prefect_mlops.blocks.retrain_policy import TrainingBudget
from prefect_mlops.refs import OptionalText
from prefect_mlops.tasks.features import FeatureSet
from prefect_mlops.tasks.lineage import Lineage, TrainerSpec
from prefect_mlops.tasks.route import record_compute
from prefect_mlops.tasks.train import TrainedModel, train


@flow(name="train-on-pool", log_prints=True, validate_parameters=True, persist_result=True,
      result_serializer="json")
def train_on_pool(
    features: FeatureSet,
    trainer: TrainerSpec,
    lineage: Lineage,
    mlflow_server: MlflowServer | None = None,
    workspace: OptionalText = None,
    budget: TrainingBudget | None = None,
) -> TrainedModel:
    """Fit and log one challenger on this worker's hardware; the caller evaluates, gates and promotes it.

    Args:
        features: The checked dataset and its hold-out split (from feature-build).
        trainer: Estimator, parameters, seed and compute label.
        lineage: Data, code and parameters of the cycle that asked for this model.
        mlflow_server: Tracking server and registry; the workspace's SQLite store when empty.
        workspace: Folder holding the snapshots the feature set points to.
        budget: The retrain policy's training budget; a share of the memory available on this worker when empty.
    """
    trained = train(features, trainer, lineage, mlflow_server=mlflow_server, workspace=workspace, budget=budget)
    record_compute(trained, mlflow_server, workspace)
    return trained
