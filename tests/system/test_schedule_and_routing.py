"""A scheduled continuous-training run promotes a champion, training on the `gpu` pool through its route;
a route whose pool is missing or unserved fails the cycle naming the pool, and promotes nothing."""

from __future__ import annotations

import json

import pytest

from prefect_mlops.blocks import ComputeRoute
from prefect_mlops.demo import period_window
from prefect_mlops.tasks.lineage import TrainerSpec

pytestmark = pytest.mark.system


def test_scheduled_run_executes_and_promotes_a_champion(system, scheduled_churn):
    run = scheduled_churn
    assert run.auto_scheduled, "the run was not made by the scheduler"
    assert run.state.name == "Completed", f"{run.state.name}: {run.state.message}"
    assert run.work_pool_name == "cpu"
    assert run.parameters["window"] == period_window(0)
    version = system.version_made_by("churn", run.id)
    assert version.tags["prefect_mlops.promoted_from"] == "none", "the first champion was not promoted"
    assert json.loads(version.tags["prefect_mlops.trigger"])["kind"] == "schedule"
    assert system.champion("churn") is not None
    deployment = system.deployment("continuous-training/churn")
    crons = [s.schedule.cron for s in deployment.schedules if getattr(s.schedule, "cron", None)]
    assert crons == ["0 3 * * *"], "the nightly schedule from prefect.yaml is missing"


def test_training_ran_on_the_gpu_pool_with_the_route_job_variables(system, scheduled_churn):
    (child,) = [r for r in system.runs_of("train-on-pool/gpu")
                if r.parameters["lineage"]["flow_run_id"] == str(scheduled_churn.id) and r.parent_task_run_id]
    assert child.state.name == "Completed"
    assert child.work_pool_name == "gpu"
    assert child.job_variables["env"] == {"PREFECT_MLOPS_DEVICE": "cuda", "CUDA_VISIBLE_DEVICES": "0,1"}
    assert child.job_variables["gpu_count"] == 1
    assert child.parent_task_run_id is not None, "the training run is not linked to the cycle that started it"

    version = system.version_made_by("churn", scheduled_churn.id)  # the champion that run promoted
    tags = system.mlflow.client(system.workspace).get_run(version.run_id).data.tags
    # The training process saw the route's environment: the pool template's default is CUDA_VISIBLE_DEVICES=0.
    assert tags["prefect_mlops.compute.work_pool"] == "gpu"
    assert tags["prefect_mlops.compute.device"] == "cuda"
    assert tags["prefect_mlops.compute.cuda_visible_devices"] == "0,1"
    assert tags["prefect_mlops.compute.flow_run_id"] == str(child.id)
    assert tags["prefect_mlops.flow_run_id"] == str(scheduled_churn.id)


@pytest.mark.parametrize(("route", "needle"), [
    (ComputeRoute(work_pool="no-such-pool"), "work pool 'no-such-pool' does not exist"),
    (ComputeRoute(work_pool="idle", start_timeout_seconds=4), "no worker of work pool 'idle'"),
], ids=["missing-pool", "pool-without-worker"])
def test_unusable_route_fails_naming_the_pool_and_promotes_nothing(system, route, needle):
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists

    label = route.work_pool
    route.save(label, overwrite=True)
    if label == "idle":
        with system.client() as client:
            try:
                client.create_work_pool(WorkPoolCreate(name="idle", type="process"))
            except ObjectAlreadyExists:
                pass
            flow_id = client.read_flow_by_name("train-on-pool").id
            client.create_deployment(flow_id=flow_id, name="idle", work_pool_name="idle", pull_steps=[],
                                     entrypoint="prefect_mlops.flows.train_on_pool.train_on_pool",
                                     enforce_parameter_schema=False)
    model = f"route-{label}"
    trainer = TrainerSpec(estimator="sklearn.linear_model.LogisticRegression", params={"max_iter": 200},
                          label=label)
    run = system.wait(system.run("continuous-training/churn", model_name=model, window=period_window(0),
                                 trainer=trainer.model_dump(mode="json")).id)
    assert run.state.name == "Failed"
    assert needle in run.state.message and "nothing was" in run.state.message.lower()
    assert system.champion(model) is None
    if label == "idle":
        (child,) = [r for r in system.runs_of("train-on-pool/idle") if r.parameters["lineage"]["model_name"] == model]
        assert child.state.name == "Cancelled", "the unserved training run was left waiting"
