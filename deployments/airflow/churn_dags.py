"""The demo's churn model on Airflow: the Airflow twin of deployments/prefect.yaml's `churn` deployments.

Copy this file into Airflow's DAGs folder (or point `dags_folder` here). Two DAGs:

- `churn_continuous_training`: nightly at 03:00 UTC, and whenever the drift monitor emits an event on
  the `prefect_mlops.retrain.churn` Asset (data-aware scheduling). One run at a time. Training goes to
  the `gpu` queue (the trainer's compute label) and the `gpu` pool: create the pool
  (`airflow pools set gpu 1 "GPU training"`) and run a worker on that queue where the GPU is.
- `churn_drift_monitor`: every six hours; emits the retrain Asset event when the retrain policy calls
  for a retraining (drift share, drifted columns and window in the event's extra).

Settings: Connection `prefect_mlops_mlflow` (tracking URI in extra `tracking_uri`; login and password for
basic auth, or the password alone as a bearer token),
Connection `prefect_mlops_s3` for an S3 source, Variable `prefect_mlops_workspace`, Variable
`prefect_mlops_python` (the project venv's interpreter). The data: `python -m prefect_mlops.demo`
writes it to demo-output/data/churn.parquet; $PREFECT_MLOPS_CHURN_DATA points elsewhere.
"""

from __future__ import annotations

import os

from airflow.sdk import AssetOrTimeSchedule, CronTriggerTimetable

from prefect_mlops.airflow.dags import continuous_training_dag, drift_monitor_dag, retrain_asset

DATA = os.environ.get("PREFECT_MLOPS_CHURN_DATA", os.path.abspath("demo-output/data/churn.parquet"))
SOURCE = {"uri": DATA, "time_column": "event_time"}
FEATURES = {"target": "churned", "numeric": ["tenure_months", "monthly_spend", "support_calls", "usage_hours"],
            "categorical": ["plan", "channel"], "slice_column": "region", "time_column": "event_time"}
TRAINER = {"kind": "sklearn", "estimator": "sklearn.ensemble.HistGradientBoostingClassifier",
           "params": {"max_iter": 150, "learning_rate": 0.05}, "seed": 0, "label": "gpu"}
POLICY = {"floors": {"roc_auc": 0.65}, "max_drop": 0.01, "slice_floors": {"roc_auc": 0.55}}

continuous_training = continuous_training_dag(
    "churn", SOURCE, FEATURES, TRAINER, POLICY,
    schedule=AssetOrTimeSchedule(timetable=CronTriggerTimetable("0 3 * * *", timezone="UTC"),
                                 assets=retrain_asset("churn")),
    train_pool="gpu",
)

drift_monitor = drift_monitor_dag("churn", SOURCE, POLICY)
