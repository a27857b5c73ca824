"""The drift monitor's event starts the retrain-on-drift deployment once, with the retrain policy's training
window (not only the window that drifted); a burst of drift events for the same model inside the trigger's
window starts nothing more."""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone

import pytest

from prefect_mlops.demo import period_window
from prefect_mlops.refs import Window
from prefect_mlops.tasks.drift import DRIFT_EVENT, model_resource_id
from tests.system.stack import count_events, drift_event, emit

pytestmark = pytest.mark.system
RETRAIN = "continuous-training/churn-retrain-on-drift"


def test_drift_event_starts_one_retrain_and_a_burst_of_20_more_starts_none(system, scheduled_churn):
    assert system.champion("churn") == "1"
    since = datetime.now(timezone.utc)
    monitor = system.run("drift-monitor/churn", window=period_window(2))

    deadline = time.monotonic() + 120
    runs = []
    while not runs and time.monotonic() < deadline:
        runs = system.runs_of(RETRAIN, since=since)
        time.sleep(0.2)
    assert runs, f"no retrain run within 120 s; drift monitor: {system.read(monitor.id).state}"

    drifted = str(Window.parse(period_window(2)))
    sent = emit([drift_event("churn", drifted) for _ in range(20)], spacing=0.25)
    assert sent[-1] - sent[0] < 10
    time.sleep(6)  # the server creates a run ~0.3 s after an event; give it plenty

    runs = system.runs_of(RETRAIN, since=since)
    assert len(runs) == 1, f"{len(runs)} retrain runs for 21 drift events: {[r.name for r in runs]}"
    deadline = time.monotonic() + 15  # events are stored in batches; every one of the 21 must arrive
    while count_events(DRIFT_EVENT, model_resource_id("churn"), since) < 21 and time.monotonic() < deadline:
        time.sleep(1)
    assert count_events(DRIFT_EVENT, model_resource_id("churn"), since) == 21
    (retrain,) = runs
    assert retrain.created_by is not None and retrain.created_by.type == "AUTOMATION"
    # The retrain policy's window: three monitoring periods back from the drifted period's end.
    policy_window = str(Window(start=datetime(2023, 12, 30), end=datetime(2024, 4, 1)))
    assert retrain.parameters["window"] == policy_window, "the policy's training window was not passed to the run"
    assert retrain.parameters["trigger"] in ("drift", "performance")
    # The trigger passes the event on: recorded in the version's `prefect_mlops.trigger` tag.
    details = retrain.parameters["trigger_details"]
    assert details["event"].startswith("prefect_mlops.") and details["event_id"], details

    monitor = system.wait(monitor.id)
    assert monitor.state.name == "Completed", monitor.state.message
    retrain = system.wait(retrain.id, timeout=300)
    # A verdict either way; never a failure, and the registry agrees with it.
    assert retrain.state.name in ("Completed", "Rejected"), f"{retrain.state.name}: {retrain.state.message}"
    assert system.champion("churn") == ("2" if retrain.state.name == "Completed" else "1")
    if retrain.state.name == "Completed":
        trigger = json.loads(system.version_made_by("churn", retrain.id).tags["prefect_mlops.trigger"])
        assert trigger["kind"] in ("drift", "performance") and trigger["event_id"] == details["event_id"], trigger
    system.notes["retrain"] = retrain
