"""Automations created by `prefect-mlops deploy` send promotion, gate-rejection, drift and failure
messages through the notification block (a webhook to a receiver run by the test)."""

from __future__ import annotations

import pytest

from prefect_mlops.demo import period_window
from tests.system.stack import drift_event, emit

pytestmark = pytest.mark.system
FAST = {"estimator": "sklearn.linear_model.LogisticRegression", "params": {"max_iter": 200}}


def test_promotion_rejection_drift_and_failure_are_notified(system):
    receiver = system.receiver
    failed = system.run("continuous-training/churn", model_name="notify-failed", window="not-a-window")
    promoted = system.run("continuous-training/churn", model_name="notify-promoted", window=period_window(0),
                          trainer=FAST)
    rejected = system.run("continuous-training/churn", model_name="notify-rejected", window=period_window(0),
                          trainer=FAST, policy={"first_run": "reject"})
    emit([drift_event("notify-drift", "2024-03-01T00:00:00/2024-04-01T00:00:00") for _ in range(3)])

    drift = receiver.wait_for(lambda m: "drift detected for notify-drift" in m.get("subject", ""))
    assert "2024-03-01T00:00:00/2024-04-01T00:00:00" in drift["body"] and "tenure_months" in drift["body"]

    assert system.wait(promoted.id, timeout=300).state.name == "Completed"
    message = receiver.wait_for(lambda m: str(promoted.id) in m.get("body", ""))
    assert message["subject"] == "prefect-mlops: notify-promoted promoted a new champion"

    assert system.wait(failed.id).state.name == "Failed"
    failure = receiver.wait_for(lambda m: str(failed.id) in m.get("body", "") and "Failed" in m.get("subject", ""))
    assert "not-a-window" in failure["body"]

    run = system.wait(rejected.id, timeout=300)
    assert run.state.name == "Rejected", f"{run.state.name}: {run.state.message}"
    rejection = receiver.wait_for(lambda m: "gate rejected the challenger of notify-rejected" in m.get("subject", ""))
    assert "first-run policy" in rejection["body"] and str(rejected.id) in rejection["body"]
    assert not [m for m in receiver.messages if "notify-rejected promoted" in m.get("subject", "")]
    # One drift alert per model per hour, like the retraining it starts.
    assert len([m for m in receiver.messages if "drift detected for notify-drift" in m.get("subject", "")]) == 1
