"""The provider's contract: imports on each side, the entry point, the manual-run form derived from the
Prefect flows' own schemas, and the dedupe window shared with the Prefect trigger. Seconds each."""

from __future__ import annotations

import json
import subprocess
import sys

import yaml

from prefect_mlops.airflow import DEDUPE_SECONDS, get_provider_info
from prefect_mlops.airflow.stages import FORM_FILE, form_schema
from prefect_mlops.flows import continuous_training, drift_monitor
from tests.airflow.conftest import AIRFLOW_PYTHON, ROOT, needs_airflow


def test_importing_the_package_and_the_stages_imports_no_airflow():
    code = ("import sys, prefect_mlops, prefect_mlops.flows, prefect_mlops.airflow, prefect_mlops.airflow.stages; "
            "found = sorted(m for m in sys.modules if m == 'airflow' or m.startswith('airflow.')); "
            "assert not found, found")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


@needs_airflow
def test_the_provider_imports_no_prefect_and_airflow_lists_it():
    code = ("import sys; import prefect_mlops.airflow, prefect_mlops.airflow.dags; "
            "found = sorted(m for m in sys.modules if m == 'prefect' or m.startswith('prefect.')); "
            "assert not found, found; "
            "from airflow.providers_manager import ProvidersManager; "
            "info = ProvidersManager().providers['prefect-mlops']; print(info.data['package-name'])")
    done = subprocess.run([str(AIRFLOW_PYTHON), "-c", code], capture_output=True, text=True, timeout=120,
                          env={"AIRFLOW_HOME": str(ROOT / "build" / "airflow-import"), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split()[-1] == "prefect-mlops"
    assert get_provider_info()["package-name"] == "prefect-mlops"


def test_the_form_file_is_the_flows_schema_and_says_what_the_prefect_form_says():
    saved = json.loads((ROOT / "src" / "prefect_mlops" / "airflow" / FORM_FILE).read_text())
    assert saved == form_schema(), "form.json is stale: run `python -m prefect_mlops.airflow.stages form`"
    for name, flow in (("continuous_training", continuous_training), ("drift_monitor", drift_monitor)):
        prefect = flow.parameters.model_dump()["properties"]
        # Connections stand for the MLflow server; the DAG is one model's; the drift DAG retrains via its Asset.
        assert set(prefect) - set(saved[name]) <= {"model_name", "mlflow_server", "retrain"}
        for field, param in saved[name].items():
            assert param["description"].startswith(prefect[field]["description"]), field
            assert param.get("default") == prefect[field].get("default"), field
    ct = saved["continuous_training"]
    assert ct["trigger"]["enum"] == ["manual", "drift", "performance", "schedule"]
    assert ct["features"]["properties"]["task"]["enum"] == ["classification", "regression"]
    assert ct["policy"]["type"] == ["object", "null"] and "promote_when" in ct["policy"]["properties"]
    assert ct["window"]["type"] == ["string", "null"]
    # The source keeps what is not secret; endpoint and keys are the S3 Connection's.
    assert set(ct["source"]["properties"]) == {"uri", "format", "time_column"}
    assert "$ref" not in json.dumps(saved) and "block_type_slug" not in json.dumps(saved)


def test_the_dedupe_window_is_the_prefect_triggers():
    config = yaml.safe_load((ROOT / "deployments" / "prefect.yaml").read_text())
    withins = [trigger["within"] for deployment in config["deployments"]
               for trigger in deployment.get("triggers", []) if "within" in trigger]
    assert withins and set(withins) == {DEDUPE_SECONDS}


@needs_airflow
def test_params_are_typed_and_validate_a_run_conf(tmp_path):
    code = """
import json
from prefect_mlops.airflow.dags import continuous_training_dag
from airflow.sdk.definitions.param import ParamsDict
dag = continuous_training_dag("churn", {"uri": "/data/churn.parquet"}, {"target": "y", "numeric": ["x"]},
                              {"estimator": "sklearn.linear_model.LogisticRegression"}, None)
params = dag.params
print(json.dumps({"types": {k: params.get_param(k).schema.get("type") for k in ("window", "force", "max_rows")},
                  "description": params.get_param("force").description,
                  "defaults": params.validate()["features"]}))
bad = ParamsDict({k: params.get_param(k) for k in params})
bad["force"] = "yes"
"""
    done = subprocess.run([str(AIRFLOW_PYTHON), "-c", code], capture_output=True, text=True, timeout=120,
                          env={"AIRFLOW_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert done.returncode != 0 and "force" in done.stderr and "yes" in done.stderr, done.stderr[-2000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["types"] == {"window": ["string", "null"], "force": "boolean", "max_rows": ["integer", "null"]}
    assert found["description"] == continuous_training.parameters.model_dump()["properties"]["force"]["description"]
    assert found["defaults"] == {"target": "y", "numeric": ["x"]}


@needs_airflow
def test_the_dag_factories_docstring_examples_run_in_airflows_venv(tmp_path):
    # tests/test_package.py runs every other module's examples; this one imports Airflow.
    code = ("import inspect, re, textwrap, prefect_mlops.airflow.dags as m\n"
            "for obj in [m, *vars(m).values()]:\n"
            "    if getattr(obj, '__module__', m.__name__) != m.__name__ and obj is not m: continue\n"
            "    for example in re.findall(r'```python\\n(.*?)```', inspect.getdoc(obj) or '', re.S):\n"
            "        exec(compile(textwrap.dedent(example), '<docstring>', 'exec'), {}); print('ran')\n")
    done = subprocess.run([str(AIRFLOW_PYTHON), "-c", code], capture_output=True, text=True, timeout=120,
                          env={"AIRFLOW_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split().count("ran") >= 1
