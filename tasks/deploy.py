"""Deploy: smoke-test the challenger, then move `@champion` to it, keeping `@previous-champion`.

The smoke test loads `models:/<name>@challenger` as pyfunc (what serving loads) and must
reproduce evaluate's predictions. Promotion is compare-and-swap: it goes ahead only while the
champion is still the version evaluate compared against. It writes a promotion record before
the first alias moves (see `prefect_mlops.tasks.reconcile`); if anything fails, SIGTERM
included, every alias is put back, and if even that fails the record lets the next run or
`prefect-mlops repair` finish the job.
"""

from __future__ import annotations

from typing import Literal

from prefect import task
from prefect.artifacts import create_markdown_artifact
from pydantic import BaseModel, ConfigDict

from prefect_mlops.blocks.mlflow_server import MlflowServer
from prefect_mlops.errors import ChampionMovedError, DeployError, RegistryError, disk_full_hint
from prefect_mlops.integrity import DIGEST_TAG
from prefect_mlops.log import run_logger
from prefect_mlops.refs import ModelRef, artifact_key
from prefect_mlops.tasks.evaluate import Evaluation
from prefect_mlops.tasks.gate import GateVerdict
from prefect_mlops.tasks.reconcile import (
    ALIASES,
    CHALLENGER,
    CHAMPION,
    PREVIOUS,
    PROMOTED,
    PromotionRecord,
    mark_version,
    model_lock,
    read_aliases,
    reconcile_model,
    set_aliases,
    write_record,
)
from prefect_mlops.tasks.register import require_passed
from prefect_mlops.workspace import Workspace

__all__ = ["ALIASES", "CHALLENGER", "CHAMPION", "PREVIOUS", "Promotion", "deploy", "promote", "read_aliases",
           "roll_back", "rollback_champion", "smoke_test"]


class Promotion(BaseModel):
    """The outcome of a promotion or a rollback."""

    model_config = ConfigDict(frozen=True)

    model_name: str
    champion_version: str
    previous_version: str | None
    record_id: str | None = None
    trial: Literal["canary", "shadow"] | None = None  # canary/shadow strategies: the champion did not move
    trial_version: str | None = None


def change_aliases(client: object, name: str, record: PromotionRecord, status: tuple[str, str] | None) -> None:
    """Write `record` (pending), move the aliases to `record.after`, mark the record done.

    `status` (status, reason) goes on `record.version` once the aliases moved. On any failure,
    SIGTERM's BaseException included, the aliases go back to `record.before`.
    """
    try:  # the intent first: a killed process leaves a record to settle
        write_record(client, name, record)
    except Exception as exc:
        raise DeployError(f"model {name!r}: writing promotion record {record.id} failed ({exc}); no alias was "
                          f"moved (if the server stored the record, the next run or `prefect-mlops repair {name}` "
                          "closes it)") from exc
    try:
        set_aliases(client, name, record.after)
        if status is not None:
            mark_version(client, name, record.version, *status)
        write_record(client, name, record.finish("done"))
    except BaseException as exc:
        try:  # the version itself is the caller's: the flow's transaction rollback takes it out
            set_aliases(client, name, record.before)
            write_record(client, name, record.finish("undone", f"failed: {exc}"))
        except BaseException as restore_exc:
            raise DeployError(
                f"model {name!r}: moving aliases to {record.after} failed ({exc}) and restoring {record.before} "
                f"failed too ({restore_exc}); promotion record {record.id} stays pending: the next run or "
                f"`prefect-mlops repair {name}` completes or undoes it"
            ) from exc
        if not isinstance(exc, Exception):
            raise  # SIGTERM and friends: aliases are back, let the run stop
        raise DeployError(f"model {name!r}: moving aliases failed ({exc}); aliases restored to "
                          f"{record.before}") from exc


def smoke_test(model: ModelRef, evaluation: Evaluation, *, server: MlflowServer, workspace: Workspace) -> None:
    """Load `models:/<name>@challenger` as pyfunc and check it reproduces evaluate's predictions."""
    import numpy as np
    import pandas as pd

    client = server.client(workspace)
    aliased = client.get_model_version_by_alias(model.name, CHALLENGER)
    if str(aliased.version) != model.version:
        raise DeployError(f"model {model.name!r}: @{CHALLENGER} points to version {aliased.version}, "
                          f"not {model.version}; another run registered meanwhile. Re-run the flow")
    try:
        pyfunc = server.load_model(aliased.source, workspace, flavor="pyfunc", sha256=(aliased.tags or {}).get(
            DIGEST_TAG), what=f"model {model.name!r} v{model.version} (@{CHALLENGER})")
    except Exception as exc:
        full = disk_full_hint(exc, getattr(exc, "filename", None) or aliased.source)
        raise DeployError(
            f"smoke test of {model.name!r} version {model.version} (@{CHALLENGER}): "
            + (full or f"the model at {aliased.source} could not be loaded ({exc}); check that its artifacts "
                       "exist and are readable")
            + "; the model was not promoted") from exc
    sample = pd.read_parquet(evaluation.smoke_sample_uri)
    expected = sample.pop("__prediction__").to_numpy()
    try:
        got = np.asarray(pyfunc.predict(sample)).reshape(len(sample), -1)[:, 0]
    except Exception as exc:
        raise DeployError(f"smoke test of {model.uri}: the pyfunc model failed to predict ({exc})") from exc
    if np.issubdtype(expected.dtype, np.number):
        differ = ~np.isclose(got.astype(float), expected.astype(float), equal_nan=True)
    else:
        differ = got.astype(str) != expected.astype(str)
    if differ.any():
        rows = np.flatnonzero(differ)
        shown = "; ".join(f"row {i}: served {got[i]!r}, evaluated {expected[i]!r}" for i in rows[:5])
        raise DeployError(f"smoke test of {model.uri}: served predictions differ from evaluation's on "
                          f"{len(rows)} of {len(sample)} rows ({shown}{'; …' if len(rows) > 5 else ''}); "
                          "the model was not promoted")


def checked_challenger(model: ModelRef, evaluation: Evaluation, verdict: GateVerdict, *, stage: str, cannot: str,
                       left: str, mlflow_server: MlflowServer | None,
                       workspace: Workspace | None) -> tuple[MlflowServer, Workspace]:
    """What every promotion or trial checks first: a passed verdict, a reachable registry, a passed smoke test.

    A registry that cannot be used raises `DeployError` with its own reason (unreachable, or a
    refused user, named): "`cannot`: <reason>; `left`". Returns the server and workspace in force.
    """
    require_passed(verdict, model.run_id, stage)
    server = mlflow_server or MlflowServer()
    workspace = workspace or Workspace()
    try:
        server.check_reachable(workspace)
    except RegistryError as exc:
        said = str(exc).removesuffix(". Nothing was registered or promoted")  # register already ran
        raise DeployError(f"{cannot}: {said}; {left}") from exc
    smoke_test(model, evaluation, server=server, workspace=workspace)
    return server, workspace


def promote(
    model: ModelRef,
    evaluation: Evaluation,
    verdict: GateVerdict,
    *,
    mlflow_server: MlflowServer | None = None,
    workspace: Workspace | None = None,
) -> Promotion:
    """Smoke-test `model`, then make it `@champion` if the champion is still the one it was judged against.

    The plain function behind `deploy`; call it holding `model_lock(model.name)`.
    """
    server, workspace = checked_challenger(
        model, evaluation, verdict, stage="deploy", cannot=f"cannot promote {model.name!r} version {model.version}",
        left=f"@{CHAMPION} was not moved", mlflow_server=mlflow_server, workspace=workspace)
    client = server.client(workspace)
    before = read_aliases(client, model.name)
    current = before.get(CHAMPION)
    judged = verdict.champion_version
    if evaluation.champion is not None and evaluation.champion.version != judged:
        judged_by_eval = evaluation.champion.version
        raise ChampionMovedError(f"model {model.name!r}: the verdict was against champion v{judged} but the "
                                 f"evaluation against v{judged_by_eval}; nothing was promoted")
    if current != judged:
        raise ChampionMovedError(
            f"model {model.name!r}: the champion is now {_v(current)}, not {_v(judged)} that version "
            f"{model.version} was evaluated against (another run or a person moved it); nothing was promoted. "
            "Re-run the flow to evaluate against the current champion")
    after = {CHAMPION: model.version}
    if current and current != model.version:
        after[PREVIOUS] = current
    elif PREVIOUS in before and before[PREVIOUS] != model.version:
        after[PREVIOUS] = before[PREVIOUS]
    record = PromotionRecord.start("promote", model.version, before=before, after=after)
    change_aliases(client, model.name, record,
                   (PROMOTED, f"promoted over {_v(current)} by promotion {record.id}: {verdict.main_reason}"))
    _tag_quietly(client, model.name, model.version, "prefect_mlops.promoted_from", current or "none")
    return Promotion(model_name=model.name, champion_version=model.version, previous_version=current,
                     record_id=record.id)


def _v(version: str | None) -> str:
    return f"v{version}" if version else "none"


def _tag_quietly(client: object, name: str, version: str, key: str, value: str) -> None:
    try:
        client.set_model_version_tag(name, version, key, value)
    except Exception as exc:  # informational; the promotion itself is recorded and done
        run_logger().warning("model %s version %s: could not tag %s=%s: %s", name, version, key, value, exc)


def roll_back(model_name: str, *, mlflow_server: MlflowServer | None = None,
              workspace: Workspace | None = None) -> Promotion:
    """Make `@previous-champion` the champion again; the demoted one becomes `@previous-champion`.

    Settles any interrupted promotion first (see `reconcile_model`); call it holding
    `model_lock(model_name)`. Calling it twice rolls forward again.
    """
    server = mlflow_server or MlflowServer()
    server.check_reachable(workspace)
    client = server.client(workspace)
    settled = reconcile_model(client, model_name)
    if settled.changed:
        run_logger().warning("before rolling back: %s", settled.summary())
    aliases = read_aliases(client, model_name)
    previous, current = aliases.get(PREVIOUS), aliases.get(CHAMPION)
    if previous is None:
        raise DeployError(f"model {model_name!r} has no @{PREVIOUS} to roll back to (aliases: {aliases}); "
                          "promote a version by hand with MlflowClient.set_registered_model_alias")
    if previous == current:
        raise DeployError(f"model {model_name!r}: @{CHAMPION} and @{PREVIOUS} are both version {current}; "
                          f"there is nothing to roll back to. Run `prefect-mlops repair {model_name}` or set "
                          f"@{PREVIOUS} by hand")
    after = {**aliases, CHAMPION: previous}
    if current:
        after[PREVIOUS] = current
    else:
        del after[PREVIOUS]
    record = PromotionRecord.start("rollback", previous, before=aliases, after=after)
    change_aliases(client, model_name, record, None)
    _tag_quietly(client, model_name, previous, "prefect_mlops.rolled_back_from", current or "none")
    return Promotion(model_name=model_name, champion_version=previous, previous_version=current,
                     record_id=record.id)


@task(name="deploy", task_run_name="deploy-{model.name}-v{model.version}")
def deploy(
    model: ModelRef,
    evaluation: Evaluation,
    verdict: GateVerdict,
    mlflow_server: MlflowServer | None = None,
    workspace: str | None = None,
    strategy: Literal["direct", "canary", "shadow"] = "direct",
) -> Promotion:
    """Promote a registered challenger to champion (see `promote`), or put it on trial as `@canary`/`@shadow`."""
    if strategy != "direct":
        from prefect_mlops.tasks.rollout import start_trial  # rollout builds on this module

        promotion = start_trial(model, evaluation, verdict, strategy=strategy, mlflow_server=mlflow_server,
                                workspace=Workspace(workspace))
        create_markdown_artifact(
            f"# {model.name}: version {model.version} on trial as @{strategy}\n\nChampion stays version "
            f"{promotion.champion_version}. Gate: {verdict.main_reason}",
            key=artifact_key("promotion", model.name), description=f"Version on trial ({strategy})")
        return promotion
    promotion = promote(model, evaluation, verdict, mlflow_server=mlflow_server, workspace=Workspace(workspace))
    run_logger().info("%s: champion is now version %s (previous: %s)", model.name,
                          promotion.champion_version, promotion.previous_version or "none")
    create_markdown_artifact(
        f"# {model.name}: version {promotion.champion_version} promoted to @champion\n\n"
        f"Previous champion: {promotion.previous_version or 'none'} (kept as @{PREVIOUS}; the rollback "
        f"flow restores it).\n\nGate: {verdict.main_reason}",
        key=artifact_key("promotion", model.name), description="Promotion to champion")
    return promotion


@task(name="rollback", task_run_name="rollback-{model_name}")
def rollback_champion(model_name: str, reason: str = "", mlflow_server: MlflowServer | None = None,
                      workspace: str | None = None) -> Promotion:
    """Put the previous champion back (see `roll_back`) under the model's lock, and record why."""
    with model_lock(model_name):
        promotion = roll_back(model_name, mlflow_server=mlflow_server, workspace=Workspace(workspace))
    create_markdown_artifact(
        f"# {model_name}: rolled back to version {promotion.champion_version}\n\n"
        f"Demoted: version {promotion.previous_version} (now @{PREVIOUS}).\n\nReason: {reason or 'not given'}",
        key=artifact_key("rollback", model_name), description="Rollback of the champion")
    run_logger().warning("%s rolled back: champion %s -> %s (%s)", model_name, promotion.previous_version,
                             promotion.champion_version, reason or "no reason given")
    return promotion
