"""The fleet's fan-out on a real 2-worker Dask LocalCluster: same decisions as one after another,
work on both workers, a failed model reported as failed beside the others' reports."""

from __future__ import annotations

import os

from prefect_mlops.demo import period_window
from prefect_mlops.flows import continuous_training, drift_monitor
from prefect_mlops.flows.fleet import FleetModel, monitor_models


def decisions(report):
    """What a drift monitor decided, without the report's file name (it carries a time stamp)."""
    drift = report.drift
    return (drift.decision, drift.drift_share, drift.drifted_columns,
            [(c.column, c.decision, c.effect, c.p_adjusted) for c in drift.columns],
            report.decision.retrain if report.decision else None,
            report.decision.trigger if report.decision else None)


def test_fleet_on_two_workers_decides_as_the_sequential_run_and_reports_a_failed_model(
        churn_source, churn_features, fast_trainer, policy, mlflow_server, workspace):
    common = {"mlflow_server": mlflow_server, "workspace": str(workspace.root)}
    for name in ("churn-a", "churn-b"):
        first = continuous_training(name, churn_source, churn_features, fast_trainer, policy=policy,
                                    window=period_window(0), **common)
        assert first.outcome == "promoted"
    fleet = [FleetModel(model_name="churn-a", source=churn_source, window=period_window(1)),
             FleetModel(model_name="churn-b", source=churn_source, window=period_window(2)),
             FleetModel(model_name="no-champion", source=churn_source, window=period_window(2))]

    report = monitor_models(fleet, n_workers=2, **common)

    sequential = {m.model_name: drift_monitor(m.model_name, m.source, window=m.window, **common)
                  for m in fleet[:2]}
    outcomes = {o.model_name: o for o in report.outcomes}
    assert [o.model_name for o in report.outcomes] == ["churn-a", "churn-b", "no-champion"]
    for name, alone in sequential.items():
        assert outcomes[name].status == "done"
        assert decisions(outcomes[name].monitor) == decisions(alone)
    assert not outcomes["churn-a"].monitor.drift.detected and outcomes["churn-b"].monitor.drift.detected
    assert report.drifted == ["churn-b"] and report.failed == ["no-champion"]
    assert report.cluster == "LocalCluster(2 workers)"
    # The two monitors ran at once, one on each worker process, neither in this process.
    workers = {outcomes[n].worker for n in sequential}
    pids = {outcomes[n].pid for n in sequential}
    assert len(workers) == 2 and all(w.startswith("tcp://") for w in workers)
    assert len(pids) == 2 and os.getpid() not in pids
    failed = outcomes["no-champion"]
    assert failed.monitor is None and "DriftCheckError" in failed.error and "no-champion" in failed.error
