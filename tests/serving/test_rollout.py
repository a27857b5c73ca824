"""Canary deploys and the progressive-rollout flow against a real service and registry."""

from __future__ import annotations

import os
import threading
import uuid
from pathlib import Path

import httpx
import pandas as pd
import pytest

from prefect_mlops.errors import GateNotPassedError
from prefect_mlops.flows.progressive_rollout import progressive_rollout
from prefect_mlops.refs import ModelRef
from prefect_mlops.tasks.lineage import TrainerSpec
from prefect_mlops.tasks.reconcile import CANARY, CHAMPION, PREVIOUS, STATUS_TAG, read_aliases, reconcile_model
from prefect_mlops.tasks.register import register_version
from prefect_mlops.tasks.rollout import read_history, start_trial
from tests.serving.conftest import FEATURES, LENIENT, RECORD, serve
from tests.serving.faulty import BreakableClassifier
from tests.tasks.stages import train_and_judge

pytestmark = pytest.mark.system


def on_canary(registry, period: int, estimator: str = "sklearn.linear_model.LogisticRegression") -> str:
    cycle = train_and_judge(registry.source, FEATURES, TrainerSpec(estimator=estimator, params={"max_iter": 300}),
                            server=registry.server, workspace=registry.workspace,
                            window=f"2024-0{period + 1}-01/2024-0{period + 2}-01", policy=LENIENT)
    model = register_version(cycle.trained, cycle.verdict, cycle.evaluation, mlflow_server=registry.server,
                             workspace=registry.workspace)
    champion = str(registry.client.get_model_version_by_alias("churn", CHAMPION).version)
    trial = start_trial(model, cycle.evaluation, cycle.verdict, strategy="canary", mlflow_server=registry.server,
                        workspace=registry.workspace)
    assert (trial.trial, trial.trial_version, trial.champion_version) == ("canary", model.version, champion)
    return model.version


class Traffic:
    """Clients sending requests with fresh keys until stopped; every answer kept."""

    def __init__(self, url: str, clients: int = 3) -> None:
        self.url, self.answers, self.stop = url, [], threading.Event()
        self.threads = [threading.Thread(target=self._run) for _ in range(clients)]

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as client:
            while not self.stop.is_set():
                self.answers.append(client.post("/predict", json={"key": uuid.uuid4().hex, "records": [RECORD]}))

    def __enter__(self) -> Traffic:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self.threads:
            t.join()


def rollout(svc, **overrides):
    return progressive_rollout(model_name="churn", service_url=svc.url, steps=[0.05, 0.25, 1.0],
                               step_seconds=60, min_requests=15,
                               mlflow_server=overrides.pop("mlflow_server"), workspace=overrides.pop("workspace"),
                               **overrides)


def test_a_canary_needs_a_passed_verdict(registry):
    cycle = train_and_judge(registry.source, FEATURES, TrainerSpec(estimator="sklearn.dummy.DummyClassifier"),
                            server=registry.server, workspace=registry.workspace, window="2024-02-01/2024-03-01")
    assert not cycle.verdict.passed
    with pytest.raises(GateNotPassedError, match=r"deploy \(canary\) refused: the gate rejected run"):
        start_trial(ModelRef(name="churn", version="99", run_id=cycle.trained.run_id, source="unregistered"),
                    cycle.evaluation, cycle.verdict, strategy="canary", mlflow_server=registry.server,
                    workspace=registry.workspace)
    assert CANARY not in (registry.client.get_registered_model("churn").aliases or {})


def test_progressive_rollout_promotes_a_good_canary_step_by_step(registry):
    registry.client.set_registered_model_alias("churn", CHAMPION, "1")
    version = on_canary(registry, 1)
    assert reconcile_model(registry.client, "churn").actions == []  # on trial, not "left by a killed run"
    with serve(registry) as svc, Traffic(svc.url) as traffic:
        report = rollout(svc, mlflow_server=registry.server, workspace=str(registry.workspace.root))
    assert report.outcome == "promoted" and report.version == version, report
    assert [s.decision for s in report.steps] == ["advance", "advance"]
    assert read_aliases(registry.client, "churn") == {CHAMPION: version, PREVIOUS: "1"}
    assert CANARY not in (registry.client.get_registered_model("churn").aliases or {})
    history = read_history(registry.client, "churn")
    assert [(s.action, s.share) for s in history[-4:]] == [("canary", 0.05), ("advance", 0.05), ("advance", 0.25),
                                                            ("promote", 1.0)]
    assert [a.status_code for a in traffic.answers if a.status_code != 200] == []
    assert {a.json()["alias"] for a in traffic.answers} == {CHAMPION, CANARY}
    assert reconcile_model(registry.client, "churn").actions == []


def test_progressive_rollout_rolls_back_a_canary_that_errors(registry):
    champion = str(registry.client.get_model_version_by_alias("churn", CHAMPION).version)
    version = on_canary(registry, 2, estimator="tests.serving.faulty.BreakableClassifier")
    BreakableClassifier.broken = True  # reaches the served copy: the class is looked up by reference
    try:
        with serve(registry) as svc, Traffic(svc.url) as traffic:
            report = rollout(svc, mlflow_server=registry.server, workspace=str(registry.workspace.root))
    finally:
        BreakableClassifier.broken = False
    assert report.outcome == "rolled-back" and report.version == version, report
    assert "error rate" in report.reason
    assert read_aliases(registry.client, "churn")[CHAMPION] == champion
    assert CANARY not in (registry.client.get_registered_model("churn").aliases or {})
    tags = registry.client.get_model_version("churn", version).tags
    assert tags[STATUS_TAG] == "failed"
    assert read_history(registry.client, "churn")[-1].action == "rollback"
    # the canary's users were answered by the champion: nobody saw its errors
    assert [a.status_code for a in traffic.answers if a.status_code != 200] == []
    assert {a.json()["model_version"] for a in traffic.answers} == {champion}


def test_continuous_training_with_the_canary_strategy_leaves_the_champion_and_starts_a_canary(registry):
    from prefect_mlops.blocks import ModelPolicy
    from prefect_mlops.flows.continuous_training import continuous_training

    champion = str(registry.client.get_model_version_by_alias("churn", CHAMPION).version)
    report = continuous_training(
        model_name="churn", source=registry.source, features=FEATURES,
        trainer=TrainerSpec(estimator="sklearn.linear_model.LogisticRegression", params={"C": 0.7, "max_iter": 300}),
        policy=ModelPolicy(max_drop=1.0, promote_when="not-worse", deploy_strategy="canary"),
        window="2024-02-01/2024-04-01", mlflow_server=registry.server, workspace=str(registry.workspace.root))
    assert report.outcome == "on-trial" and "on trial as @canary" in report.message
    aliases = registry.client.get_registered_model("churn").aliases
    assert str(aliases[CHAMPION]) == champion and str(aliases[CANARY]) == report.challenger_version
    assert registry.client.get_registered_model("churn").tags["prefect_mlops.canary.share"] == "0.05"


class LabelledTraffic(Traffic):
    """Traffic whose labels arrive as it runs: every champion answer is labelled right, every canary answer wrong.

    The labels file is replaced whole (atomically) as it grows, as a labelling job would publish it.
    """

    def __init__(self, url: str, labels: Path) -> None:
        super().__init__(url)
        self.labels, self.lock, self.rows = labels, threading.Lock(), []
        pd.DataFrame({"request_id": [], "churned": []}).to_csv(labels, index=False)

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as client:
            while not self.stop.is_set():
                answer = client.post("/predict", json={"request_id": uuid.uuid4().hex, "records": [RECORD]})
                self.answers.append(answer)
                if answer.status_code != 200:
                    continue
                body = answer.json()
                predicted = int(body["predictions"][0])
                with self.lock:
                    self.rows.append((body["request_id"], predicted if body["alias"] == CHAMPION else 1 - predicted))
                    if len(self.rows) % 10 == 0:
                        part = self.labels.with_suffix(".part")
                        pd.DataFrame(self.rows, columns=["request_id", "churned"]).to_csv(part, index=False)
                        os.replace(part, self.labels)


def test_progressive_rollout_rolls_back_a_canary_that_is_worse_on_labels(registry, tmp_path):
    from prefect_mlops.blocks import DataSource

    champion = str(registry.client.get_model_version_by_alias("churn", CHAMPION).version)
    version = on_canary(registry, 1)
    labels = tmp_path / "labels.csv"
    with serve(registry) as svc, LabelledTraffic(svc.url, labels) as traffic:
        report = progressive_rollout(
            model_name="churn", service_url=svc.url, steps=[0.25, 0.5, 1.0], step_seconds=60, min_requests=60,
            labels=DataSource(uri=str(labels)), prediction_log=svc.service.log.root,
            mlflow_server=registry.server, workspace=str(registry.workspace.root))
    assert traffic.rows, "no labelled answers"
    assert report.outcome == "rolled-back" and report.version == version, report
    assert "on labelled predictions the canary's error" in report.reason, report.reason
    stats = report.steps[-1].stats
    assert stats["canary_labelled_error"] > stats["champion_labelled_error"]
    assert read_aliases(registry.client, "churn")[CHAMPION] == champion
    assert CANARY not in (registry.client.get_registered_model("churn").aliases or {})
    assert registry.client.get_model_version("churn", version).tags[STATUS_TAG] == "failed"
