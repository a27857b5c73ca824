"""Deploy: smoke-test the challenger, then move `@champion` to it, keeping `@previous-champion`.

The smoke test loads `models:/<name>@challenger` as pyfunc (what serving loads) and must
reproduce evaluate's predictions. The alias moves are all-or-nothing: if anything fails
after the first move, every alias is put back where it was.
"""

from __future__ import annotations

from prefect import task
from prefect.artifacts import create_markdown_artifact
from pydantic import BaseModel, ConfigDict

from prefect_mlops.blocks.mlflow_server import MlflowServer
from prefect_mlops.errors import DeployError
from prefect_mlops.log import run_logger
from prefect_mlops.refs import ModelRef, artifact_key
from prefect_mlops.tasks.evaluate import Evaluation
from prefect_mlops.tasks.gate import GateVerdict
from prefect_mlops.tasks.register import CHALLENGER, require_passed
from prefect_mlops.workspace import Workspace

CHAMPION = "champion"
PREVIOUS = "previous-champion"
ALIASES = (CHAMPION, PREVIOUS, CHALLENGER)


class Promotion(BaseModel):
    """The outcome of a promotion or a rollback."""

    model_config = ConfigDict(frozen=True)

    model_name: str
    champion_version: str
    previous_version: str | None


def read_aliases(client: object, name: str) -> dict[str, str]:
    """Alias to version for one registered model."""
    return {alias: str(version) for alias, version in (client.get_registered_model(name).aliases or {}).items()}


def restore_aliases(client: object, name: str, before: dict[str, str]) -> None:
    """Put our aliases back exactly as `before` had them."""
    now = read_aliases(client, name)
    for alias in ALIASES:
        if alias in before and now.get(alias) != before[alias]:
            client.set_registered_model_alias(name, alias, before[alias])
        elif alias not in before and alias in now:
            client.delete_registered_model_alias(name, alias)


def move_aliases(client: object, name: str, moves: dict[str, str | None]) -> dict[str, str]:
    """Apply alias moves (None deletes) all-or-nothing; returns the aliases as they were."""
    before = read_aliases(client, name)
    try:
        for alias, version in moves.items():
            if version is None:
                if alias in before:
                    client.delete_registered_model_alias(name, alias)
            else:
                client.set_registered_model_alias(name, alias, version)
        after = read_aliases(client, name)
        wrong = {a: v for a, v in moves.items() if after.get(a) != v}
        if wrong:
            raise DeployError(f"model {name!r}: aliases {wrong} did not take effect (now {after})")
    except Exception as exc:
        try:
            restore_aliases(client, name, before)
        except Exception as restore_exc:
            raise DeployError(
                f"model {name!r}: moving aliases failed ({exc}) and restoring them failed too "
                f"({restore_exc}); set them back by hand to {before}"
            ) from exc
        raise DeployError(f"model {name!r}: moving aliases failed ({exc}); aliases restored to {before}") from exc
    return before


def smoke_test(model: ModelRef, evaluation: Evaluation, *, server: MlflowServer, workspace: Workspace) -> None:
    """Load `models:/<name>@challenger` as pyfunc and check it reproduces evaluate's predictions."""
    import numpy as np
    import pandas as pd

    client = server.client(workspace)
    aliased = client.get_model_version_by_alias(model.name, CHALLENGER)
    if str(aliased.version) != model.version:
        raise DeployError(f"model {model.name!r}: @{CHALLENGER} points to version {aliased.version}, "
                          f"not {model.version}; another run registered meanwhile. Re-run the flow")
    pyfunc = server.load_model(aliased.source, workspace, flavor="pyfunc")
    sample = pd.read_parquet(evaluation.smoke_sample_uri)
    expected = sample.pop("__prediction__").to_numpy()
    try:
        got = np.asarray(pyfunc.predict(sample)).reshape(len(sample), -1)[:, 0]
    except Exception as exc:
        raise DeployError(f"smoke test of {model.uri}: the pyfunc model failed to predict ({exc})") from exc
    same = np.allclose(got.astype(float), expected.astype(float), equal_nan=True) \
        if np.issubdtype(expected.dtype, np.number) else (got.astype(str) == expected.astype(str)).all()
    if not same:
        raise DeployError(f"smoke test of {model.uri}: served predictions differ from evaluation's "
                          f"(first: {got[:3]} vs {expected[:3]}); the model was not promoted")


def promote(
    model: ModelRef,
    evaluation: Evaluation,
    verdict: GateVerdict,
    *,
    mlflow_server: MlflowServer | None = None,
    workspace: Workspace | None = None,
) -> Promotion:
    """Smoke-test `model`, then make it `@champion`; the plain function behind `deploy`."""
    require_passed(verdict, model.run_id, "deploy")
    server = mlflow_server or MlflowServer()
    workspace = workspace or Workspace()
    server.check_reachable(workspace)
    smoke_test(model, evaluation, server=server, workspace=workspace)
    client = server.client(workspace)
    current = read_aliases(client, model.name).get(CHAMPION)
    moves = {CHAMPION: model.version, CHALLENGER: None}
    if current and current != model.version:
        moves = {PREVIOUS: current, **moves}
    move_aliases(client, model.name, moves)
    client.set_model_version_tag(model.name, model.version, "prefect_mlops.promoted_from", current or "none")
    return Promotion(model_name=model.name, champion_version=model.version, previous_version=current)


def roll_back(model_name: str, *, mlflow_server: MlflowServer | None = None,
              workspace: Workspace | None = None) -> Promotion:
    """Make `@previous-champion` the champion again; the demoted one becomes `@previous-champion`.

    Calling it twice rolls forward again.
    """
    server = mlflow_server or MlflowServer()
    server.check_reachable(workspace)
    client = server.client(workspace)
    aliases = read_aliases(client, model_name)
    previous, current = aliases.get(PREVIOUS), aliases.get(CHAMPION)
    if previous is None:
        raise DeployError(f"model {model_name!r} has no @{PREVIOUS} to roll back to (aliases: {aliases}); "
                          "promote a version by hand with MlflowClient.set_registered_model_alias")
    move_aliases(client, model_name, {CHAMPION: previous, PREVIOUS: current})
    client.set_model_version_tag(model_name, previous, "prefect_mlops.rolled_back_from", current or "none")
    return Promotion(model_name=model_name, champion_version=previous, previous_version=current)


@task(name="deploy", task_run_name="deploy-{model.name}-v{model.version}")
def deploy(
    model: ModelRef,
    evaluation: Evaluation,
    verdict: GateVerdict,
    mlflow_server: MlflowServer | None = None,
    workspace: str | None = None,
) -> Promotion:
    """Promote a registered challenger to champion (see `promote`)."""
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
    """Put the previous champion back (see `roll_back`) and record why."""
    promotion = roll_back(model_name, mlflow_server=mlflow_server, workspace=Workspace(workspace))
    create_markdown_artifact(
        f"# {model_name}: rolled back to version {promotion.champion_version}\n\n"
        f"Demoted: version {promotion.previous_version} (now @{PREVIOUS}).\n\nReason: {reason or 'not given'}",
        key=artifact_key("rollback", model_name), description="Rollback of the champion")
    run_logger().warning("%s rolled back: champion %s -> %s (%s)", model_name, promotion.previous_version,
                             promotion.champion_version, reason or "no reason given")
    return promotion
