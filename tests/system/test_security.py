"""Authentication on every server of the stack, live on 127.0.0.1, and no secret left anywhere after failures.

One module-wide stack: a Prefect server with basic auth (SQLite, so its database is one file to
search), an `mlflow server --app-name basic-auth` whose admin password comes from the environment,
moto's S3 holding the data, and one worker per pool given the Prefect credentials. The blocks hold
the MLflow password and the S3 secret key as `SecretStr`.
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import boto3
import pandas as pd
import pytest

from prefect_mlops.blocks import MlflowServer
from prefect_mlops.cli import DEFAULT_POOLS, Server, Stack, api, deploy, free_port
from prefect_mlops.demo import make_churn_data, period_window
from prefect_mlops.errors import RegistryError
from prefect_mlops.integrity import DIGEST_TAG
from prefect_mlops.tasks.lineage import find_model
from prefect_mlops.workspace import Workspace
from tests.conftest import ROWS_PER_PERIOD, start_moto
from tests.system.stack import Receiver, System, pause_schedules_and_clear_runs, system_config

pytestmark = pytest.mark.system

PREFECT_USER = "ops"
SECRET = {  # distinctive values, so a search for them finds nothing by chance
    "prefect password": f"pf-{secrets.token_hex(8)}",
    "mlflow admin password": f"ml-{secrets.token_hex(8)}",
    "s3 secret key": f"s3-{secrets.token_hex(8)}",
    "wrong password": f"wrong-{secrets.token_hex(8)}",
}
BUCKET = "lake"


def start_mlflow_with_basic_auth(home: Path, admin_password: str, timeout: float = 240) -> tuple[subprocess.Popen,
                                                                                                    str]:
    """`mlflow server --app-name basic-auth`; the admin password and Flask key go in through the environment."""
    home.mkdir(parents=True, exist_ok=True)
    config = home / "basic_auth.ini"
    config.write_text("[mlflow]\ndefault_permission = NO_PERMISSIONS\n"
                      f"database_uri = sqlite:///{home / 'auth.db'}\nadmin_username = admin\n"
                      "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
    port = free_port()
    env = {**os.environ, "MLFLOW_AUTH_CONFIG_PATH": str(config), "MLFLOW_AUTH_ADMIN_PASSWORD": admin_password,
           "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16)}
    exe = str(Path(sys.executable).parent / "mlflow")
    log = open(home / "mlflow.log", "ab")
    proc = subprocess.Popen([exe, "server", "--app-name", "basic-auth", "--backend-store-uri",
                             f"sqlite:///{home / 'mlflow.db'}", "--artifacts-destination", str(home / "mlartifacts"),
                             "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited with {proc.returncode}; see {home / 'mlflow.log'}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                return proc, url
        except (urllib.error.URLError, OSError):
            time.sleep(1)
    proc.kill()
    raise TimeoutError(f"mlflow server on port {port} not healthy after {timeout} s")


def status_of(url: str, *, auth: str | None = None, method: str = "GET", body: bytes | None = None) -> int:
    request = urllib.request.Request(url, data=body, method=method, headers={"Content-Type": "application/json"})
    if auth:
        request.add_header("Authorization", f"Basic {base64.b64encode(auth.encode()).decode()}")
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return reply.status
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.fixture(scope="module")
def secure(tmp_path_factory):
    home = tmp_path_factory.mktemp("secure")
    mlflow_proc, mlflow_url = start_mlflow_with_basic_auth(home / "mlflow", SECRET["mlflow admin password"])
    moto, s3_url = start_moto()
    receiver = Receiver()
    stack = None
    try:
        s3 = boto3.client("s3", endpoint_url=s3_url, aws_access_key_id="AKIASECURETEST",
                          aws_secret_access_key=SECRET["s3 secret key"], region_name="us-east-1")
        s3.create_bucket(Bucket=BUCKET)
        data = home / "churn.parquet"
        pd.concat([make_churn_data(p, rows=ROWS_PER_PERIOD) for p in range(3)]).to_parquet(data, index=False)
        s3.upload_file(str(data), BUCKET, "churn.parquet")
        data.unlink()
        mlflow = MlflowServer(tracking_uri=mlflow_url, username="admin", password=SECRET["mlflow admin password"],
                              experiment="security")
        workspace = Workspace(home / "workspace")
        auth = f"{PREFECT_USER}:{SECRET['prefect password']}"
        server = Server(home=home / "prefect", port=free_port(), auth_string=auth, extra_env={
            "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "2"})
        stack = Stack(server.start())
        config = system_config(home, data, receiver, mlflow)
        source = {"uri": f"s3://{BUCKET}/churn.parquet", "time_column": "event_time", "s3_endpoint_url": s3_url,
                  "aws_access_key_id": "AKIASECURETEST", "aws_secret_access_key": SECRET["s3 secret key"]}
        config["blocks"]["prefect-mlops-data-source"] = {
            "churn": source, "missing": {**source, "uri": f"s3://{BUCKET}/no-such-key.parquet"}}
        credentials = {"tracking_uri": mlflow_url, "username": "admin", "experiment": "security"}
        config["blocks"]["prefect-mlops-mlflow-server"] = {
            "default": {**credentials, "password": SECRET["mlflow admin password"]},
            "wrong-password": {**credentials, "password": SECRET["wrong password"]}}
        with api(server.api_url, auth):
            deploy(config, env=server.client_env(), say=lambda _: None)
            pause_schedules_and_clear_runs()
            stack.start_workers(list(DEFAULT_POOLS), query_seconds="1", PREFECT_MLOPS_WORKSPACE=str(workspace.root),
                                OMP_NUM_THREADS="1", GX_ANALYTICS_ENABLED="false",
                                MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false")
            system = System(home=home, stack=stack, receiver=receiver, mlflow=mlflow, workspace=workspace)
            system.notes.update(mlflow_url=mlflow_url, s3_url=s3_url, auth=auth)
            yield system
    finally:
        if stack is not None:
            stack.stop()
        receiver.stop()
        moto.terminate()
        mlflow_proc.terminate()
        mlflow_proc.wait(30)


def test_anonymous_prefect_api_calls_get_401_and_the_ui_asks_for_the_credentials(secure):
    api_url = secure.stack.server.api_url
    assert status_of(f"{api_url}/health") == 200  # probes stay open
    assert status_of(f"{api_url}/flows/filter", method="POST", body=b"{}") == 401
    assert status_of(f"{api_url}/flows/filter", method="POST", body=b"{}",
                     auth=f"{PREFECT_USER}:{SECRET['wrong password']}") == 401
    assert status_of(f"{api_url}/flows/filter", method="POST", body=b"{}", auth=secure.notes["auth"]) == 200
    with urllib.request.urlopen(f"{secure.ui_url}/ui-settings", timeout=10) as reply:
        assert json.load(reply)["auth"] == "BASIC"  # the UI shows its login page and sends what is typed there


def test_a_wrong_prefect_password_fails_clearly_without_echoing_it(secure):
    env = {**secure.stack.server.client_env(), "PREFECT_API_AUTH_STRING": f"{PREFECT_USER}:{SECRET['wrong password']}"}
    done = subprocess.run([str(Path(sys.executable).parent / "prefect-mlops"), "deploy"], env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    said = done.stdout + done.stderr
    assert done.returncode != 0
    assert f"refused the credentials of user '{PREFECT_USER}' (HTTP 401)" in said, said[-2000:]
    assert SECRET["wrong password"] not in said and SECRET["prefect password"] not in said


def test_the_s3_bucket_is_private_and_its_key_comes_from_the_block(secure):
    from prefect_mlops.blocks import DataSource

    source = DataSource.load("churn")
    assert source.aws_secret_access_key.get_secret_value() == SECRET["s3 secret key"]
    grants = source.s3_client().get_bucket_acl(Bucket=BUCKET)["Grants"]
    assert [g["Permission"] for g in grants] == ["FULL_CONTROL"]  # the owner only: no AllUsers, no AuthenticatedUsers
    assert all(g["Grantee"].get("Type") == "CanonicalUser" for g in grants)


def test_anonymous_mlflow_calls_get_401_and_a_block_without_credentials_is_told(secure):
    url = secure.notes["mlflow_url"]
    assert status_of(f"{url}/api/2.0/mlflow/experiments/search?max_results=1") == 401
    with pytest.raises(RegistryError, match=rf"MLflow server {url} needs credentials \(HTTP 401\)"):
        find_model("churn", mlflow_server=MlflowServer(tracking_uri=url), workspace=secure.workspace)


def test_a_wrong_mlflow_password_is_a_clear_error_without_the_secret(secure):
    url = secure.notes["mlflow_url"]
    wrong = MlflowServer(tracking_uri=url, username="admin", password=SECRET["wrong password"])
    with pytest.raises(RegistryError, match=rf"MLflow server {url} refused the credentials of user 'admin' "
                                            r"\(HTTP 401\): the password is wrong") as caught:
        find_model("churn", mlflow_server=wrong, workspace=secure.workspace)
    assert SECRET["wrong password"] not in str(caught.value)


def test_a_worker_with_the_credentials_runs_continuous_training_to_the_end(secure):
    run = secure.wait(secure.run("continuous-training/churn", window=period_window(0)).id, timeout=420)
    assert run.state.is_completed(), f"{run.state.name}: {run.state.message}"
    assert secure.champion("churn") == "1"
    version = secure.mlflow.client(secure.workspace).get_model_version("churn", "1")
    assert len(version.tags[DIGEST_TAG]) == 64  # registered over the authenticated API, with its checksums
    # MLflow's credentials stay in the block: nothing secret in this process's environment.
    assert not any(secret in value for value in os.environ.values() for secret in SECRET.values())


def test_after_failures_no_secret_is_in_any_log_artifact_param_tag_or_the_prefect_database(secure):
    runs = [secure.run("continuous-training/churn", window=period_window(1),
                       mlflow_server={"$ref": {"block_document_slug": "prefect-mlops-mlflow-server/wrong-password"}}),
            secure.run("continuous-training/churn", window=period_window(1),
                       source={"$ref": {"block_document_slug": "prefect-mlops-data-source/missing"}})]
    finals = [secure.wait(run.id, timeout=420) for run in runs]
    assert all(final.state.is_failed() or final.state.is_crashed() for final in finals), \
        [(final.state.name, final.state.message) for final in finals]
    assert "refused the credentials of user 'admin'" in finals[0].state.message
    assert secure.champion("churn") == "1"
    time.sleep(3)  # the workers' last log lines reach the server
    needles = {name: value for name, value in SECRET.items()}
    needles["prefect basic header"] = base64.b64encode(secure.notes["auth"].encode()).decode()
    needles["mlflow basic header"] = base64.b64encode(f"admin:{SECRET['mlflow admin password']}".encode()).decode()
    found = []
    files = [p for p in secure.home.rglob("*") if p.is_file()]
    assert any(p.name == "prefect.db" for p in files) and any(p.suffix == ".log" for p in files)
    for path in files:
        data = path.read_bytes()
        found += [f"{name} in {path}" for name, value in needles.items() if value.encode() in data]
    client = secure.mlflow.client(secure.workspace)
    experiment = client.get_experiment_by_name("security")
    texts = [json.dumps([r.data.params, r.data.tags]) for r in client.search_runs([experiment.experiment_id])]
    texts += [json.dumps([v.tags, v.description]) for v in client.search_model_versions("name='churn'")]
    texts += [json.dumps(m.tags) for m in client.search_registered_models()]
    found += [f"{name} in MLflow params or tags" for name, value in needles.items() if any(value in t for t in texts)]
    assert not found, found


def test_up_with_auth_generates_a_private_auth_string_and_every_api_call_uses_it(tmp_path):
    """`prefect-mlops up --auth`: the string is generated into a 0600 file and never printed; deploy, the workers
    and the CLI's own calls all authenticate, an anonymous call gets a 401."""
    import signal
    import stat

    home, port = tmp_path / "up", free_port()
    log = tmp_path / "up.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(OMP_NUM_THREADS="1", PREFECT_MLOPS_WORKSPACE=str(tmp_path / "workspace"))
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(Path(sys.executable).parent / "prefect-mlops"), "up", "--auth", "--home",
                                 str(home), "--port", str(port)], env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + 420
        while "workers online" not in log.read_text() and time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()[-3000:]
            time.sleep(1)
        said = log.read_text()
        assert "workers online" in said, said[-3000:]
        secret_file = home / "prefect" / "auth-string"
        assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
        auth = secret_file.read_text().strip()
        assert auth.startswith("prefect-mlops:") and auth.split(":", 1)[1] not in said
        api_url = f"http://127.0.0.1:{port}/api"
        assert status_of(f"{api_url}/deployments/filter", method="POST", body=b"{}") == 401
        assert status_of(f"{api_url}/deployments/filter", method="POST", body=b"{}", auth=auth) == 200
        with api(api_url, auth):
            from prefect_mlops.cli import wait_for_workers

            wait_for_workers(list(DEFAULT_POOLS), timeout=30)  # the workers logged in with the string
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


@pytest.mark.browser
def test_the_ui_asks_for_the_auth_string_and_works_once_given_it(secure):
    import shutil

    from playwright.sync_api import sync_playwright

    from tests.system.test_ui import CHROMIUM_ARGS

    chromium = shutil.which("chromium")
    assert chromium, "chromium is not installed: run `make browser` (apt-get install -y chromium)"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto(f"{secure.ui_url}/v2/deployments")
            login = page.get_by_placeholder("admin:pass")
            login.wait_for(timeout=30000)
            login.fill(f"{PREFECT_USER}:{SECRET['wrong password']}")
            page.get_by_role("button", name="Login").click()
            page.get_by_text(re.compile("fail|invalid", re.IGNORECASE)).first.wait_for(timeout=15000)
            login.fill(secure.notes["auth"])
            page.get_by_role("button", name="Login").click()
            page.get_by_text("churn-retrain-on-drift").first.wait_for(timeout=30000)  # the API answers the UI
        finally:
            browser.close()
