"""drift-check: Evidently per-column tests, drift share, the HTML report, and the Prefect event."""

from __future__ import annotations

import pytest
from prefect import flow

from prefect_mlops.demo import period_window
from prefect_mlops.errors import DriftCheckError
from prefect_mlops.tasks.drift import DRIFT_EVENT, check_drift, drift_check, model_resource_id
from prefect_mlops.tasks.ingest import ingest_dataset

COLUMNS = ["tenure_months", "monthly_spend", "support_calls", "usage_hours", "plan", "channel"]


@pytest.fixture
def periods(churn_source, workspace):
    return [ingest_dataset(churn_source, name=f"p{p}", window=period_window(p), workspace=workspace)
            for p in range(3)]


def test_stable_period_shows_no_drift(periods, workspace):
    report = check_drift(periods[1], periods[0], model_name="churn", columns=COLUMNS, workspace=workspace)
    assert not report.detected and report.drift_share < 0.5
    assert {c.column for c in report.columns} == set(COLUMNS)


def test_drifted_period_names_the_drifted_columns_and_saves_html(periods, workspace):
    report = check_drift(periods[2], periods[0], model_name="churn", columns=COLUMNS, workspace=workspace)
    assert report.detected and report.drift_share >= 0.5
    assert {"tenure_months", "support_calls", "plan"} <= set(report.drifted_columns)
    assert "channel" not in report.drifted_columns
    html = open(report.report_path).read()
    assert html.lstrip().lower().startswith("<!doctype html") or "<html" in html[:500].lower()
    assert report.drift_share == pytest.approx(len(report.drifted_columns) / len(COLUMNS))


def test_missing_column_in_current_data_is_named(periods, workspace):
    with pytest.raises(DriftCheckError, match=r"lacks columns \['nope'\]"):
        check_drift(periods[1], periods[0], model_name="churn", columns=["nope"], workspace=workspace)


def test_task_emits_the_drift_event_with_the_model_as_resource(periods, workspace):
    from prefect.events.clients import AssertingEventsClient  # noqa: F401  (ensures the events API is present)
    from prefect.events.worker import EventsWorker

    seen = []
    original = EventsWorker.send

    def capture(self, event):
        seen.append(event)
        return original(self, event)

    EventsWorker.send = capture
    try:
        @flow
        def monitor():
            return drift_check(periods[2], periods[0], "churn", COLUMNS, workspace=str(workspace.root))
        report = monitor()
    finally:
        EventsWorker.send = original
    drift_events = [e for e in seen if e.event == DRIFT_EVENT]
    assert report.detected and len(drift_events) == 1
    event = drift_events[0]
    assert event.resource.id == model_resource_id("churn")
    assert event.payload["drift_share"] == report.drift_share
    assert event.payload["drifted_columns"] == report.drifted_columns
    assert event.payload["window"] == periods[2].window
