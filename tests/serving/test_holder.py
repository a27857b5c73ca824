"""The model holder: a load failure that may pass is tried again; one that cannot pass is not."""

from __future__ import annotations

import time
from pathlib import Path

from prefect_mlops.serving.holder import ModelHolder
from prefect_mlops.tasks.reconcile import CANARY, CHAMPION


def refresh_until(holder: ModelHolder, alias: str, version: str, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while holder.refresh().version(alias) != version:
        assert time.monotonic() < deadline, f"@{alias} v{version} not served: {holder.state.problems}"
        time.sleep(0.05)


def test_a_champion_whose_files_were_briefly_away_is_served_once_they_are_back(registry):
    client = registry.client
    client.set_registered_model_alias("churn", CHAMPION, "1")
    version = registry.challenger(1)
    holder = ModelHolder("churn", mlflow_server=registry.server, workspace=registry.workspace, poll_seconds=0.05)
    refresh_until(holder, CHAMPION, "1")
    folder = Path(client.get_model_version("churn", version).source.removeprefix("file://"))
    away = folder.with_name(folder.name + ".away")
    folder.rename(away)  # an unmounted share, a restore in progress: the registry is right, the files are not there
    try:
        client.set_registered_model_alias("churn", CHAMPION, version)
        state = holder.refresh()
        assert state.version(CHAMPION) == "1"
        assert "not found" in state.problems[CHAMPION] and "trying again in" in state.problems[CHAMPION]
        assert "still serving v1" in state.problems[CHAMPION]
    finally:
        away.rename(folder)
    refresh_until(holder, CHAMPION, version)
    assert holder.state.problems == {}


def test_a_corrupt_canary_is_not_loaded_again_on_every_poll(registry, monkeypatch):
    client = registry.client
    client.set_registered_model_alias("churn", CHAMPION, "1")
    corrupt = registry.corrupt_copy("1")
    holder = ModelHolder("churn", mlflow_server=registry.server, workspace=registry.workspace, poll_seconds=0.01)
    refresh_until(holder, CHAMPION, "1")
    client.set_registered_model_alias("churn", CANARY, corrupt)
    try:
        loads: list[str] = []
        real = type(registry.server).load_model
        monkeypatch.setattr(type(registry.server), "load_model",
                            lambda self, source, *a, **k: loads.append(source) or real(self, source, *a, **k))
        for _ in range(5):
            state = holder.refresh()
            time.sleep(0.02)
        assert state.version(CANARY) is None and "sha256" in state.problems[CANARY]
        assert "trying again" not in state.problems[CANARY]
        assert len(loads) == 1
    finally:
        client.delete_registered_model_alias("churn", CANARY)
