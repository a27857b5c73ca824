"""Airflow's own venv (`.venv-airflow`, made by `make install`) runs the DAGs; this venv runs the stages.

Tests here skip, saying so, only when that venv is absent; under `make test` (which sets
PREFECT_MLOPS_REQUIRE_AIRFLOW=1) or in CI ($CI set) they fail instead, so that a broken install is
never a quiet skip. Each test gets its own AIRFLOW_HOME
(SQLite metadata database), MLflow SQLite store and workspace; the MLflow store is handed to
Airflow as the `prefect_mlops_mlflow` Connection and the workspace as a Variable, through
Airflow's AIRFLOW_CONN_* / AIRFLOW_VAR_* environment variables.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
AIRFLOW_PYTHON = ROOT / ".venv-airflow" / "bin" / "python"
REQUIRE_ENV = "PREFECT_MLOPS_REQUIRE_AIRFLOW"


def check_airflow_venv(python: Path = AIRFLOW_PYTHON, environ: Mapping[str, str] = os.environ) -> None:
    """Skip the test when Airflow's venv is absent; fail it instead under `make test` or in CI."""
    if python.exists():
        return
    why = (f"Airflow's venv is absent ({python}); run `make install` to create it (Airflow's pins clash with "
           "Prefect's, so it has a venv of its own)")
    required = [name for name in ("CI", REQUIRE_ENV)
                if environ.get(name, "").strip().lower() not in ("", "0", "false", "no")]
    if required:
        pytest.fail(f"{why}; ${' and $'.join(required)} set: the Airflow tests must run here, not be skipped",
                    pytrace=False)
    pytest.skip(why)


@pytest.fixture
def airflow_venv() -> Path:
    check_airflow_venv()
    return AIRFLOW_PYTHON


needs_airflow = pytest.mark.usefixtures("airflow_venv")

FEATURES = {"target": "churned", "numeric": ["tenure_months", "monthly_spend", "support_calls", "usage_hours"],
            "categorical": ["plan", "channel"], "slice_column": "region", "time_column": "event_time"}
TRAINER = {"estimator": "sklearn.linear_model.LogisticRegression", "params": {"max_iter": 300}}
POLICY = {"floors": {"roc_auc": 0.6}, "max_drop": 0.01}


def airflow_env(home: Path, tracking_uri: str, artifacts: Path, workspace: Path) -> dict[str, str]:
    """The environment of an Airflow process of the tests: its home, the Connection and Variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "PREFECT_API", "PYTHONPATH"))}
    env.update({
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "false",
        "AIRFLOW__CORE__DAGS_FOLDER": str(home / "dags"),
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
        "OMP_NUM_THREADS": "1",
        "PREFECT_MLOPS_PYTHON": sys.executable,
        "AIRFLOW_CONN_PREFECT_MLOPS_MLFLOW": json.dumps({"conn_type": "generic", "extra": {
            "tracking_uri": tracking_uri, "experiment": "tests", "artifact_location": artifacts.as_uri()}}),
        "AIRFLOW_VAR_PREFECT_MLOPS_WORKSPACE": str(workspace),
    })
    return env


def run_dags(spec: dict[str, Any], env: dict[str, str], folder: Path, timeout: float = 2000) -> list[dict[str, Any]]:
    """`dag.test()` each run of `spec` in Airflow's venv (tests/airflow/dag_test.py); one result a run."""
    path, log = folder / "spec.json", folder / "dag_test.log"
    path.write_text(json.dumps(spec))
    with open(log, "w") as out:  # written as it goes: a slow run can be followed there
        code = subprocess.run([str(AIRFLOW_PYTHON), str(Path(__file__).with_name("dag_test.py")), str(path)],
                              env={**env, "PYTHONUNBUFFERED": "1"}, cwd=folder, stdout=out,
                              stderr=subprocess.STDOUT, timeout=timeout).returncode
    text = log.read_text()
    results = [json.loads(line[len("RESULT "):]) for line in text.splitlines() if line.startswith("RESULT ")]
    assert code == 0 and len(results) == len(spec["runs"]), f"dag.test failed (rc {code}); log: {log}\n{text[-4000:]}"
    return results
