"""Run a DAG of the provider with `dag.test()` on the embedded SQLite metadata database (Airflow's venv).

    python dag_test.py SPEC.json   ->  prints one line per run: RESULT {"state", "outcome", "tasks"}

SPEC: {"factory": "continuous_training_dag" | "drift_monitor_dag", "args": {...}, "runs": [conf, ...],
"fail_deploy": [run numbers whose deploy task fails]}.
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


def failing_stage(stage: str, records: dict) -> object:
    raise RuntimeError(f"injected failure of {stage}")


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
    spec = json.loads(Path(path).read_text())
    for number, conf in enumerate(spec["runs"]):
        task = module.dag.get_task("deploy") if number in spec.get("fail_deploy", []) else None
        if task is not None:  # a deploy that fails after register: `undo` must take the version out
            task.python_callable, kept = failing_stage, task.python_callable
        run = module.dag.test(run_conf=conf)
        if task is not None:
            task.python_callable = kept
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
