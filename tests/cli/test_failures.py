"""Failures that used to mislead: each now stops at once, naming the thing and what to do."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from prefect_mlops.cli import free_port, main


def test_deploy_refuses_without_a_prefect_api():
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(restore_defaults={PREFECT_API_URL}), \
            pytest.raises(SystemExit, match="PREFECT_API_URL is not set") as stopped:
        main(["deploy"])
    assert "export PREFECT_API_URL=" in str(stopped.value.code) and "prefect-mlops up" in str(stopped.value.code)


def test_deploy_names_a_dead_api_in_one_line():
    from prefect.settings import PREFECT_API_URL, temporary_settings

    url = f"http://127.0.0.1:{free_port()}/api"
    with temporary_settings(updates={PREFECT_API_URL: url}), \
            pytest.raises(SystemExit, match=f"cannot reach the Prefect API at {url}") as stopped:
        main(["deploy"])
    assert "\n" not in str(stopped.value.code) and "prefect-mlops up" in str(stopped.value.code)


def test_unset_variable_in_the_deploy_config_is_refused_naming_it_and_the_file(tmp_path, monkeypatch):
    from prefect_mlops.cli.deploy import read_config

    monkeypatch.delenv("H11_WEBHOOK", raising=False)
    monkeypatch.setenv("H11_SET", "https://hooks.example/x")
    config = tmp_path / "config.yaml"
    config.write_text("# `${H11_IN_A_COMMENT}` is documentation, not read\n"
                      "blocks:\n  slack-webhook:\n    alerts:\n      url: ${H11_WEBHOOK}\n"
                      "    other:\n      url: ${H11_SET}\n")
    with pytest.raises(SystemExit, match=r"config.yaml: \$\{H11_WEBHOOK\} \(line 5\) is not set in the environment"):
        read_config(config)
    monkeypatch.setenv("H11_WEBHOOK", "https://hooks.example/y")
    assert read_config(config)["blocks"]["slack-webhook"]["alerts"]["url"] == "https://hooks.example/y"


def test_s3_without_credentials_says_they_are_missing_not_the_endpoint(monkeypatch, workspace):
    from prefect_mlops.blocks import DataSource
    from prefect_mlops.errors import DataSourceError
    from prefect_mlops.tasks.ingest import ingest_dataset

    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    source = DataSource(uri="s3://lake/churn.parquet", s3_endpoint_url=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(DataSourceError, match="no S3 credentials were found") as caught:
        ingest_dataset(source, workspace=workspace)
    assert "s3_endpoint_url" not in str(caught.value) and "AWS_ACCESS_KEY_ID" in str(caught.value)
    half = source.model_copy(update={"aws_access_key_id": "AKIAEXAMPLE"})
    with pytest.raises(DataSourceError, match="credentials are incomplete.*aws_secret_access_key"):
        ingest_dataset(half, workspace=workspace)


def _timeout_in_fresh_process(env: dict[str, str]) -> str:
    code = ("import prefect_mlops.flows\n"
            "from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS as S\n"
            "print(S.value())")
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_SERVER_EPHEMERAL")}
    done = subprocess.run([sys.executable, "-c", code], env={**clean, **env}, capture_output=True, text=True,
                          timeout=120, check=True)
    return done.stdout.strip()


def test_the_embedded_api_gets_time_to_start_unless_the_user_chose(tmp_path):
    from prefect_mlops.console import EMBEDDED_API_TIMEOUT_S

    home = {"PREFECT_HOME": str(tmp_path)}
    assert _timeout_in_fresh_process(home) == str(EMBEDDED_API_TIMEOUT_S)  # Prefect's own default is 20
    assert _timeout_in_fresh_process({**home, "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "45"}) == "45"
    profiles = tmp_path / "profiles.toml"
    profiles.write_text('active = "mine"\n[profiles.mine]\nPREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS = "33"\n')
    assert _timeout_in_fresh_process({**home, "PREFECT_PROFILES_PATH": str(profiles)}) == "33"


def _psql(sql: str) -> None:
    subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-qc",
                    sql], check=True, capture_output=True, timeout=30)


@pytest.mark.system
def test_a_missing_postgres_database_is_created():
    from prefect_mlops.cli.database import ensure_database

    name = f"prefect_mlops_test_{os.getpid()}"
    url = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    _psql(f"DROP DATABASE IF EXISTS {name}")
    try:
        assert ensure_database(url) == f"created database {name!r} on the PostgreSQL server at 127.0.0.1:5432"
        assert ensure_database(url) is None  # there now: nothing to do
    finally:
        _psql(f"DROP DATABASE IF EXISTS {name}")


@pytest.mark.system
def test_a_database_the_user_may_not_create_comes_with_the_command_to_create_it():
    from prefect_mlops.cli.database import ensure_database

    role, name = f"nocreate_{os.getpid()}", f"prefect_mlops_test_nc_{os.getpid()}"
    _psql(f"DROP ROLE IF EXISTS {role}; CREATE ROLE {role} LOGIN NOCREATEDB")
    try:
        with pytest.raises(SystemExit, match=f"could not create it .*createdb -h 127.0.0.1 -p 5432 -U {role} {name}"):
            ensure_database(f"postgresql+asyncpg://{role}@127.0.0.1:5432/{name}")
    finally:
        _psql(f"DROP ROLE IF EXISTS {role}")
