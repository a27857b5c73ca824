"""Progressive rollout: raise the canary's traffic share step by step, or roll it back."""

from __future__ import annotations

from typing import Literal

from prefect import flow
from pydantic import BaseModel

from prefect_mlops.blocks import DataSource, MlflowServer
from prefect_mlops.refs import ModelName
from prefect_mlops.tasks.rollout import (
    CanaryJudgement,
    canary_step,
    check_steps,
    promote_canary_task,
    roll_back_canary_task,
)


class RolloutReport(BaseModel):
    """How the rollout ended."""

    model_name: str
    outcome: Literal["promoted", "rolled-back"]
    version: str | None
    reason: str
    steps: list[CanaryJudgement]


@flow(name="progressive-rollout", log_prints=True, validate_parameters=True)
def progressive_rollout(
    model_name: ModelName,
    service_url: str,
    steps: list[float] = [0.05, 0.25, 1.0],  # noqa: B006 (a flow parameter: Prefect copies it per run)
    step_seconds: float = 300.0,
    min_requests: int = 200,
    max_error_rate: float = 0.01,
    max_latency_ratio: float = 2.0,
    labels: DataSource | None = None,
    label_key: str = "request_id",
    prediction_log: str | None = None,
    token_secret: str | None = None,
    mlflow_server: MlflowServer | None = None,
    workspace: str | None = None,
) -> RolloutReport:
    """Promote the `@canary` in steps while it holds up against the champion, or roll it back on its own.

    Args:
        model_name: Registered model whose @canary to roll out (deploy it with strategy 'canary').
        service_url: The scoring service (`prefect-mlops serve`) whose /metrics to watch.
        steps: Traffic shares, strictly increasing in (0, 1], ending with 1.0 (the promotion to @champion)
            after at least one watched share below it.
        step_seconds: Longest watch per step; a step ends sooner once min_requests canary requests came.
        min_requests: Canary requests a step needs; fewer is no evidence, and the canary is rolled back.
        max_error_rate: Largest share of canary requests whose predict() may fail.
        max_latency_ratio: Largest canary mean latency as a multiple of the champion's (plus 2 ms).
        labels: Labels of served requests (a column `label_key` and the label); compares errors where given.
        label_key: Column joining labels to the prediction log: 'request_id' or 'key'.
        prediction_log: The service's prediction log folder or s3:// prefix (needed with labels).
        token_secret: Name of a Secret block holding the service's bearer token; empty: $PREFECT_MLOPS_SERVE_TOKEN
            on the worker (never the token itself: flow parameters are stored and shown in the UI).
        mlflow_server: Tracking server and registry; the workspace's SQLite store when empty.
        workspace: Folder of the embedded MLflow store.
    """
    watched = check_steps(steps)[:-1]  # the last share, 1.0, is the promotion
    judgements: list[CanaryJudgement] = []
    for share in watched:
        judgement = canary_step(model_name, share, service_url, seconds=step_seconds, min_requests=min_requests,
                                max_error_rate=max_error_rate, max_latency_ratio=max_latency_ratio,
                                token_secret=token_secret,
                                labels=labels, label_key=label_key, mlflow_server=mlflow_server,
                                workspace=workspace, prediction_log=prediction_log)
        judgements.append(judgement)
        if judgement.decision == "rollback":
            step = roll_back_canary_task(model_name, judgement, mlflow_server=mlflow_server, workspace=workspace)
            return RolloutReport(model_name=model_name, outcome="rolled-back", version=step.version,
                                 reason=judgement.reason, steps=judgements)
    promotion = promote_canary_task(model_name, judgements[-1], mlflow_server=mlflow_server, workspace=workspace)
    return RolloutReport(model_name=model_name, outcome="promoted", version=promotion.champion_version,
                         reason=judgements[-1].reason, steps=judgements)
