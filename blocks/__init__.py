"""Prefect Blocks: configuration a user edits in the Prefect UI.

Importing this module registers the Block types with Prefect; nothing heavy is imported.
"""

from prefect_mlops.blocks.compute_route import ComputeRoute
from prefect_mlops.blocks.data_source import DataSource
from prefect_mlops.blocks.mlflow_server import MlflowServer
from prefect_mlops.blocks.model_policy import ModelPolicy
from prefect_mlops.blocks.retrain_policy import RetrainPolicy, TrainingWindow

__all__ = ["ComputeRoute", "DataSource", "MlflowServer", "ModelPolicy", "RetrainPolicy", "TrainingWindow"]
