"""`prefect-mlops status MODEL`: the champion, its predecessor, every version with its verdict and trigger,
and the last drift and performance checks."""

from __future__ import annotations

import argparse
import json
from datetime import datetime, timezone
from typing import Any

STATUS_EXAMPLES = """examples:
  prefect-mlops status churn --tracking-uri sqlite:///mlflow.db --workspace mlops-workspace
  prefect-mlops status churn --mlflow-block default --versions 5

columns: version, aliases, gate verdict, final status, what triggered the training ('-': not recorded),
the data it learned from, when it was registered, and the version's description (the verdict's main reason).
The last drift and performance checks are the monitor's Prefect artifacts (from PREFECT_API_URL, else the
embedded API's database under PREFECT_HOME).
"""


def add_arguments(sub: Any) -> None:
    """Register `status` on the `prefect-mlops` subparsers."""
    from prefect_mlops.cli.run import add_registry_options

    p = sub.add_parser("status", help="champion, previous champion, versions with verdicts and triggers, last checks",
                       description=__doc__.split("\n\n")[0].replace("\n", " "), epilog=STATUS_EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="registered model name")
    p.add_argument("--versions", type=int, default=20, help="how many versions to list, newest first (default 20)")
    p.add_argument("--no-checks", action="store_true", help="skip the Prefect artifacts of the last checks")
    add_registry_options(p)
    p.set_defaults(func=cmd_status)


def trigger_text(tags: dict[str, str]) -> str:
    """The `prefect_mlops.trigger` tag in words, or '-' when the version has none.

    Example:
        ```python
        from prefect_mlops.cli.status import trigger_text
        tag = '{"kind": "drift", "event_id": "e1", "drift_share": 0.8}'
        assert trigger_text({"prefect_mlops.trigger": tag}) == "drift (share 0.80, event e1)"
        assert trigger_text({}) == "-"
        ```
    """
    raw = tags.get("prefect_mlops.trigger")
    if not raw:
        return "-"
    try:
        trigger = json.loads(raw)
    except ValueError:
        return raw
    if not isinstance(trigger, dict):
        return str(trigger)
    details = []
    if isinstance(trigger.get("drift_share"), (int, float)):
        details.append(f"share {trigger['drift_share']:.2f}")
    if trigger.get("event_id"):
        details.append(f"event {trigger['event_id']}")
    if trigger.get("created_by"):
        details.append(f"by {trigger['created_by']}")
    kind = str(trigger.get("kind", "?"))
    return f"{kind} ({', '.join(details)})" if details else kind


def _data_text(tags: dict[str, str], lineage: Any) -> str:
    if lineage is not None:
        data = lineage.dataset
        return f"{data.name}@{data.fingerprint[:12]} {data.rows} rows {data.window or 'all rows'}"
    try:
        facts = json.loads(tags["prefect_mlops.lineage"])["data"]
        return f"{facts.get('name', '?')}@{str(facts.get('fingerprint', ''))[:12]} {facts.get('rows', '?')} rows " \
               f"{facts.get('window') or 'all rows'}"
    except (KeyError, ValueError, TypeError):
        fingerprint = tags.get("prefect_mlops.data.fingerprint")
        return f"@{fingerprint[:12]} {tags.get('prefect_mlops.data.window') or ''}".strip() if fingerprint else "-"


def _when(millis: Any) -> str:
    if not millis:
        return "-"
    return datetime.fromtimestamp(int(millis) / 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def version_rows(client: Any, model: str, server: Any, workspace: Any, limit: int) -> list[dict[str, str]]:
    """One row per version, newest first: aliases, verdict, status, trigger, data, date, description."""
    from prefect_mlops.tasks.lineage import read_lineage
    from prefect_mlops.tasks.reconcile import read_aliases

    versions = sorted(client.search_model_versions(f"name='{model}'"), key=lambda v: int(v.version), reverse=True)
    if not versions:
        return []
    held: dict[str, list[str]] = {}
    for alias, number in read_aliases(client, model).items():  # a version search does not return aliases
        held.setdefault(str(number), []).append(alias)
    rows = []
    for version in versions[:limit]:
        tags = dict(version.tags or {})
        lineage = read_lineage(version.run_id, server, workspace) if version.run_id else None
        aliases = ",".join(sorted(held.get(str(version.version), []))) or "-"
        rows.append({"version": f"v{version.version}", "aliases": aliases,
                     "gate": tags.get("prefect_mlops.gate", "-"), "status": tags.get("prefect_mlops.status", "-"),
                     "trigger": trigger_text(tags), "data": _data_text(tags, lineage),
                     "registered": _when(version.creation_timestamp),
                     "description": " ".join((version.description or "").split()) or "-"})
    return rows


def last_checks(model: str) -> dict[str, str]:
    """The newest drift and performance artifacts of `model` in the Prefect API, each as one line."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    from prefect_mlops.refs import artifact_key

    found: dict[str, str] = {}
    with get_client(sync_client=True) as client:
        for label in ("drift", "performance"):
            key = artifact_key(label, model)
            artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
                                              sort=ArtifactSort.CREATED_DESC, limit=1)
            if not artifacts:
                found[label] = "none recorded"
                continue
            artifact = artifacts[0]
            lines = [line.strip("# ").strip() for line in str(artifact.data or "").splitlines() if line.strip()]
            when = artifact.created.strftime("%Y-%m-%d %H:%M UTC") if artifact.created else "?"
            found[label] = f"{when}: " + " ".join(lines[:2])[:300]
    return found


def cmd_status(args: argparse.Namespace) -> int:
    from prefect_mlops.cli.run import prepare, registry

    prepare(args)
    from prefect_mlops.errors import MlopsError
    from prefect_mlops.tasks.reconcile import read_record
    from prefect_mlops.workspace import Workspace

    workspace = Workspace(args.workspace)
    try:
        server = registry(args)
        server.check_reachable(workspace)
        client = server.client(workspace)
        rows = version_rows(client, args.model, server, workspace, args.versions)
    except MlopsError as exc:
        raise SystemExit(f"prefect-mlops status: {exc}") from None
    if not rows:
        raise SystemExit(f"prefect-mlops status: no versions of {args.model!r} in {server.uri(workspace)}; train it "
                         f"first (prefect-mlops train {args.model} ...) or check --tracking-uri / --workspace")
    aliases = {alias: row["version"] for row in rows for alias in row["aliases"].split(",")}
    print(f"model {args.model} ({server.uri(workspace)})")
    print(f"  champion:          {aliases.get('champion', 'none')}")
    print(f"  previous champion: {aliases.get('previous-champion', 'none')}")
    record = read_record(client, args.model)
    print(f"  last promotion:    {record.describe() if record else '-'}")
    if not args.no_checks:
        from prefect_mlops.cli.preflight import prefect_api

        prefect_api("status", required=False)
        checks = last_checks(args.model)
        print(f"  last drift check:  {checks['drift']}")
        print(f"  last performance:  {checks['performance']}")
    print()
    heads = {"version": "version", "aliases": "aliases", "gate": "gate", "status": "status", "trigger": "trigger",
             "data": "data", "registered": "registered", "description": "verdict"}
    widths = {key: max(len(heads[key]), *(len(row[key]) for row in rows)) for key in heads if key != "description"}
    print("  ".join(heads[key].ljust(widths[key]) for key in widths) + "  " + heads["description"])
    for row in rows:
        print("  ".join(row[key].ljust(widths[key]) for key in widths) + "  " + row["description"][:160])
    return 0
