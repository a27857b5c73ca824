"""The fan-out on real 2-worker Dask LocalClusters: the fleet decides as the models run one after another,
on both workers, with a failed model reported beside the others; the model lock holds across workers; wide
data's column groups give the same report as one drift check."""

from __future__ import annotations

import os
import time

import numpy as np
import pandas as pd
import pytest
from prefect import flow, task

from prefect_mlops.demo import period_window
from prefect_mlops.flows import drift_monitor
from prefect_mlops.flows.fleet import FleetModel, dask_task_runner, drift_check_columns, monitor_models
from prefect_mlops.tasks.drift import check_drift
from prefect_mlops.tasks.reconcile import model_lock
from tests.tasks.stages import promote_cycle, train_and_judge


@pytest.fixture(scope="module")
def cluster_address():
    """A running 2-process cluster reached by its address, as a real one would be."""
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None) as cluster:
        yield cluster.scheduler_address


def decisions(report):
    """What a drift monitor decided, without the report's file name (it carries a time stamp)."""
    drift = report.drift
    return (drift.decision, drift.drift_share, drift.drifted_columns,
            [(c.column, c.decision, c.effect, c.p_adjusted) for c in drift.columns],
            report.decision.retrain if report.decision else None,
            report.decision.trigger if report.decision else None)


def test_fleet_on_two_workers_decides_as_the_sequential_run_and_reports_a_failed_model(
        cluster_address, churn_source, churn_features, fast_trainer, policy, mlflow_server, workspace):
    common = {"mlflow_server": mlflow_server, "workspace": str(workspace.root)}
    for name in ("churn-a", "churn-b"):  # the stages' plain functions: a champion without a flow run's costs
        cycle = train_and_judge(churn_source, churn_features, fast_trainer, server=mlflow_server,
                                workspace=workspace, window=period_window(0), policy=policy, name=name)
        promote_cycle(cycle, server=mlflow_server, workspace=workspace)
    fleet = [FleetModel(model_name="churn-a", source=churn_source, window=period_window(1)),
             FleetModel(model_name="churn-b", source=churn_source, window=period_window(2)),
             FleetModel(model_name="no-champion", source=churn_source, window=period_window(2))]

    state = monitor_models(fleet, address=cluster_address, return_state=True, **common)
    assert state.is_completed() and state.name == "Partial" and "no-champion" in state.message
    report = state.result()

    sequential = {m.model_name: drift_monitor(m.model_name, m.source, window=m.window, **common)
                  for m in fleet[:2]}
    outcomes = {o.model_name: o for o in report.outcomes}
    assert [o.model_name for o in report.outcomes] == ["churn-a", "churn-b", "no-champion"]
    for name, alone in sequential.items():
        assert outcomes[name].status == "done"
        assert decisions(outcomes[name].monitor) == decisions(alone)
    assert not outcomes["churn-a"].monitor.drift.detected and outcomes["churn-b"].monitor.drift.detected
    assert report.drifted == ["churn-b"] and report.failed == ["no-champion"]
    assert report.cluster == cluster_address
    # The two monitors ran at once, one on each worker process, neither in this process.
    workers = {outcomes[n].worker for n in sequential}
    pids = {outcomes[n].pid for n in sequential}
    assert len(workers) == 2 and all(w.startswith("tcp://") for w in workers)
    assert {outcomes[n].worker_name for n in sequential} == {"0", "1"}  # LocalCluster names its workers 0, 1
    assert len(pids) == 2 and os.getpid() not in pids
    failed = outcomes["no-champion"]
    assert failed.monitor is None and "DriftCheckError" in failed.error and "no-champion" in failed.error

    everyone_failed = monitor_models(fleet[2:], address=cluster_address, return_state=True, **common)
    assert everyone_failed.is_failed() and "no-champion: " in everyone_failed.message


@task
def hold_the_lock(model_name: str, seconds: float) -> tuple[int, float, float]:
    with model_lock(model_name, timeout=120):
        start = time.monotonic()
        time.sleep(seconds)
        return os.getpid(), start, time.monotonic()


@flow
def two_holders(address: str) -> list[tuple[int, float, float]]:
    with dask_task_runner(address) as runner:
        futures = [runner.submit(hold_the_lock, {"model_name": "fleet-lock", "seconds": 1.0}) for _ in range(2)]
        return [future.result() for future in futures]


def test_the_model_lock_serialises_holders_on_different_workers(cluster_address):
    (pid_a, _, end_a), (pid_b, start_b, _) = sorted(two_holders(cluster_address), key=lambda h: h[1])
    assert pid_a != pid_b  # one holder per worker process
    assert start_b >= end_a  # CLOCK_MONOTONIC is one clock for every process on the machine


def test_column_groups_on_a_local_cluster_give_the_report_of_one_drift_check(workspace):
    rng = np.random.default_rng(7)
    n, width = 2000, 24
    reference = pd.DataFrame({f"x{i}": rng.normal(size=n) for i in range(width)} | {"plan": rng.choice(
        ["a", "b", "c"], n)})
    current = reference.copy()
    for i in range(0, width, 3):  # every third column shifts by half a standard deviation
        current[f"x{i}"] = rng.normal(0.5, 1, n)
    current["plan"] = rng.choice(["a", "b", "c"], n, p=[0.6, 0.3, 0.1])
    ref = workspace.write_snapshot(reference, name="wide-ref")
    cur = workspace.write_snapshot(current, name="wide-cur")
    columns = list(reference.columns)

    fanned = drift_check_columns(cur, ref, "wide", columns, columns_per_task=5, n_workers=2,
                                 workspace=str(workspace.root))
    alone = check_drift(cur, ref, model_name="wide", columns=columns, workspace=workspace)

    assert fanned.decision == alone.decision == "stable"  # 9 of 25 columns, equal weights: below half
    assert fanned.drifted_columns == alone.drifted_columns == [f"x{i}" for i in range(0, width, 3)] + ["plan"]
    assert [c.model_dump() for c in fanned.columns] == [c.model_dump() for c in alone.columns]
    assert fanned.drift_share == alone.drift_share


@pytest.mark.parametrize("flow_", [monitor_models, drift_check_columns], ids=lambda f: f.name)
def test_the_fan_out_flows_render_as_described_forms(flow_):
    from tests.test_parameter_forms import (
        test_every_parameter_has_a_description_and_a_position,
        test_nested_models_fields_are_described_too,
        test_optional_plain_parameters_render_as_inputs_not_as_a_none_branch,
    )

    for check in (test_every_parameter_has_a_description_and_a_position, test_nested_models_fields_are_described_too,
                  test_optional_plain_parameters_render_as_inputs_not_as_a_none_branch):
        check(flow_)


def test_importing_the_flows_loads_no_dask():
    import subprocess
    import sys

    code = ("import sys, prefect_mlops.flows; "
            "print(','.join(m for m in ('dask', 'distributed', 'prefect_dask') if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "", f"import prefect_mlops.flows loaded {loaded}"


def test_a_scheduler_that_does_not_answer_is_named_before_any_work(churn_source, workspace):
    import dask

    from prefect_mlops.errors import ConfigError
    from tests.conftest import free_port

    address = f"tcp://127.0.0.1:{free_port()}"
    with dask.config.set({"distributed.comm.timeouts.connect": "2s"}), \
            pytest.raises(ConfigError, match=r"could not reach the Dask scheduler at 'tcp://127\.0\.0\.1:\d+'"):
        monitor_models([FleetModel(model_name="churn", source=churn_source)], address=address,
                       workspace=str(workspace.root))
