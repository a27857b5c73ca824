"""Connections to a stage's process: MLflow basic auth or token from the Connection, secrets taken out of the
stage's environment, and the Airflow venv required (not skipped) under `make test` and CI."""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from prefect_mlops.airflow import MLFLOW_CONN, MLFLOW_ENV, S3_ENV, stages
from tests.airflow.conftest import AIRFLOW_PYTHON, REQUIRE_ENV, ROOT, check_airflow_venv, needs_airflow

CONN_VAR = f"AIRFLOW_CONN_{MLFLOW_CONN.upper()}"
# connection_env() in Airflow's venv, for each Connection (JSON) on stdin: what the stage's process gets.
HANDOVER = """
import json, os, sys
from prefect_mlops.airflow import MLFLOW_CONN, MLFLOW_ENV
from prefect_mlops.airflow.dags import connection_env
CONN_VAR = "AIRFLOW_CONN_" + MLFLOW_CONN.upper()
for conn in json.load(sys.stdin):
    os.environ[CONN_VAR] = json.dumps(conn)
    try:
        print("ENV " + json.dumps(json.loads(connection_env()[MLFLOW_ENV])))
    except ValueError as exc:
        print("ERROR " + str(exc))
"""


def handover(connections: list[dict], home: Path) -> list[str]:
    done = subprocess.run([str(AIRFLOW_PYTHON), "-c", HANDOVER], input=json.dumps(connections), capture_output=True,
                          text=True, timeout=120, env={"AIRFLOW_HOME": str(home), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr[-3000:]
    return [line for line in done.stdout.splitlines() if line.startswith(("ENV ", "ERROR "))]


@pytest.fixture
def fresh_connections(monkeypatch):
    """The stage module's kept Connections, empty for this test and restored after it."""
    monkeypatch.setattr(stages, "_CONNECTIONS", {})
    for variable in (MLFLOW_ENV, S3_ENV):
        monkeypatch.delenv(variable, raising=False)


@needs_airflow
def test_a_login_is_basic_auth_a_password_alone_is_a_token_and_a_secret_in_the_extra_is_refused(
        tmp_path, monkeypatch, fresh_connections):
    base = {"conn_type": "generic", "host": "mlflow.internal", "port": 5000, "extra": {"experiment": "churn"}}
    lines = handover([{**base, "login": "alice", "password": "basic-pw"}, {**base, "password": "tok-123"},
                      {**base, "login": "alice", "password": "pw", "extra": {"token": "in-the-extra"}}], tmp_path)
    assert len(lines) == 3, lines
    servers = []
    for line in lines[:2]:
        assert line.startswith("ENV "), line
        monkeypatch.setenv(MLFLOW_ENV, line[len("ENV "):])
        servers.append(stages._server({}))
    basic, bearer = servers
    assert basic.tracking_uri == "http://mlflow.internal:5000" and basic.experiment == "churn"
    assert basic.username == "alice" and basic.password.get_secret_value() == "basic-pw" and basic.token is None
    assert basic._auth_header()["Authorization"].startswith("Basic ")
    assert bearer.username is None and bearer.password is None and bearer.token.get_secret_value() == "tok-123"
    assert bearer._auth_header() == {"Authorization": "Bearer tok-123"}
    assert lines[2].startswith(f"ERROR Airflow Connection {MLFLOW_CONN!r}: token found in its extra; put the user")
    assert "in-the-extra" not in lines[2]


def test_a_stage_takes_the_connections_out_of_its_environment_before_it_runs(monkeypatch, fresh_connections,
                                                                             tmp_path):
    secret = f"s3-{secrets.token_hex(6)}"
    monkeypatch.setenv(MLFLOW_ENV, json.dumps({"tracking_uri": "http://127.0.0.1:9", "username": "alice",
                                               "password": secret, "token": None}))
    monkeypatch.setenv(S3_ENV, json.dumps({"aws_access_key_id": "key", "aws_secret_access_key": secret}))
    seen = {}

    def probe(plan: dict) -> dict:  # what a stage sees: no variable in its environment, none in its children's
        seen["environ"] = {v: os.environ.get(v) for v in (MLFLOW_ENV, S3_ENV)}
        child = subprocess.run([sys.executable, "-c", "import os; print(sorted(os.environ))"], capture_output=True,
                               text=True, check=True, timeout=60).stdout
        server, source = stages._server(plan), stages._source(plan)
        return {"child": child, "password": server.password.get_secret_value(),
                "s3_secret": source.aws_secret_access_key.get_secret_value()}

    monkeypatch.setitem(stages.STAGES, "probe", probe)
    found = stages.run("probe", plan={"source": {"uri": str(tmp_path / "data.parquet")}})
    assert seen["environ"] == {MLFLOW_ENV: None, S3_ENV: None}
    assert MLFLOW_ENV not in found["child"] and S3_ENV not in found["child"] and secret not in found["child"]
    assert found["password"] == secret and found["s3_secret"] == secret  # the settings still reach the stage
    assert MLFLOW_ENV not in os.environ and S3_ENV not in os.environ


def test_reading_the_config_outside_run_takes_the_variables_out_too(monkeypatch, fresh_connections):
    monkeypatch.setenv(MLFLOW_ENV, json.dumps({"tracking_uri": "http://127.0.0.1:9", "token": "tok-456"}))
    assert stages._server({}).token.get_secret_value() == "tok-456"
    assert MLFLOW_ENV not in os.environ
    assert stages._server({}).token.get_secret_value() == "tok-456"  # kept in the process, read once


@pytest.mark.parametrize(("environ", "outcome"), [
    ({}, "skip"), ({"CI": "false"}, "skip"), ({REQUIRE_ENV: "0"}, "skip"),
    ({"CI": "true"}, "fail"), ({REQUIRE_ENV: "1"}, "fail")])
def test_a_missing_airflow_venv_skips_locally_and_fails_under_make_test_or_ci(tmp_path, environ, outcome):
    absent = tmp_path / "no-venv" / "bin" / "python"
    error = pytest.fail.Exception if outcome == "fail" else pytest.skip.Exception
    with pytest.raises(error, match=rf"Airflow's venv is absent \({re.escape(str(absent))}\); run `make install`"):
        check_airflow_venv(absent, environ)
    check_airflow_venv(Path(sys.executable), environ)  # present: nothing to say


def test_make_test_requires_the_airflow_venv():
    makefile = (ROOT / "Makefile").read_text()
    recipe = re.search(r"^test:.*\n((?:\t.*\n)+)", makefile, re.M)
    assert recipe, "no `test:` rule in the Makefile"
    pytest_lines = [line for line in recipe.group(1).splitlines() if " pytest " in line]
    assert pytest_lines and all(line.strip().startswith(f"{REQUIRE_ENV}=1 ") for line in pytest_lines), pytest_lines


@needs_airflow
@pytest.mark.system
def test_a_stage_authenticates_to_a_basic_auth_mlflow_server_with_the_connections_login(tmp_path):
    from tests.system.test_security import start_mlflow_with_basic_auth

    password, wrong = f"ml-{secrets.token_hex(8)}", f"wrong-{secrets.token_hex(8)}"
    proc, url = start_mlflow_with_basic_auth(tmp_path / "mlflow", password)
    try:
        host, port = url.removeprefix("http://").split(":")
        base = {"conn_type": "generic", "host": host, "port": int(port), "login": "admin",
                "extra": {"experiment": "airflow-auth"}}
        lines = handover([{**base, "password": password}, {**base, "password": wrong}], tmp_path / "airflow")
        # One process, as the DAG's stage has: the right Connection, then (set again, read again) the wrong one.
        stage = ("import json, os, sys; from prefect_mlops.airflow.stages import run\n"
                 "for settings in json.load(sys.stdin):\n"
                 f"    os.environ[{MLFLOW_ENV!r}] = settings\n"
                 f"    print('RESULT', json.dumps(run('undo', plan={{'model_name': 'churn', 'workspace': "
                 f"{str(tmp_path / 'ws')!r}}}, registered=None)), flush=True)\n")
        assert all(line.startswith("ENV ") for line in lines), lines
        done = subprocess.run([sys.executable, "-c", stage], input=json.dumps([line[len("ENV "):] for line in lines]),
                              capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                              timeout=300)
        said = done.stdout + done.stderr
        results = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
        assert len(results) == 1 and "nothing was registered" in results[0], said[-3000:]
        assert done.returncode != 0  # the wrong password's run
        assert f"MLflow server {url} refused the credentials of user 'admin' (HTTP 401)" in said, said[-3000:]
        assert wrong not in said and password not in said
    finally:
        proc.terminate()
        proc.wait(timeout=30)
