"""Processes the CLI starts: a Prefect server, workers, and the two together as a stack."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def prefect_exe() -> str:
    """The `prefect` command next to this Python, else the one on PATH."""
    return shutil.which("prefect", path=str(Path(sys.executable).parent)) or shutil.which("prefect") or "prefect"


def quiet_env(home: Path, **extra: str) -> dict[str, str]:
    """An environment for Prefect processes with a private PREFECT_HOME and no telemetry."""
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_CLI_PROMPT": "false", "PYTHONUNBUFFERED": "1", **extra}
    env.pop("PREFECT_PROFILES_PATH", None)
    return env


@dataclass
class Server:
    """A `prefect server start` process on a loopback port."""

    home: Path
    port: int
    database_url: str | None = None
    log_path: Path | None = None
    proc: subprocess.Popen | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    auth_string: str | None = field(default=None, repr=False)  # `user:password`: basic auth on the API

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    @property
    def ui_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client_env(self, **extra: str) -> dict[str, str]:
        """The environment of a client or worker of this server (with its credentials, when it has some)."""
        auth = {"PREFECT_API_AUTH_STRING": self.auth_string} if self.auth_string else {}
        return quiet_env(self.home, PREFECT_API_URL=self.api_url, **auth, **extra)

    def start(self, timeout: float = 120) -> Server:
        with socket.socket() as sock:  # else the health check could be answered by another server
            if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                raise RuntimeError(f"port {self.port} is in use; choose another with --port")
        self.home.mkdir(parents=True, exist_ok=True)
        env = quiet_env(self.home, PREFECT_SERVER_API_HOST="127.0.0.1", PREFECT_SERVER_API_PORT=str(self.port),
                        PREFECT_UI_API_URL=self.api_url, **self.extra_env)
        env.pop("PREFECT_API_URL", None)
        if self.auth_string:  # through the environment, not the command line that `ps` shows
            env["PREFECT_SERVER_API_AUTH_STRING"] = self.auth_string
        if self.database_url:
            env["PREFECT_API_DATABASE_CONNECTION_URL"] = self.database_url
        self.log_path = self.log_path or self.home / "server.log"
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([prefect_exe(), "server", "start", "--host", "127.0.0.1", "--port",
                                      str(self.port)], env=env, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prefect server exited with {self.proc.returncode}; see {self.log_path}")
            try:
                with urllib.request.urlopen(f"{self.api_url}/health", timeout=2) as reply:  # noqa: S310
                    if reply.status == 200:
                        return self
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"prefect server on port {self.port} not healthy after {timeout} s; see {self.log_path}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@contextmanager
def _sigint_not_ignored() -> Iterator[None]:
    """A process started in the background ignores SIGINT and its children inherit that, so a worker
    would ignore the SIGINTs that stop it: let children inherit the default instead."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        yield
        return
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)


@dataclass
class Worker:
    """A `prefect worker start` process for one work pool."""

    pool: str
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen | None = None

    def start(self) -> Worker:
        log = open(self.log_path, "ab")
        with _sigint_not_ignored():
            self.proc = subprocess.Popen([prefect_exe(), "worker", "start", "--pool", self.pool,
                                          "--name", f"{self.pool}-worker-{os.getpid()}"],
                                         env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def stop(self) -> None:
        """SIGINT twice (a worker ignores SIGTERM and finishes its loop on the first SIGINT), then SIGKILL."""
        if not self.proc or self.proc.poll() is not None:
            return
        for _ in range(2):
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(5)
                return
            except subprocess.TimeoutExpired:
                continue
        self.proc.kill()
        self.proc.wait(10)


def wait_for_workers(pools: list[str], timeout: float = 60) -> None:
    """Return once every pool has an online worker."""
    from prefect import get_client

    deadline = time.monotonic() + timeout
    waiting = list(pools)
    with get_client(sync_client=True) as client:
        while waiting and time.monotonic() < deadline:
            waiting = [p for p in waiting if not any(
                str(getattr(w.status, "value", w.status)).upper() == "ONLINE"
                for w in client.read_workers_for_work_pool(p))]
            if waiting:
                time.sleep(0.5)
    if waiting:
        raise TimeoutError(f"no worker came online for work pools {waiting} within {timeout} s")


@contextmanager
def api(url: str, auth_string: str | None = None) -> Iterator[None]:
    """Point this process's Prefect client at a server (with its `user:password`, when it needs one)."""
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    updates: dict[Any, Any] = {PREFECT_API_URL: url}
    if auth_string:
        updates[PREFECT_API_AUTH_STRING] = auth_string
    with temporary_settings(updates=updates):
        yield





@dataclass
class Stack:
    """A server and its workers, started and stopped together."""

    server: Server
    workers: list[Worker] = field(default_factory=list)

    def start_workers(self, pools: list[str], **env: str) -> None:
        worker_env = self.server.client_env(PREFECT_WORKER_QUERY_SECONDS=env.pop("query_seconds", "2"), **env)
        for pool in pools:
            self.workers.append(Worker(pool, worker_env, self.server.home / f"worker-{pool}.log").start())
        with api(self.server.api_url, self.server.auth_string):
            wait_for_workers(pools)

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()
        self.server.stop()


def _exit_on_first_sigterm(*_: Any) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.exit(143)


def start_stack(home: Path, database_url: str | None, port: int | None = None, auth_string: str | None = None) -> Stack:
    # SIGTERM (kill, a service manager) stops the stack like Ctrl-C does, through the caller's `finally`;
    # a second one must not cut that cleanup short.
    signal.signal(signal.SIGTERM, _exit_on_first_sigterm)
    from prefect_mlops.cli.database import ensure_database

    made = ensure_database(database_url)  # else the server exits with 3, saying so only in its log
    if made:
        print(made, flush=True)
    server = Server(home=home / "prefect", port=port or free_port(), database_url=database_url,
                    auth_string=auth_string)
    print(f"starting Prefect server on {server.ui_url} ({'PostgreSQL' if database_url else 'SQLite'}"
          f"{', basic auth' if auth_string else ''}) ...", flush=True)
    return Stack(server.start())




@contextmanager
def stopped_on_exit(stack: Stack) -> Iterator[None]:
    """Stop `stack` however the block ends; Ctrl-C ends it quietly, and a second one cannot cut the cleanup short."""
    try:
        yield
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        print("\nstopping ...")
    finally:
        stack.stop()


def wait_forever() -> None:
    """Block until a signal ends the process (Ctrl-C, or SIGTERM through `start_stack`'s handler)."""
    while True:
        time.sleep(3600)
