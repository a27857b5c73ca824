"""Flows composed from the lifecycle tasks; each reads like the lifecycle diagram.

Example:
    ```python
    from prefect_mlops.flows import continuous_training, drift_monitor, rollback, batch_score, train_on_pool
    from prefect_mlops.flows import progressive_rollout
    from prefect_mlops.flows import drift_check_columns, monitor_models  # fan-out on Dask
    ```
"""

from prefect_mlops.console import embedded_api_defaults
from prefect_mlops.flows.batch_score import batch_score
from prefect_mlops.flows.continuous_training import CycleReport, continuous_training
from prefect_mlops.flows.drift_monitor import MonitorReport, drift_monitor
from prefect_mlops.flows.fleet import FleetModel, FleetReport, drift_check_columns, monitor_models
from prefect_mlops.flows.progressive_rollout import RolloutReport, progressive_rollout
from prefect_mlops.flows.rollback import rollback
from prefect_mlops.flows.train_on_pool import train_on_pool
from prefect_mlops.heartbeats import end_heartbeats_with_run

# Without a server, the first flow starts Prefect's embedded API: give it time on a busy machine and no
# telemetry (offline, its failure was an ERROR on every run); the user's own settings win.
embedded_api_defaults()
# A run of these flows returns when it ends, not at its heartbeat thread's next one-second step.
end_heartbeats_with_run()

__all__ = ["CycleReport", "FleetModel", "FleetReport", "MonitorReport", "RolloutReport", "batch_score",
           "continuous_training", "drift_check_columns", "drift_monitor", "monitor_models", "progressive_rollout",
           "rollback", "train_on_pool"]
