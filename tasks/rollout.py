"""Progressive delivery: a gated challenger on trial as `@canary` (a share of traffic) or `@shadow`.

`start_trial` is deploy's `canary` and `shadow` strategies: the version must carry a passed
gate verdict and pass the same smoke test as a direct promotion; it then gets `@canary` with a
first traffic share (a registered-model tag the service polls), or `@shadow`. The
`progressive-rollout` flow watches the canary through the service's `/metrics` (error rate,
latency) and, where labels exist, the prediction log (its error against the champion's), and
either raises the share step by step (5% -> 25% -> 100%: the last step is the promotion, a
promotion record like any other) or rolls back on its own. Every step is appended to the
model's rollout history (tag `prefect_mlops.rollout`) and published as a Prefect artifact.
"""

from __future__ import annotations

import itertools
import json
import math
import time
import urllib.request
from typing import Any, Literal

from prefect import task
from prefect.artifacts import create_markdown_artifact
from pydantic import BaseModel, ConfigDict, Field

from prefect_mlops.blocks.mlflow_server import MlflowServer
from prefect_mlops.errors import ConfigError, DeployError
from prefect_mlops.log import run_logger
from prefect_mlops.refs import ModelRef, artifact_key
from prefect_mlops.tasks.deploy import Promotion, change_aliases, checked_challenger
from prefect_mlops.tasks.evaluate import Evaluation
from prefect_mlops.tasks.gate import GateVerdict
from prefect_mlops.tasks.reconcile import (
    CANARY,
    CHALLENGER,
    CHAMPION,
    FAILED,
    PREVIOUS,
    PROMOTED,
    SHADOW,
    SHARE_TAG,
    STATUS_REASON_TAG,
    STATUS_TAG,
    PromotionRecord,
    mark_version,
    model_lock,
    now,
    read_aliases,
)
from prefect_mlops.workspace import Workspace

HISTORY_TAG = "prefect_mlops.rollout"
GATE_TAG = "prefect_mlops.gate"
FIRST_SHARE = 0.05
TOKEN_ENV = "PREFECT_MLOPS_SERVE_TOKEN"  # noqa: S105 (a variable name) the service's bearer token, as `serve` reads it
HISTORY_KEEP = 25  # MLflow caps a tag value at 5,000 characters (8,000 on newer servers)
# Metric names the service exports and the rollout reads (Prometheus adds `_total` to counters).
METRIC_REQUESTS = "prefect_mlops_serve_requests"
METRIC_LATENCY = "prefect_mlops_serve_request_seconds"
METRIC_MODEL_ERRORS = "prefect_mlops_serve_model_errors"


def parse_share(text: str | None) -> float:
    """The canary share a tag holds, clipped to [0, 1]; 0 for none or garbage.

    Example:
        ```python
        from prefect_mlops.tasks.rollout import parse_share
        assert parse_share("0.25") == 0.25 and parse_share(None) == 0.0 and parse_share("x") == 0.0
        ```
    """
    try:
        value = float(text) if text is not None else 0.0
    except ValueError:
        return 0.0
    return min(1.0, max(0.0, value)) if math.isfinite(value) else 0.0


def on_trial_allowed(version_tags: dict[str, str]) -> str | None:
    """Why a version may not hold `@canary` or `@shadow` (failed, or did not pass the gate), or None.

    Example:
        ```python
        from prefect_mlops.tasks.rollout import on_trial_allowed
        assert on_trial_allowed({"prefect_mlops.gate": "passed"}) is None
        assert "failed" in on_trial_allowed({"prefect_mlops.gate": "passed", "prefect_mlops.status": "failed"})
        assert "gate" in on_trial_allowed({})
        ```
    """
    if version_tags.get(STATUS_TAG) == FAILED:
        return (f"it is tagged {STATUS_TAG}={FAILED} ({version_tags.get(STATUS_REASON_TAG, 'no reason given')}); a "
                "failed version takes no traffic")
    if version_tags.get(GATE_TAG) == "passed":
        return None
    return (f"it carries no passed gate verdict (tag {GATE_TAG}={version_tags.get(GATE_TAG)!r}); only a version "
            "that passed the quality gate may take canary or shadow traffic")


def check_steps(steps: list[float]) -> list[float]:
    """The rollout's traffic shares, or a `ConfigError` naming `steps` and what is expected.

    Non-empty, strictly increasing, each in (0, 1], with at least one share below 1.0 (a step that
    is watched) before the promotion: a rollout never promotes on no evidence.

    Example:
        ```python
        import pytest
        from prefect_mlops.errors import ConfigError
        from prefect_mlops.tasks.rollout import check_steps
        assert check_steps([0.05, 0.25, 1.0]) == [0.05, 0.25, 1.0]
        with pytest.raises(ConfigError, match="steps"):
            check_steps([1.0])
        ```
    """
    expected = ("expected a non-empty, strictly increasing list of traffic shares in (0, 1] that ends with 1.0 "
                "(the promotion) after at least one watched share below 1.0, e.g. [0.05, 0.25, 1.0]")
    shares = [float(s) for s in steps]
    problem = None
    if not shares:
        problem = "is empty"
    elif any(not math.isfinite(s) or not 0.0 < s <= 1.0 for s in shares):
        problem = "has a share outside (0, 1]"
    elif any(b <= a for a, b in itertools.pairwise(shares)):
        problem = "is not strictly increasing"
    elif shares[-1] != 1.0:
        problem = "does not end with 1.0, so the rollout would end without deciding"
    elif len(shares) < 2:
        problem = "has no watched share below 1.0, so the canary would be promoted on no evidence"
    if problem:
        raise ConfigError(f"progressive-rollout parameter steps={shares} {problem}: {expected}")
    return shares


def service_token(secret_block: str | None = None) -> str | None:
    """The scoring service's bearer token: from the named Secret block, else ${TOKEN_ENV} on this worker.

    Never a flow parameter: parameters are stored in the Prefect database and shown in the UI.
    """
    import os

    if secret_block:
        from prefect.blocks.system import Secret

        try:
            return Secret.load(secret_block).get()
        except ValueError as exc:
            raise ConfigError(f"progressive-rollout parameter token_secret={secret_block!r}: no Secret block of "
                              f"that name ({exc}); create it (prefect.blocks.system.Secret) or leave it empty "
                              f"and set ${TOKEN_ENV} on the worker") from exc
    return os.environ.get(TOKEN_ENV) or None


class RolloutStep(BaseModel):
    """One step of a rollout, as kept in the model's history and shown as an artifact."""

    model_config = ConfigDict(frozen=True)

    at: str
    action: Literal["canary", "shadow", "advance", "promote", "rollback"]
    version: str
    share: float = Field(description="Canary traffic share after the step.")
    reason: str
    stats: dict[str, Any] = Field(default_factory=dict)


def read_history(client: Any, name: str) -> list[RolloutStep]:
    """The model's rollout history, oldest first."""
    raw = (client.get_registered_model(name).tags or {}).get(HISTORY_TAG)
    return [RolloutStep.model_validate(s) for s in json.loads(raw)] if raw else []


def record_step(client: Any, name: str, step: RolloutStep) -> None:
    """Append `step` to the history tag (the newest `HISTORY_KEEP` are kept) and publish it."""
    steps = [*read_history(client, name), step]
    for keep in range(HISTORY_KEEP, 0, -1):
        text = json.dumps([s.model_dump(mode="json") for s in steps[-keep:]], separators=(",", ":"))
        if len(text) <= 5000:
            break
    client.set_registered_model_tag(name, HISTORY_TAG, text)
    run_logger().info("rollout %s: %s v%s, share %.0f%%: %s", name, step.action, step.version, step.share * 100,
                      step.reason)
    try:
        create_markdown_artifact(
            f"# {name}: {step.action} v{step.version} (canary share {step.share:.0%})\n\n{step.reason}\n\n"
            + "".join(f"- {k}: {v}\n" for k, v in step.stats.items()),
            key=artifact_key("rollout", name), description=f"Rollout step: {step.action}")
    except Exception as exc:  # outside a flow run there is nowhere to publish; the registry has it
        run_logger().debug("no artifact for the rollout step: %s", exc)


def start_trial(model: ModelRef, evaluation: Evaluation, verdict: GateVerdict, *,
                strategy: Literal["canary", "shadow"], share: float = FIRST_SHARE,
                mlflow_server: MlflowServer | None = None, workspace: Workspace | None = None) -> Promotion:
    """Put a gated, smoke-tested version on trial as `@canary` (with `share`) or `@shadow`; the champion stays.

    The plain function behind deploy's `canary` and `shadow` strategies; call it holding
    `model_lock(model.name)`.
    """
    if strategy not in (CANARY, SHADOW):
        raise ConfigError(f"deploy strategy {strategy!r}: expected 'direct', 'canary' or 'shadow'")
    server, workspace = checked_challenger(
        model, evaluation, verdict, stage=f"deploy ({strategy})",
        cannot=f"cannot put {model.name!r} version {model.version} on trial as @{strategy}", left="no alias was moved",
        mlflow_server=mlflow_server, workspace=workspace)
    client = server.client(workspace)
    champion = read_aliases(client, model.name).get(CHAMPION)
    if champion is None:
        raise DeployError(f"model {model.name!r} has no @{CHAMPION} to run version {model.version} beside as "
                          f"@{strategy}; promote a first version with the 'direct' strategy")
    client.set_registered_model_alias(model.name, strategy, model.version)
    if strategy == CANARY:
        client.set_registered_model_tag(model.name, SHARE_TAG, f"{share:g}")
    client.delete_registered_model_alias(model.name, CHALLENGER)
    reason = (f"passed the gate ({verdict.main_reason}); "
              + (f"canary with {share:.0%} of keys" if strategy == CANARY else "shadow: scores every request, "
                 "answers none"))
    record_step(client, model.name, RolloutStep(at=now(), action=strategy, version=model.version,
                                                share=share if strategy == CANARY else 0.0, reason=reason))
    return Promotion(model_name=model.name, champion_version=champion, previous_version=None, trial=strategy,
                     trial_version=model.version)


def canary_version(client: Any, name: str) -> str:
    """The version at `@canary`, or a `DeployError` saying there is none."""
    aliases = client.get_registered_model(name).aliases or {}
    if CANARY not in aliases:
        raise DeployError(f"model {name!r} has no @{CANARY}; deploy a challenger with strategy 'canary' first")
    return str(aliases[CANARY])


def allowed_canary(client: Any, name: str, doing: str) -> str:
    """The `@canary` version, checked again before it gets more traffic or the champion's place.

    `@canary` is an alias anyone with registry access can set: only a version that passed the gate
    and is not failed may go on; otherwise a `DeployError` and nothing moves.
    """
    version = canary_version(client, name)
    refused = on_trial_allowed(client.get_model_version(name, version).tags or {})
    if refused:
        raise DeployError(f"model {name!r}: refusing to {doing} @{CANARY} v{version}: {refused}. Nothing was "
                          f"changed; remove the alias (`@{CANARY}`) or deploy a gated version with strategy 'canary'")
    return version


def set_share(name: str, share: float, reason: str, *, mlflow_server: MlflowServer | None = None,
              workspace: Workspace | None = None, stats: dict[str, Any] | None = None) -> RolloutStep:
    """Route `share` of keys to the canary (the service follows within its poll interval); holds the model's lock."""
    client = (mlflow_server or MlflowServer()).client(workspace)
    with model_lock(name):  # not while a training run moves the aliases
        version = allowed_canary(client, name, f"raise the traffic share to {share:.0%} of")
        client.set_registered_model_tag(name, SHARE_TAG, f"{share:g}")
        step = RolloutStep(at=now(), action="advance", version=version, share=share, reason=reason,
                           stats=stats or {})
        record_step(client, name, step)
    return step


def promote_canary(name: str, reason: str, *, mlflow_server: MlflowServer | None = None,
                   workspace: Workspace | None = None, stats: dict[str, Any] | None = None) -> Promotion:
    """Make the canary the champion (a promotion record, like deploy's), then drop `@canary`.

    Holds the model's lock, and refuses a canary that did not pass the gate or is failed.
    """
    with model_lock(name):  # not while a training run moves the aliases
        return _promote_canary(name, reason, mlflow_server=mlflow_server, workspace=workspace, stats=stats)


def _promote_canary(name: str, reason: str, *, mlflow_server: MlflowServer | None, workspace: Workspace | None,
                    stats: dict[str, Any] | None) -> Promotion:
    client = (mlflow_server or MlflowServer()).client(workspace)
    version = allowed_canary(client, name, "promote")
    before = read_aliases(client, name)
    current = before.get(CHAMPION)
    after = {alias: v for alias, v in before.items() if v != version or alias == CHAMPION}
    after[CHAMPION] = version
    if current and current != version:
        after[PREVIOUS] = current
    record = PromotionRecord.start("promote", version, before=before, after=after)
    change_aliases(client, name, record, (PROMOTED, f"canary promoted over v{current} by promotion {record.id}: "
                                                    f"{reason}"))
    client.delete_registered_model_alias(name, CANARY)  # the champion now: serving treats them as one meanwhile
    client.delete_registered_model_tag(name, SHARE_TAG)
    record_step(client, name, RolloutStep(at=now(), action="promote", version=version, share=1.0, reason=reason,
                                          stats=stats or {}))
    return Promotion(model_name=name, champion_version=version, previous_version=current, record_id=record.id)


def roll_back_canary(name: str, reason: str, *, mlflow_server: MlflowServer | None = None,
                     workspace: Workspace | None = None, stats: dict[str, Any] | None = None) -> RolloutStep:
    """Take all traffic off the canary, drop `@canary` and mark the version failed, with why; holds the lock."""
    client = (mlflow_server or MlflowServer()).client(workspace)
    with model_lock(name):  # not while a training run moves the aliases
        version = canary_version(client, name)
        client.set_registered_model_tag(name, SHARE_TAG, "0")  # traffic off first, even if the next write fails
        client.delete_registered_model_alias(name, CANARY)
        client.delete_registered_model_tag(name, SHARE_TAG)
        mark_version(client, name, version, FAILED, f"canary rolled back: {reason}")
        step = RolloutStep(at=now(), action="rollback", version=version, share=0.0, reason=reason,
                           stats=stats or {})
        record_step(client, name, step)
    return step


# ---------------------------------------------------------------------------- watching the canary


class AliasStats(BaseModel):
    """Counters of one alias from the service's `/metrics` (cumulative since the service started)."""

    requests: float = 0.0
    errors: float = 0.0
    latency_sum: float = 0.0
    latency_count: float = 0.0

    def minus(self, earlier: AliasStats) -> AliasStats:
        return AliasStats(**{k: getattr(self, k) - getattr(earlier, k) for k in type(self).model_fields})

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    @property
    def mean_latency(self) -> float:
        return self.latency_sum / self.latency_count if self.latency_count else 0.0


def scrape(url: str, token: str | None = None, timeout: float = 10.0) -> dict[str, AliasStats]:
    """Per-alias request, error and latency counters from a service's `/metrics`."""
    from prometheus_client.parser import text_string_to_metric_families

    request = urllib.request.Request(f"{url.rstrip('/')}/metrics")  # noqa: S310
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:  # noqa: S310
            text = reply.read().decode()
    except OSError as exc:
        raise DeployError(f"scoring service {url}: reading /metrics failed ({exc}); is it running, and is the "
                          "token right?") from exc
    stats: dict[str, AliasStats] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            alias = sample.labels.get("alias")
            if alias is None:
                continue
            entry = stats.setdefault(alias, AliasStats())
            if sample.name == f"{METRIC_REQUESTS}_total" and sample.labels.get("outcome") != "invalid":
                entry.requests += sample.value
            elif sample.name == f"{METRIC_MODEL_ERRORS}_total":
                entry.errors += sample.value
            elif sample.name == f"{METRIC_LATENCY}_sum":
                entry.latency_sum += sample.value
            elif sample.name == f"{METRIC_LATENCY}_count":
                entry.latency_count += sample.value
    return stats


class CanaryJudgement(BaseModel):
    """Whether the canary may take the next step."""

    decision: Literal["advance", "rollback"]
    reason: str
    stats: dict[str, Any] = Field(default_factory=dict)


def judge_canary(champion: AliasStats, canary: AliasStats, *, min_requests: int, max_error_rate: float,
                 max_latency_ratio: float, latency_slack_ms: float = 2.0,
                 labelled: dict[str, tuple[float, int]] | None = None, max_metric_drop: float = 0.02,
                 min_labelled: int = 30) -> CanaryJudgement:
    """Advance, or roll back naming the rule that failed; too little traffic is no evidence: roll back.

    `labelled` maps alias to (error, rows) on labelled predictions (misclassification rate, or
    mean absolute error): the canary's may exceed the champion's by at most `max_metric_drop`.

    Example:
        ```python
        from prefect_mlops.tasks.rollout import AliasStats, judge_canary
        ok = AliasStats(requests=200, errors=0, latency_sum=0.2, latency_count=200)
        bad = AliasStats(requests=200, errors=40, latency_sum=0.2, latency_count=200)
        rules = dict(min_requests=100, max_error_rate=0.01, max_latency_ratio=2.0)
        assert judge_canary(ok, ok, **rules).decision == "advance"
        assert judge_canary(ok, bad, **rules).decision == "rollback"
        ```
    """
    stats = {"canary_requests": int(canary.requests), "canary_errors": int(canary.errors),
             "canary_error_rate": round(canary.error_rate, 4),
             "canary_mean_latency_ms": round(canary.mean_latency * 1000, 3),
             "champion_requests": int(champion.requests),
             "champion_mean_latency_ms": round(champion.mean_latency * 1000, 3)}
    if canary.requests < min_requests:
        return CanaryJudgement(decision="rollback", stats=stats, reason=(
            f"only {int(canary.requests)} canary requests in the step, fewer than min_requests {min_requests}: "
            "no evidence, no promotion"))
    if canary.error_rate > max_error_rate:
        return CanaryJudgement(decision="rollback", stats=stats, reason=(
            f"canary error rate {canary.error_rate:.2%} ({int(canary.errors)} of {int(canary.requests)}) is above "
            f"max_error_rate {max_error_rate:.2%}"))
    limit = champion.mean_latency * max_latency_ratio + latency_slack_ms / 1000
    if champion.latency_count and canary.mean_latency > limit:
        return CanaryJudgement(decision="rollback", stats=stats, reason=(
            f"canary mean latency {canary.mean_latency * 1000:.2f} ms is above {limit * 1000:.2f} ms "
            f"({max_latency_ratio}x the champion's {champion.mean_latency * 1000:.2f} ms + {latency_slack_ms} ms)"))
    if labelled and CANARY in labelled and CHAMPION in labelled:
        (canary_error, canary_rows), (champion_error, champion_rows) = labelled[CANARY], labelled[CHAMPION]
        stats.update(canary_labelled_error=round(canary_error, 4), canary_labelled_rows=canary_rows,
                     champion_labelled_error=round(champion_error, 4), champion_labelled_rows=champion_rows)
        if min(canary_rows, champion_rows) >= min_labelled and canary_error > champion_error + max_metric_drop:
            return CanaryJudgement(decision="rollback", stats=stats, reason=(
                f"on labelled predictions the canary's error {canary_error:.4f} ({canary_rows} rows) is worse than "
                f"the champion's {champion_error:.4f} ({champion_rows} rows) by more than {max_metric_drop}"))
    return CanaryJudgement(decision="advance", stats=stats, reason=(
        f"{int(canary.requests)} canary requests, error rate {canary.error_rate:.2%}, mean latency "
        f"{canary.mean_latency * 1000:.2f} ms (champion {champion.mean_latency * 1000:.2f} ms)"))


def observe_canary(service_url: str, *, seconds: float, min_requests: int, token: str | None = None,
                   poll: float = 1.0) -> tuple[AliasStats, AliasStats]:
    """Champion and canary counters over one step: until `min_requests` canary requests, or `seconds`."""
    start = scrape(service_url, token)
    deadline = time.monotonic() + seconds
    while True:
        time.sleep(min(poll, max(0.0, deadline - time.monotonic())))
        now_ = scrape(service_url, token)
        canary = now_.get(CANARY, AliasStats()).minus(start.get(CANARY, AliasStats()))
        if canary.requests >= min_requests or time.monotonic() >= deadline:
            champion = now_.get(CHAMPION, AliasStats()).minus(start.get(CHAMPION, AliasStats()))
            return champion, canary


# ---------------------------------------------------------------------------- thin tasks


@task(name="canary-step", task_run_name="canary-{model_name}-{share}")
def canary_step(model_name: str, share: float, service_url: str, *, seconds: float = 60.0, min_requests: int = 100,
                max_error_rate: float = 0.01, max_latency_ratio: float = 2.0, token_secret: str | None = None,
                labels: Any = None, label_key: str = "request_id", mlflow_server: MlflowServer | None = None,
                workspace: str | None = None, prediction_log: str | None = None) -> CanaryJudgement:
    """Route `share` of keys to the canary, watch one step, and judge it (see `judge_canary`)."""
    ws = Workspace(workspace)
    if share < 1.0:
        set_share(model_name, share, f"canary share raised to {share:.0%}", mlflow_server=mlflow_server,
                  workspace=ws)
    champion, canary = observe_canary(service_url, seconds=seconds, min_requests=min_requests,
                                      token=service_token(token_secret))
    labelled = None
    if labels is not None and prediction_log:
        from prefect_mlops.tasks.labels import error_by_alias

        labelled = error_by_alias(prediction_log, labels, on=label_key)
    return judge_canary(champion, canary, min_requests=min_requests, max_error_rate=max_error_rate,
                        max_latency_ratio=max_latency_ratio, labelled=labelled)


@task(name="promote-canary", task_run_name="promote-canary-{model_name}")
def promote_canary_task(model_name: str, judgement: CanaryJudgement, mlflow_server: MlflowServer | None = None,
                        workspace: str | None = None) -> Promotion:
    """Promote the canary after its last step passed."""
    return promote_canary(model_name, judgement.reason, mlflow_server=mlflow_server, workspace=Workspace(workspace),
                          stats=judgement.stats)


@task(name="roll-back-canary", task_run_name="roll-back-canary-{model_name}")
def roll_back_canary_task(model_name: str, judgement: CanaryJudgement, mlflow_server: MlflowServer | None = None,
                          workspace: str | None = None) -> RolloutStep:
    """Take the canary out after a failed step."""
    return roll_back_canary(model_name, judgement.reason, mlflow_server=mlflow_server,
                            workspace=Workspace(workspace), stats=judgement.stats)
