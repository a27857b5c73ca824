"""Registry consistency: the promotion record, the reconciler and the per-model lock.

Moving `@champion` takes several registry writes, and a process can die (SIGKILL) or the
server can go away between any two of them. So a promotion first writes its intent as a
registered-model tag, `prefect_mlops.promotion` (a JSON `PromotionRecord`: the aliases
before and after, state `pending`), then moves the aliases, then marks the record `done`.
Whoever runs next (a continuous-training run, a rollback, `prefect-mlops repair`) calls
`reconcile_model`: a `pending` record whose aliases all reached their targets is completed,
any other `pending` record is undone (the aliases before are put back). Versions the project
created that carry neither an alias nor a final status (a run killed between
`create_model_version` and its alias) are tagged `prefect_mlops.status=failed` with the reason.

Runs of one model are serialised by `model_lock`: a Prefect global concurrency limit
(`prefect-mlops-model-<name>`, limit 1) held around evaluate -> gate -> register -> deploy.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from prefect import task
from pydantic import BaseModel, ConfigDict, Field

from prefect_mlops.blocks.mlflow_server import MlflowServer
from prefect_mlops.errors import ModelBusyError, RegistryError
from prefect_mlops.log import run_logger
from prefect_mlops.workspace import Workspace

CHAMPION = "champion"
PREVIOUS = "previous-champion"
CHALLENGER = "challenger"
ALIASES = (CHAMPION, PREVIOUS, CHALLENGER)
# A gated version on trial beside the champion (see prefect_mlops.tasks.rollout): serving, never "left over".
CANARY = "canary"
SHADOW = "shadow"
SHARE_TAG = "prefect_mlops.canary.share"  # registered-model tag: the canary's share of traffic

RECORD_TAG = "prefect_mlops.promotion"
STATUS_TAG = "prefect_mlops.status"
STATUS_REASON_TAG = "prefect_mlops.status.reason"
PROMOTED, FAILED = "promoted", "failed"
# Tags older releases wrote on versions they promoted: those versions count as finished too.
_PROMOTED_MARKS = ("prefect_mlops.promoted_from", "prefect_mlops.rolled_back_from")
LOCK_PREFIX = "prefect-mlops-model-"
LOCK_TIMEOUT = 900.0  # evaluate -> deploy takes seconds to minutes; past this something is stuck
LOCK_LEASE = 60.0  # a killed holder's slot is freed by the server this long after its last renewal


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class PromotionRecord(BaseModel):
    """The intent of one alias change, written before the first alias moves.

    Example:
        ```python
        from prefect_mlops.tasks.reconcile import PromotionRecord
        record = PromotionRecord.start("promote", "2", before={"champion": "1", "challenger": "2"},
                                       after={"champion": "2", "previous-champion": "1"})
        assert PromotionRecord.model_validate_json(record.model_dump_json()).state == "pending"
        ```
    """

    model_config = ConfigDict(frozen=True)

    id: str
    kind: Literal["promote", "rollback"]
    version: str = Field(description="The version becoming @champion.")
    state: Literal["pending", "done", "undone"]
    before: dict[str, str] = Field(description="Our aliases before the change.")
    after: dict[str, str] = Field(description="Our aliases the change leads to.")
    started_at: str
    finished_at: str | None = None
    note: str = ""

    @classmethod
    def start(cls, kind: Literal["promote", "rollback"], version: str, *, before: dict[str, str],
              after: dict[str, str]) -> PromotionRecord:
        return cls(id=uuid.uuid4().hex[:12], kind=kind, version=version, state="pending",
                   before=before, after=after, started_at=now())

    def finish(self, state: Literal["done", "undone"], note: str = "") -> PromotionRecord:
        return self.model_copy(update={"state": state, "finished_at": now(), "note": note[:2000]})

    def describe(self) -> str:
        return (f"{self.kind} {self.id} of version {self.version} ({self.state}): "
                f"{_fmt(self.before)} -> {_fmt(self.after)}")


class ReconcileReport(BaseModel):
    """What `reconcile_model` found and did."""

    model_name: str
    actions: list[str] = Field(default_factory=list)
    failed_versions: list[str] = Field(default_factory=list, description="Versions it tagged failed.")
    record: PromotionRecord | None = None
    aliases: dict[str, str] = Field(default_factory=dict, description="Our aliases afterwards.")

    @property
    def changed(self) -> bool:
        return bool(self.actions)

    def summary(self) -> str:
        head = f"{self.model_name}: " + ("; ".join(self.actions) if self.actions else "registry consistent")
        return f"{head} (aliases now {_fmt(self.aliases)})"


def _fmt(aliases: dict[str, str]) -> str:
    return "{" + ", ".join(f"{a}: v{v}" for a, v in sorted(aliases.items())) + "}"


def read_aliases(client: Any, name: str) -> dict[str, str]:
    """Our aliases (champion, previous-champion, challenger) to version, for one registered model."""
    aliases = client.get_registered_model(name).aliases or {}
    return {alias: str(version) for alias, version in aliases.items() if alias in ALIASES}


def read_record(client: Any, name: str) -> PromotionRecord | None:
    """The model's promotion record, or None when it never had one (or it does not exist)."""
    from mlflow.exceptions import MlflowException

    try:
        tags = client.get_registered_model(name).tags or {}
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise
    raw = tags.get(RECORD_TAG)
    return PromotionRecord.model_validate_json(raw) if raw else None


def write_record(client: Any, name: str, record: PromotionRecord) -> None:
    client.set_registered_model_tag(name, RECORD_TAG, record.model_dump_json())


def set_aliases(client: Any, name: str, target: dict[str, str]) -> None:
    """Make our aliases exactly `target`; the champion first, so it never points nowhere."""
    now_ = read_aliases(client, name)
    for alias in (CHAMPION, PREVIOUS, CHALLENGER):
        if alias in target and now_.get(alias) != target[alias]:
            client.set_registered_model_alias(name, alias, target[alias])
        elif alias not in target and alias in now_:
            client.delete_registered_model_alias(name, alias)
    got = read_aliases(client, name)
    if got != target:
        raise RegistryError(f"model {name!r}: aliases are {_fmt(got)} after setting them to {_fmt(target)}")


def mark_version(client: Any, name: str, version: str, status: str, reason: str) -> None:
    """Give a version its final status (`promoted` or `failed`) and why."""
    client.set_model_version_tag(name, version, STATUS_TAG, status)
    client.set_model_version_tag(name, version, STATUS_REASON_TAG, reason[:5000])


def discard_version(client: Any, name: str, version: str, reason: str) -> str:
    """Delete a version this project created; when that fails, tag it failed. Says what was left.

    Never raises: the caller is already handling a failure and reports the returned sentence.
    """
    try:
        client.delete_model_version(name, version)  # deleting a version drops its aliases too
        return f"version {version} was deleted"
    except Exception as delete_exc:
        why = _short(delete_exc)
    try:
        mark_version(client, name, version, FAILED, reason)
    except Exception as tag_exc:
        return (f"version {version} could not be deleted ({why}) nor tagged failed ({_short(tag_exc)}): "
                f"it is left without a status; the next run or `prefect-mlops repair {name}` tags it failed")
    left = f"version {version} could not be deleted ({why}): tagged {STATUS_TAG}={FAILED}"
    # A version that stays must not stay on trial: the scoring service would keep sending it traffic.
    try:
        aliases = client.get_registered_model(name).aliases or {}
        held = [alias for alias in (CANARY, SHADOW) if str(aliases.get(alias)) == str(version)]
        if CANARY in held:
            client.set_registered_model_tag(name, SHARE_TAG, "0")  # traffic off first
        for alias in held:
            client.delete_registered_model_alias(name, alias)
        if CANARY in held:
            client.delete_registered_model_tag(name, SHARE_TAG)
    except Exception as alias_exc:
        return (f"{left}; taking it off trial failed ({_short(alias_exc)}): the scoring service refuses a failed "
                "version anyway")
    return left + (f"; @{' and @'.join(held)} removed" if held else "")


def _short(exc: BaseException, limit: int = 300) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:limit] + ("…" if len(text) > limit else "")


def _is_final(tags: dict[str, str]) -> bool:
    return tags.get(STATUS_TAG) in (PROMOTED, FAILED) or any(mark in tags for mark in _PROMOTED_MARKS)


def _is_managed(tags: dict[str, str]) -> bool:
    return any(key.startswith("prefect_mlops.") for key in tags)


def settle_record(client: Any, name: str, record: PromotionRecord, actions: list[str]) -> PromotionRecord:
    """Complete a pending promotion whose aliases all moved; undo any other. Returns the record as left."""
    if record.state != "pending":
        return record
    aliases = read_aliases(client, name)
    if aliases == record.after:
        if record.kind == "promote":
            mark_version(client, name, record.version, PROMOTED,
                         f"promotion {record.id} completed by reconcile: every alias had moved")
        done = record.finish("done", "completed by reconcile: every alias had already moved")
        write_record(client, name, done)
        actions.append(f"completed {record.kind} {record.id}: champion is version {record.version}")
        return done
    existing = {v for v in record.before.values() if _version_exists(client, name, v)}
    target = {alias: v for alias, v in record.before.items() if v in existing}
    if record.kind == "promote" and target.get(CHALLENGER) == record.version:
        del target[CHALLENGER]  # the run that was promoting it is gone
    set_aliases(client, name, target)
    serving = {target.get(CHAMPION), target.get(PREVIOUS)}
    if record.kind == "promote" and record.version not in serving and _version_exists(client, name, record.version):
        mark_version(client, name, record.version, FAILED,
                     f"promotion {record.id} was interrupted (aliases were {_fmt(aliases)}); undone by reconcile")
    undone = record.finish("undone", f"undone by reconcile: aliases were {_fmt(aliases)}, "
                                     f"restored to {_fmt(target)}")
    write_record(client, name, undone)
    actions.append(f"undid interrupted {record.kind} {record.id} of version {record.version}: aliases "
                   f"{_fmt(aliases)} restored to {_fmt(target)}")
    return undone


def _version_exists(client: Any, name: str, version: str) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        client.get_model_version(name, version)
        return True
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return False
        raise


def _repair_previous(client: Any, name: str, aliases: dict[str, str], actions: list[str]) -> None:
    """@previous-champion on the champion itself (left by older releases): point it where it belongs."""
    champion = aliases.get(CHAMPION)
    if champion is None or aliases.get(PREVIOUS) != champion:
        return
    tags = client.get_model_version(name, champion).tags or {}
    before = tags.get("prefect_mlops.promoted_from")
    if before and before not in ("none", champion) and _version_exists(client, name, before):
        client.set_registered_model_alias(name, PREVIOUS, before)
        actions.append(f"@{PREVIOUS} pointed at the champion (version {champion}); set to version {before}, "
                       "the version it replaced")
    else:
        client.delete_registered_model_alias(name, PREVIOUS)
        actions.append(f"@{PREVIOUS} pointed at the champion (version {champion}) and no earlier champion is "
                       "recorded; alias removed")


def reconcile_model(client: Any, name: str) -> ReconcileReport:
    """Bring one model's registry entry back to a consistent state; say what was done.

    Call it holding `model_lock(name)`: a run in the middle of registering would look interrupted.

    Example:
        ```python
        import tempfile
        from prefect_mlops.blocks import MlflowServer
        from prefect_mlops.tasks.reconcile import reconcile_model
        client = MlflowServer(tracking_uri=f"sqlite:///{tempfile.mkdtemp()}/m.db").client()
        assert reconcile_model(client, "no-such-model").actions == []
        ```
    """
    from mlflow.exceptions import MlflowException

    report = ReconcileReport(model_name=name)
    try:
        model = client.get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return report
        raise
    raw = (model.tags or {}).get(RECORD_TAG)
    record = PromotionRecord.model_validate_json(raw) if raw else None
    if record is not None:
        record = settle_record(client, name, record, report.actions)
    aliases = read_aliases(client, name)
    _repair_previous(client, name, aliases, report.actions)
    aliases = read_aliases(client, name)
    on_trial = {str(v) for a, v in (client.get_registered_model(name).aliases or {}).items() if a in (CANARY, SHADOW)}
    for version in client.search_model_versions(f"name='{name}'"):
        number, tags = str(version.version), dict(version.tags or {})
        held = [a for a, v in aliases.items() if v == number]
        if tags.get(STATUS_TAG) == FAILED and CHALLENGER in held:
            client.delete_registered_model_alias(name, CHALLENGER)
            report.actions.append(f"@{CHALLENGER} pointed at version {number}, which failed; alias removed")
        if not _is_managed(tags) or _is_final(tags):
            continue
        if set(held) & {CHAMPION, PREVIOUS} or number in on_trial:
            continue  # serving: a champion (or a canary or shadow) is never marked failed
        reason = ("left by an interrupted run: " +
                  (f"still @{CHALLENGER} with no run promoting it" if held else "no alias and no status") +
                  f" (found by reconcile at {now()})")
        if held:
            client.delete_registered_model_alias(name, CHALLENGER)
        mark_version(client, name, number, FAILED, reason)
        report.failed_versions.append(number)
        report.actions.append(f"version {number} {reason.split(' (found')[0]}: tagged {STATUS_TAG}={FAILED}")
    report.record = record
    report.aliases = read_aliases(client, name)
    return report


@task(name="reconcile", task_run_name="reconcile-{model_name}")
def reconcile(model_name: str, mlflow_server: MlflowServer | None = None,
              workspace: str | None = None) -> ReconcileReport:
    """Reconcile a model's registry entry under its lock (see `reconcile_model`)."""
    return reconcile_registry(model_name, mlflow_server=mlflow_server, workspace=Workspace(workspace))


def reconcile_registry(model_name: str, *, mlflow_server: MlflowServer | None = None,
                       workspace: Workspace | None = None, lock: bool = True) -> ReconcileReport:
    """`reconcile_model` against a server, holding the model's lock, logging what it did."""
    server = mlflow_server or MlflowServer()
    server.check_reachable(workspace)
    client = server.client(workspace)
    if lock:
        with model_lock(model_name):
            report = reconcile_model(client, model_name)
    else:
        report = reconcile_model(client, model_name)
    logger = run_logger()
    (logger.warning if report.changed else logger.info)("reconcile %s", report.summary())
    return report


# ---------------------------------------------------------------------------- the per-model lock


def lock_name(model_name: str) -> str:
    return f"{LOCK_PREFIX}{model_name}"


def ensure_limit(name: str) -> None:
    """Create the global concurrency limit `name` with one slot, unless it exists."""
    from prefect import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, GlobalConcurrencyLimitUpdate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            limit = client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            try:
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
            except ObjectAlreadyExists:
                pass  # another run created it between our read and our create
            return
        if limit.limit != 1 or not limit.active:
            client.update_global_concurrency_limit(name, GlobalConcurrencyLimitUpdate(limit=1, active=True))


def _embedded_api() -> bool:
    """No PREFECT_API_URL: every process starts its own API on the shared database in PREFECT_HOME."""
    from prefect.settings import PREFECT_API_URL

    return not PREFECT_API_URL.value()


@contextmanager
def _host_lock(name: str, timeout: float) -> Iterator[None]:
    """An flock on this machine, released by the kernel even when its holder is SIGKILLed."""
    import fcntl

    from prefect.settings import PREFECT_HOME

    folder = Path(PREFECT_HOME.value()) / "prefect-mlops-locks"
    folder.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout
    with open(folder / f"{name}.lock", "a+") as handle:
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{handle.name} held for over {timeout:.0f} s") from None
                time.sleep(0.2)
        yield


def _clear_stale_slots(name: str) -> None:
    """On the embedded API a killed holder's slot is never reclaimed (no repossessor runs there).

    Called holding the host lock, which every holder of the slot holds too: any slot still
    taken belongs to a process that died.
    """
    from prefect import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate

    with get_client(sync_client=True) as client:
        limit = client.read_global_concurrency_limit_by_name(name)
        if limit.active_slots:
            client.update_global_concurrency_limit(name, GlobalConcurrencyLimitUpdate(active_slots=0))
            run_logger().warning("lock %s: cleared %d slot(s) left by a run that died", name, limit.active_slots)


@contextmanager
def model_lock(model_name: str, *, timeout: float = LOCK_TIMEOUT) -> Iterator[None]:
    """Hold the model's lock: one run at a time from evaluate to deploy, on any Prefect API.

    Example:
        ```python
        from prefect_mlops.tasks.reconcile import model_lock
        with model_lock("churn"):
            pass  # evaluate, gate, register, deploy
        ```
    """
    from prefect.concurrency.sync import concurrency

    name = lock_name(model_name)
    ensure_limit(name)
    deadline = time.monotonic() + timeout
    with ExitStack() as stack:
        try:
            if _embedded_api():
                stack.enter_context(_host_lock(name, timeout))
                _clear_stale_slots(name)
            stack.enter_context(concurrency(name, occupy=1, timeout_seconds=max(1.0, deadline - time.monotonic()),
                                            lease_duration=LOCK_LEASE, strict=True))
        except TimeoutError as exc:
            raise ModelBusyError(
                f"model {model_name!r}: another run has held the lock {name!r} for over {timeout:.0f} s; "
                f"wait for it, or if no run of {model_name!r} is going, free the slot with "
                f"`prefect gcl update {name} --active-slots 0`"
            ) from exc
        yield
