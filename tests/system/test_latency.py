"""Latencies on this machine: drift event -> retraining run Running, and run_deployment -> child Running.

Each probe runs the real deployment on the real pool and fails on purpose right after it starts
(an invalid window or recipe digest), so the next probe finds the deployment's slot free.
"""

from __future__ import annotations

import statistics
import time
import uuid
from datetime import timedelta

import pytest

from prefect_mlops.tasks.drift import DRIFT_EVENT
from tests.system.stack import drift_event, emit, median_and_all, record, running_at

pytestmark = [pytest.mark.system, pytest.mark.slow]
PROBES = 10


def test_drift_event_to_retraining_running(system):
    from prefect.automations import Automation, EventTrigger, RunDeployment

    retrain = system.deployment("continuous-training/churn-retrain-on-drift")
    probe = Automation(
        name="system-test latency probe",
        trigger=EventTrigger(expect={DRIFT_EVENT}, match={"prefect.resource.id": "prefect-mlops.model.latency-*"},
                             for_each={"prefect.resource.id"}, posture="Reactive", threshold=1,
                             within=timedelta(seconds=3600)),
        actions=[RunDeployment(source="selected", deployment_id=retrain.id,
                               parameters={"model_name": "latency-probe", "window": "not-a-window"})],
    ).create()
    time.sleep(2)  # the triggers service loads new automations
    latencies = []
    try:
        for _ in range(PROBES):
            model = f"latency-{uuid.uuid4().hex[:8]}"
            known = {r.id for r in system.runs_of("continuous-training/churn-retrain-on-drift")}
            (sent,) = emit([drift_event(model, "latest")])
            deadline = time.monotonic() + 60
            new = []
            while not new and time.monotonic() < deadline:
                new = [r for r in system.runs_of("continuous-training/churn-retrain-on-drift") if r.id not in known]
                time.sleep(0.2)
            assert new, "the probe automation started no run"
            run = system.wait(new[0].id, timeout=120)
            assert run.state.name == "Failed" and "not-a-window" in run.state.message
            latencies.append(running_at(system, run.id) - sent)
    finally:
        probe.delete()
    record("drift event -> retraining run Running (s)", median_and_all(latencies))
    assert statistics.median(latencies) < 30


def test_run_deployment_to_child_running(system, scheduled_churn):
    from prefect.deployments import run_deployment

    (child,) = [r for r in system.runs_of("train-on-pool/gpu")
                if r.parameters["lineage"]["flow_run_id"] == str(scheduled_churn.id) and r.parent_task_run_id]
    parameters = dict(child.parameters)
    parameters["lineage"] = {**parameters["lineage"], "params_digest": "latency-probe",  # fails at once
                             "flow_run_id": None}
    latencies = []
    for _ in range(PROBES):
        started = time.time()
        run = run_deployment("train-on-pool/gpu", parameters=parameters, job_variables=child.job_variables,
                             timeout=0, as_subflow=False)
        run = system.wait(run.id, timeout=120)
        assert run.state.name == "Failed" and "params_digest" in run.state.message
        latencies.append(running_at(system, run.id) - started)
    record("run_deployment -> child Running (s)", median_and_all(latencies))
    assert statistics.median(latencies) < 30
