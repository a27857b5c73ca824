"""`prefect-mlops demo-server`: the continuous-training story on a real Prefect server."""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

from prefect_mlops.cli.deploy import DEFAULT_POOLS, deploy
from prefect_mlops.cli.processes import api, start_stack, stopped_on_exit, wait_forever


def demo_config(home: Path) -> dict[str, Any]:
    """Blocks and pools for the demo: data, a SQLite MLflow store, the churn policy, compute routes."""
    return {
        "_dir": str(home),
        "work_pools": DEFAULT_POOLS,
        "blocks": {
            "prefect-mlops-data-source": {"churn": {"uri": str(home / "data" / "churn.parquet"),
                                                    "time_column": "event_time"}},
            "prefect-mlops-mlflow-server": {"default": {"tracking_uri": f"sqlite:///{home / 'mlflow.db'}",
                                                        "artifact_location": (home / "mlartifacts").as_uri(),
                                                        "experiment": "churn"}},
            "prefect-mlops-model-policy": {"churn": {"floors": {"roc_auc": 0.65}, "max_drop": 0.01,
                                                     "slice_floors": {"roc_auc": 0.55}}},
            "prefect-mlops-retrain-policy": {"churn": {}},  # the defaults, from `make backtest`
            "prefect-mlops-compute-route": {
                "gpu": {"work_pool": "gpu", "env": {"PREFECT_MLOPS_DEVICE": "cuda", "CUDA_VISIBLE_DEVICES": "0"},
                        "gpu_count": 1, "start_timeout_seconds": 120},
                "cpu": {"work_pool": "cpu"},
            },
        },
    }


def wait_final(run_id: Any, timeout: float = 600) -> Any:
    """Poll a flow run until it is final, showing its state and latest task on stderr."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.client.schemas.sorting import TaskRunSort

    from prefect_mlops.console import stage

    started = deadline = time.monotonic()
    deadline += timeout
    with get_client(sync_client=True) as client:
        while True:
            run = client.read_flow_run(run_id)
            if run.state and run.state.is_final():
                return run
            latest = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])),
                                           sort=TaskRunSort.EXPECTED_START_TIME_DESC, limit=1)
            doing = f", task {latest[0].name}" if latest else ""
            stage(f"flow run {run.name}: {run.state.name if run.state else '?'}{doing} "
                  f"({time.monotonic() - started:.0f} s)")
            if time.monotonic() > deadline:
                state = run.state.name if run.state else "?"
                raise TimeoutError(f"flow run {run.name} still {state} after {timeout} s")
            time.sleep(1)


def runs_of(deployment_name: str) -> list[Any]:
    """The flow runs of a deployment, newest first."""
    from prefect import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name(deployment_name)
        return client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id])),
                                     sort=FlowRunSort.START_TIME_DESC)


def gate_verdict(run: Any) -> list[str]:
    """The quality gate's verdict of a continuous-training run, from its `gate-verdict-*` artifact."""
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run.id])))
    for artifact in artifacts:
        if (artifact.key or "").startswith("gate-verdict"):
            rows = [[cell.strip(" *") for cell in line.strip("|").split("|")]
                    for line in str(artifact.data).splitlines() if line.startswith("| ")][1:]
            return [artifact.description or "",
                    *(f"- {rule} ({passed}): {reason}" for rule, passed, reason, *_ in rows)]
    return [f"{run.state.name}: {run.state.message or 'no gate verdict (the run stopped before the gate)'}"]


def describe(run: Any, ui: str) -> str:
    """One flow run in words: name, state, message and where to look at it."""
    state = run.state
    return (f"{run.name} [{state.name if state else '?'}] {state.message if state and state.message else ''}\n"
            f"    {ui}/v2/runs/flow-run/{run.id}")


def cmd_demo_server(args: argparse.Namespace) -> int:
    import pandas as pd

    from prefect_mlops.demo import DRIFTED_PERIOD, make_churn_data, period_window

    home = Path(args.home or tempfile.mkdtemp(prefix="prefect-mlops-demo-")).resolve()
    (home / "data").mkdir(parents=True, exist_ok=True)
    pd.concat([make_churn_data(p) for p in range(DRIFTED_PERIOD + 1)]).to_parquet(home / "data" / "churn.parquet",
                                                                                  index=False)
    started = time.perf_counter()
    from prefect_mlops.cli.auth import resolve_auth

    auth = resolve_auth(home, auth=args.auth, auth_file=args.auth_file)
    stack = start_stack(home, args.database_url, args.port, auth)
    ui = stack.server.ui_url
    from prefect_mlops.console import progress_on_stderr

    with stopped_on_exit(stack), api(stack.server.api_url, auth), progress_on_stderr(stages=False):
        from prefect.deployments import run_deployment

        print("\n=== 1. work pools, blocks, deployments, automations")
        deploy(demo_config(home), env=stack.server.client_env())
        stack.start_workers(list(DEFAULT_POOLS), PREFECT_MLOPS_WORKSPACE=str(home / "workspace"))
        print(f"workers online for pools {', '.join(DEFAULT_POOLS)}; UI: {ui}")

        print("\n=== 2. first training of churn on period 0 (trains on the gpu pool through the 'gpu' route)")
        first = run_deployment("continuous-training/churn", parameters={"window": period_window(0)}, timeout=0)
        first = wait_final(first.id)
        print(describe(first, ui))
        print("\n".join(gate_verdict(first)))
        if not first.state.is_completed():
            raise SystemExit("the first training did not complete; see the run above")

        print(f"\n=== 3. drift monitor on period {DRIFTED_PERIOD} (drifted)")
        monitor = run_deployment("drift-monitor/churn", parameters={"window": period_window(DRIFTED_PERIOD)},
                                 timeout=0)
        monitor = wait_final(monitor.id)
        print(describe(monitor, ui))

        print("\n=== 4. the retraining that the drift event started")
        deadline = time.monotonic() + 60
        retrains = []
        while not retrains and time.monotonic() < deadline:
            retrains = runs_of("continuous-training/churn-retrain-on-drift")
            time.sleep(1)
        if not retrains:
            raise SystemExit("no retraining run appeared within 60 s of the drift event")
        retrain = wait_final(retrains[0].id)
        trigger = retrain.created_by.display_value if retrain.created_by else "?"
        print(f"flow run id: {retrain.id}")
        print(f"started by:  {retrain.created_by.type if retrain.created_by else '?'} {trigger!r} "
              f"(prefect_mlops.drift.detected for prefect-mlops.model.churn), window "
              f"{retrain.parameters.get('window')}")
        print(f"final state: {retrain.state.name}")
        print("gate:        " + "\n             ".join(gate_verdict(retrain)))
        print(f"UI:          {ui}/v2/runs/flow-run/{retrain.id}")
        print(f"\nDone in {time.perf_counter() - started:.0f} s. Everything is under {home}.")
        if args.keep:
            print(f"Server and workers keep running: {ui}  (Ctrl-C stops them)", flush=True)
            wait_forever()
    return 0

