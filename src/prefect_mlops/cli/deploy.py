"""`prefect-mlops deploy`: work pools, blocks, deployments and notification automations."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
from datetime import timedelta
from pathlib import Path
from typing import Any

from prefect_mlops.cli.processes import prefect_exe

DEPLOYMENT_DIRS = (Path.cwd() / "deployments", Path(__file__).resolve().parents[3] / "deployments")
DEFAULT_POOLS: dict[str, dict[str, Any]] = {
    "cpu": {"type": "process", "base_job_template": "job_templates/process.json"},
    "gpu": {"type": "process", "base_job_template": "job_templates/process-gpu.json"},
}
NOTIFY_NAME = "prefect-mlops: {kind}"
# What the Automations page says about each: when it fires and what it sends.
NOTIFY_DESCRIPTIONS = {
    "promotion": "Sends a message when continuous training promotes a new champion.",
    "rejection": "Sends a message when the quality gate rejects a challenger: the run ends Rejected, with "
                 "the gate's reasons.",
    "drift": "Sends one message per model and hour when a drift monitor reports drift, with the drifted "
             "columns and the report.",
    "failure": "Sends a message when any prefect-mlops flow run fails or crashes, with its state message.",
}
MLOPS_FLOWS = ["continuous-training", "drift-monitor", "rollback", "batch-score", "train-on-pool",
               "progressive-rollout"]




def find_deployments_dir() -> Path:
    """`./deployments`, else the one next to this package's source tree."""
    for folder in DEPLOYMENT_DIRS:
        if (folder / "prefect.yaml").exists():
            return folder
    raise FileNotFoundError("no deployments/prefect.yaml here or next to the package; pass --prefect-file")


def read_config(path: Path | None) -> dict[str, Any]:
    """A deploy config (YAML or JSON): work_pools, blocks, notifications. Relative paths are the file's."""
    if path is None:
        return {}
    import yaml

    text = expand_env(path.read_text(), path)  # ${VAR} from the environment: secrets stay out of the file
    config = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    if not isinstance(config, dict):
        raise SystemExit(f"{path}: expected a mapping with work_pools, blocks and notifications")
    config["_dir"] = str(path.resolve().parent)
    return config


def expand_env(text: str, path: Path) -> str:
    """`text` with every `${VAR}` replaced from the environment; an unset one is refused, naming it and the file.

    YAML comments are not read (they may mention `${VAR}` as documentation).

    Example:
        ```python
        import os
        from pathlib import Path
        from prefect_mlops.cli.deploy import expand_env
        os.environ["DEMO_KEY"] = "k"
        assert expand_env("key: ${DEMO_KEY}  # not ${UNSET_HERE}", Path("c.yaml")).startswith("key: k")
        ```
    """
    import re

    unset: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), 1):
        code = re.split(r"(?:^|\s)#", line, maxsplit=1)[0]
        for name in re.findall(r"\$\{(\w+)\}", code):
            if name not in os.environ:
                unset.setdefault(name, number)
    if unset:
        where = ", ".join(f"${{{name}}} (line {line})" for name, line in unset.items())
        raise SystemExit(f"{path}: {where} {'is' if len(unset) == 1 else 'are'} not set in the environment; "
                         f"export {'it' if len(unset) == 1 else 'them'} (e.g. `export {next(iter(unset))}=...`) "
                         f"before running, or write the value into the file")
    return os.path.expandvars(text)


def resolve(path: str, base: str | Path) -> Path:
    """A config path: absolute, relative to the config's folder, or relative to the deployments folder."""
    candidate = Path(path)
    if candidate.is_absolute():
        return candidate
    for root in (Path(base), *DEPLOYMENT_DIRS):
        if (root / candidate).exists():
            return root / candidate
    raise FileNotFoundError(f"{path}: not found next to the config ({base}) nor in deployments/")


async def ensure_pools(pools: dict[str, dict[str, Any]], base: str | Path) -> list[str]:
    """Create missing work pools and queues; returns what was created."""
    from prefect import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    made: list[str] = []
    async with get_client() as client:
        for name, spec in pools.items():
            spec = spec or {}
            try:
                await client.read_work_pool(name)
            except ObjectNotFound:
                template = {}
                if spec.get("base_job_template"):
                    template = json.loads(resolve(spec["base_job_template"], base).read_text())
                await client.create_work_pool(WorkPoolCreate(
                    name=name, type=spec.get("type", "process"), base_job_template=template,
                    description=spec.get("description")))
                made.append(f"work pool {name!r} ({spec.get('type', 'process')})")
            for queue in spec.get("queues", []):
                try:
                    await client.create_work_queue(name=queue, work_pool_name=name)
                    made.append(f"work queue {name}/{queue}")
                except ObjectAlreadyExists:
                    pass
    return made


def save_blocks(blocks: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    """Save `{block type slug: {name: values}}`, overwriting; returns `slug/name` of each."""
    import prefect.blocks.notifications  # noqa: F401 - registers Prefect's notification blocks
    from prefect.blocks.core import Block
    from prefect.utilities.dispatch import lookup_type

    import prefect_mlops.blocks  # noqa: F401 - registers this package's blocks

    saved = []
    for slug, documents in (blocks or {}).items():
        try:
            cls = lookup_type(Block, slug)
        except KeyError as exc:
            raise SystemExit(f"block type {slug!r} is unknown here; install the package that defines it") from exc
        for name, values in (documents or {}).items():
            cls(**(values or {})).save(name, overwrite=True)
            saved.append(f"{slug}/{name}")
    return saved


def apply_deployments(prefect_file: Path, env: dict[str, str] | None = None) -> str:
    """`prefect --no-prompt deploy --all` from the prefect.yaml's folder; returns its output."""
    done = subprocess.run([prefect_exe(), "--no-prompt", "deploy", "--all", "--prefect-file", str(prefect_file)],
                          cwd=prefect_file.parent, env=env or {**os.environ, "PREFECT_CLI_PROMPT": "false"},
                          capture_output=True, text=True, timeout=600, check=False)
    if done.returncode != 0:
        raise SystemExit(f"prefect deploy failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done.stdout


async def pin_block_references(deployment_names: list[str]) -> list[str]:
    """Replace `{"$ref": {"block_document_slug": ...}}` parameters with the block's id, as the UI writes them.

    prefect.yaml names blocks by slug (portable, kept as references by `prefect deploy`); the UI's
    block pickers only recognise ids, so after deploying each slug is resolved once, here.
    """
    from prefect import get_client
    from prefect.client.schemas.actions import DeploymentUpdate
    from prefect.exceptions import ObjectNotFound

    pinned: list[str] = []
    missing: set[str] = set()
    async with get_client() as client:
        async def pin(value: Any) -> Any:
            if isinstance(value, dict):
                slug = value.get("$ref", {}).get("block_document_slug") if isinstance(value.get("$ref"), dict) else None
                if slug:
                    block_type, _, name = slug.partition("/")
                    try:
                        document = await client.read_block_document_by_name(name=name, block_type_slug=block_type)
                    except ObjectNotFound:
                        missing.add(slug)
                        return value  # still a valid reference: runs load the block once it is saved
                    return {"$ref": {"block_document_id": str(document.id)}}
                return {key: await pin(item) for key, item in value.items()}
            return value

        for name in deployment_names:
            deployment = await client.read_deployment_by_name(name)
            parameters = await pin(deployment.parameters)
            if parameters != deployment.parameters:
                await client.update_deployment(deployment.id, DeploymentUpdate(parameters=parameters))
                pinned.append(f"{name} (to block ids: the UI's block pickers show them)")
    pinned += [f"nothing for block {slug}: not saved yet; save it (e.g. with --config) before the first run"
               for slug in sorted(missing)]
    return pinned


def notification_automations(block_document_id: str, kinds: list[str]) -> list[Any]:
    """Automations that send promotion, rejection, drift and failure messages through one notification block."""
    from prefect.automations import Automation, EventTrigger, SendNotification

    ct_flow = {"prefect.resource.role": "flow", "prefect.resource.name": "continuous-training"}
    any_run = {"prefect.resource.id": "prefect.flow-run.*"}
    model = "{{ flow_run.parameters['model_name'] }}"
    run = "flow run {{ flow_run.name }} ({{ flow_run.id }})"
    specs = {
        "promotion": (EventTrigger(expect={"prefect.flow-run.Completed"}, match=any_run,
                                   match_related=ct_flow, posture="Reactive", threshold=1),
                      f"prefect-mlops: {model} promoted a new champion",
                      f"Continuous training of {model} promoted a new champion in {run}."),
        "rejection": (EventTrigger(expect={"prefect.flow-run.Rejected"}, match=any_run,
                                   match_related=ct_flow, posture="Reactive", threshold=1),
                      f"prefect-mlops: gate rejected the challenger of {model}",
                      f"{{{{ flow_run.state.message }}}} ({run})"),
        # One drift alert per model per hour, however many monitors report it (like the retraining).
        "drift": (EventTrigger(expect={"prefect_mlops.drift.detected"},
                               match={"prefect.resource.id": "prefect-mlops.model.*"}, for_each={"prefect.resource.id"},
                               posture="Reactive", threshold=1, within=timedelta(hours=1)),
                  "prefect-mlops: drift detected for {{ event.payload.model_name }}",
                  "{{ event.payload.model_name }}: drift share {{ event.payload.drift_share }} on window "
                  "{{ event.payload.window }}; drifted columns {{ event.payload.drifted_columns }}. "
                  "Report: {{ event.payload.report }}"),
        "failure": (EventTrigger(expect={"prefect.flow-run.Failed", "prefect.flow-run.Crashed"},
                                 match=any_run,
                                 match_related={"prefect.resource.role": "flow", "prefect.resource.name": MLOPS_FLOWS},
                                 posture="Reactive", threshold=1),
                    "prefect-mlops: {{ flow.name }} run {{ flow_run.name }} {{ flow_run.state.name }}",
                    f"{{{{ flow.name }}}} {run} ended {{{{ flow_run.state.name }}}}: {{{{ flow_run.state.message }}}}"),
    }
    unknown = sorted(set(kinds) - set(specs))
    if unknown:
        raise SystemExit(f"notifications.on: unknown kinds {unknown}; choose from {sorted(specs)}")
    return [Automation(name=NOTIFY_NAME.format(kind=kind), description=NOTIFY_DESCRIPTIONS[kind],
                       trigger=trigger, actions=[SendNotification(block_document_id=block_document_id,
                                                                  subject=subject, body=body)])
            for kind, (trigger, subject, body) in specs.items() if kind in kinds]


async def ensure_notifications(spec: dict[str, Any]) -> list[str]:
    """Replace the prefect-mlops notification automations with ones for `spec` (block + kinds)."""
    import prefect.blocks.notifications  # noqa: F401 - registers Prefect's notification blocks
    from prefect import get_client
    from prefect.blocks.core import Block
    from prefect.utilities.dispatch import lookup_type

    slug, _, name = str(spec["block"]).partition("/")
    if not name:
        raise SystemExit(f"notifications.block {spec['block']!r}: write it as '<block type slug>/<name>'")
    kinds = list(spec.get("on") or ["promotion", "rejection", "drift", "failure"])
    async with get_client() as client:
        document = await client.read_block_document_by_name(name=name, block_type_slug=slug)
        if not issubclass(lookup_type(Block, slug), _notification_base()):
            raise SystemExit(f"notifications.block {spec['block']!r} is not a notification block")
        for automation in await client.read_automations():
            if automation.name.startswith(NOTIFY_NAME.format(kind="")):
                await client.delete_automation(automation.id)
    made = []
    for automation in notification_automations(str(document.id), kinds):
        await automation.acreate()
        made.append(f"automation {automation.name!r} -> {spec['block']}")
    return made


def _notification_base() -> type:
    from prefect.blocks.abstract import NotificationBlock

    return NotificationBlock


def deploy(config: dict[str, Any], prefect_file: Path | None = None, *, env: dict[str, str] | None = None,
           say: Any = print) -> dict[str, list[str]]:
    """Pools and queues, blocks, deployments, then notification automations, against the current API."""
    base = config.get("_dir", Path.cwd())
    created: dict[str, list[str]] = {}
    created["pools"] = asyncio.run(ensure_pools(config.get("work_pools") or DEFAULT_POOLS, base))
    for line in created["pools"]:
        say(f"created {line}")
    created["blocks"] = save_blocks(config.get("blocks") or {})
    for line in created["blocks"]:
        say(f"saved block {line}")
    prefect_file = prefect_file or find_deployments_dir() / "prefect.yaml"
    output = apply_deployments(prefect_file, env)
    created["deployments"] = sorted({line.split("'")[1] for line in output.splitlines()
                                     if "Deployment '" in line and "successfully created" in line})
    for line in created["deployments"]:
        say(f"applied deployment {line}")
    for line in asyncio.run(pin_block_references(created["deployments"])):
        say(f"block references pinned: {line}")
    created["automations"] = []
    if config.get("notifications"):
        created["automations"] = asyncio.run(ensure_notifications(config["notifications"]))
        for line in created["automations"]:
            say(f"created {line}")
    return created



def cmd_deploy(args: argparse.Namespace) -> int:
    from prefect_mlops.cli.auth import check_api_credentials
    from prefect_mlops.cli.preflight import prefect_api

    config = read_config(args.config)
    prefect_api("deploy", required=True)
    check_api_credentials()  # a refused password is said here, not as a 401 in the middle of a deploy
    deploy(config, args.prefect_file)
    return 0

