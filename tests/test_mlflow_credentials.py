"""The MLflow Server block's credentials go to its own server only, and never into the process environment.

Two tiny HTTP servers on 127.0.0.1 stand in for tracking servers and record the Authorization
header of every request MLflow's client sends them (the live basic-auth server is in
tests/system/test_security.py).
"""

from __future__ import annotations

import base64
import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from prefect_mlops.blocks import MlflowServer
from prefect_mlops.errors import ConfigError


class Recorder:
    """Answers every MLflow call with 'no such experiment' and keeps the Authorization headers it saw."""

    def __init__(self) -> None:
        seen: list[str | None] = []
        self.seen = seen

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                seen.append(self.headers.get("Authorization"))
                body = json.dumps({"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "no"}).encode()
                self.send_response(404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def recorders():
    made = [Recorder(), Recorder()]
    yield made
    for recorder in made:
        recorder.stop()


def test_each_block_sends_its_credentials_to_its_own_server_only(recorders):
    mine, other = recorders
    password = "p4ss-only-for-mine"
    MlflowServer(tracking_uri=mine.url, username="admin", password=password).client().get_experiment_by_name("x")
    MlflowServer(tracking_uri=other.url).client().get_experiment_by_name("x")
    MlflowServer(tracking_uri=other.url, token="t0ken-for-other").client().get_experiment_by_name("x")
    assert mine.seen == [f"Basic {base64.b64encode(f'admin:{password}'.encode()).decode()}"]
    assert other.seen == [None, "Bearer t0ken-for-other"]
    MlflowServer(tracking_uri=other.url).client().get_experiment_by_name("x")  # a block without credentials
    assert other.seen[-1] is None
    assert not any(password in value or "t0ken-for-other" in value for value in os.environ.values())
    assert "MLFLOW_TRACKING_PASSWORD" not in os.environ and "MLFLOW_TRACKING_TOKEN" not in os.environ


def test_a_username_without_a_password_is_a_config_error(recorders):
    with pytest.raises(ConfigError, match="basic auth needs both username and password"):
        MlflowServer(tracking_uri=recorders[0].url, username="admin").client()


def test_a_child_process_started_after_a_client_call_inherits_a_working_auth_setting(recorders, tmp_path):
    import subprocess
    import sys

    mine, other = recorders
    MlflowServer(tracking_uri=mine.url, username="admin", password="p4ss-parent").client().get_experiment_by_name("x")
    assert os.environ["MLFLOW_TRACKING_AUTH"] == "prefect-mlops"  # the plugin's name, the one thing a child inherits
    script = ("import sys; from mlflow import MlflowClient\n"
              "for url in sys.argv[1:]: MlflowClient(tracking_uri=url).get_experiment_by_name('x')\n")
    done = subprocess.run([sys.executable, "-c", script, mine.url, other.url], capture_output=True, text=True,
                          timeout=120, check=False, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    # The name resolves there (the entry point), and the parent's credentials stay in the parent.
    assert "Could not find any registered plugin" not in done.stderr, done.stderr[-2000:]
    assert mine.seen[1:] == [None] and other.seen == [None]
