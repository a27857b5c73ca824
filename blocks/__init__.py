"""Prefect Blocks: configuration a user edits in the Prefect UI.

Importing this module registers the Block types with Prefect; nothing heavy is imported.
"""

from prefect_mlops.blocks.compute_route import ComputeRoute
from prefect_mlops.blocks.data_source import DataSource
from prefect_mlops.blocks.mlflow_server import MlflowServer
from prefect_mlops.blocks.model_policy import ModelPolicy

__all__ = ["ComputeRoute", "DataSource", "MlflowServer", "ModelPolicy"]
