"""Airflow 3 provider: the continuous-training lifecycle as DAGs whose tasks call the same stage functions.

Importing this package imports neither Airflow nor Prefect: Airflow reads `get_provider_info`
through the `apache_airflow_provider` entry point, and the DAG factories live in
`prefect_mlops.airflow.dags` (Airflow's venv). The stages run in the project's venv
(`prefect_mlops.airflow.stages`), where Prefect, MLflow, GX and Evidently are installed.

Where a Prefect user saves Blocks, an Airflow user sets Connections and Variables:

- MLflow Server block: Connection `prefect_mlops_mlflow`; extra `tracking_uri` (or host, port and
  schema); login + password = the block's username + password (basic auth), a password without a
  login = its token; extra `registry_uri`, `experiment`, `artifact_location` optional.
- Data Source block's endpoint and keys: Connection `prefect_mlops_s3` (type `aws`); login = key id,
  password = secret; extra `endpoint_url`, `region_name`. The DAG's `source` Param keeps uri, format
  and time column.
- `workspace` parameter: Variable `prefect_mlops_workspace` (the `workspace` Param overrides it).
- the worker's Python: Variable `prefect_mlops_python` (or `$PREFECT_MLOPS_PYTHON`), the project
  venv's interpreter that runs the stages.

Example:
    ```python
    from prefect_mlops.airflow import get_provider_info
    info = get_provider_info()
    assert info["package-name"] == "prefect-mlops" and info["connection-types"] == []
    ```
"""

from __future__ import annotations

MLFLOW_CONN = "prefect_mlops_mlflow"
"""Connection with the MLflow tracking URI (extra `tracking_uri`, or host/port/schema), login and password
(basic auth), or a password alone (bearer token)."""
S3_CONN = "prefect_mlops_s3"
"""Connection with the S3 endpoint (extra `endpoint_url`), key id (login), secret (password) and region."""
WORKSPACE_VAR = "prefect_mlops_workspace"
PYTHON_VAR = "prefect_mlops_python"
PYTHON_ENV = "PREFECT_MLOPS_PYTHON"
MLFLOW_ENV = "PREFECT_MLOPS_AIRFLOW_MLFLOW"
"""Environment variable through which a stage's process gets the MLflow Connection (never XCom); the stage
removes it from its environment when it reads it."""
S3_ENV = "PREFECT_MLOPS_AIRFLOW_S3"
"""Environment variable through which a stage's process gets the S3 Connection (never XCom)."""
DEDUPE_SECONDS = 3600
"""One retraining per model per hour however many drift events arrive: the `within` of the Prefect
retraining deployment's trigger (deployments/prefect.yaml), checked equal by the tests."""


def get_provider_info() -> dict[str, object]:
    """What Airflow's providers manager shows for this provider (the `apache_airflow_provider` entry point)."""
    from prefect_mlops import __version__

    return {
        "package-name": "prefect-mlops",
        "name": "prefect-mlops",
        "description": "Continuous training (ingest, validate, feature-build, train, evaluate, quality-gate, "
                       "register, deploy, drift-check) as Airflow DAGs on MLflow, GX and Evidently.",
        "versions": [__version__],
        "connection-types": [],
        "task-decorators": [{"name": "prefect_mlops_stage", "class-name": "prefect_mlops.airflow.dags.stage_task"}],
    }
