"""Flows composed from the lifecycle tasks; each reads like the lifecycle diagram.

Example:
    ```python
    from prefect_mlops.flows import continuous_training, drift_monitor, rollback, batch_score, train_on_pool
    ```
"""

from prefect_mlops.flows.batch_score import batch_score
from prefect_mlops.flows.continuous_training import CycleReport, continuous_training
from prefect_mlops.flows.drift_monitor import MonitorReport, drift_monitor
from prefect_mlops.flows.rollback import rollback
from prefect_mlops.flows.train_on_pool import train_on_pool

__all__ = ["CycleReport", "MonitorReport", "batch_score", "continuous_training", "drift_monitor", "rollback",
           "train_on_pool"]
