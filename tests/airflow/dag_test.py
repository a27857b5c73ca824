"""Run a DAG of the provider with `dag.test()` on the embedded SQLite metadata database (Airflow's venv).

    python dag_test.py SPEC.json   ->  prints one line per run: RESULT {"state", "outcome", "tasks"}

SPEC: {"factory": "continuous_training_dag" | "drift_monitor_dag", "args": {...}, "runs": [conf, ...]}.
`dag.test()` reads the DAG from the DAGs folder, so the DAG is written there as a file that calls
the factory with SPEC's arguments. The test sets AIRFLOW_HOME, the Connections (AIRFLOW_CONN_*),
the Variables (AIRFLOW_VAR_*) and $PREFECT_MLOPS_PYTHON.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

OUTCOMES = ("skipped", "rejected", "promoted", "emit")

DAG_FILE = '''
import json
from prefect_mlops.airflow import dags
spec = json.loads(open({spec!r}).read())
dag = getattr(dags, spec["factory"])(**spec["args"])
'''


def main(path: str) -> None:
    from airflow.models.xcom import XComModel
    from airflow.utils.db import initdb
    from airflow.utils.session import create_session

    folder = Path(os.environ["AIRFLOW_HOME"]) / "dags"
    folder.mkdir(parents=True, exist_ok=True)
    dag_file = folder / "spec_dag.py"
    dag_file.write_text(DAG_FILE.format(spec=str(Path(path).resolve())))
    initdb()
    module_spec = importlib.util.spec_from_file_location("spec_dag", dag_file)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    for conf in json.loads(Path(path).read_text())["runs"]:
        run = module.dag.test(run_conf=conf)
        tasks = {ti.task_id: str(ti.state) for ti in run.get_task_instances()}
        outcome = None
        with create_session() as session:
            for task_id in OUTCOMES:
                if tasks.get(task_id) == "success":
                    row = session.query(XComModel).filter_by(dag_id=run.dag_id, run_id=run.run_id,
                                                             task_id=task_id, key="return_value").first()
                    outcome = row.value if row is not None else None
        print("RESULT " + json.dumps({"state": str(run.state), "outcome": outcome, "tasks": tasks}, default=str),
              flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
