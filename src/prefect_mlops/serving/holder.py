"""The models being served: `@champion`, and `@canary`/`@shadow` on trial, followed in the registry.

A background thread polls the registered model every `poll_seconds`. A moved alias loads the
new version through `MlflowServer.load_model` (the one loader, so every integrity check there
covers serving too) while the old one keeps serving; the swap is one reference assignment, so a
request sees either the old `Serving` or the new one, never a mix. A version that fails to load
is not swapped in: the old one keeps serving and `/health` says why. A version that can never load
(its files fail the checksum, or it may not take trial traffic) is not tried again; any other
failure (network, a 401 blip, a full disk) is retried on later polls, waiting longer each time.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from prefect_mlops.blocks.mlflow_server import MlflowServer
from prefect_mlops.errors import GateNotPassedError, IntegrityError, shorten
from prefect_mlops.integrity import DIGEST_TAG
from prefect_mlops.serving.schema import InputSchema
from prefect_mlops.tasks.reconcile import CANARY, CHAMPION, SHADOW
from prefect_mlops.tasks.rollout import SHARE_TAG, on_trial_allowed, parse_share
from prefect_mlops.workspace import Workspace

logger = logging.getLogger("prefect_mlops.serving")
ALIASES = (CHAMPION, CANARY, SHADOW)
MAX_RETRY_SECONDS = 60.0  # the longest wait between two tries of a version whose load failed for a passing reason


@dataclass(frozen=True)
class Loaded:
    """One loaded model version."""

    version: str
    model: Any
    schema: InputSchema | None
    source: str
    loaded_at: str
    load_seconds: float


@dataclass(frozen=True)
class Serving:
    """What serves right now: swapped as a whole, never edited."""

    champion: Loaded | None = None
    canary: Loaded | None = None
    shadow: Loaded | None = None
    canary_share: float = 0.0
    problems: dict[str, str] = field(default_factory=dict)  # alias -> why it is not serving what the registry says

    def version(self, alias: str) -> str | None:
        loaded = getattr(self, alias.replace("-", "_"), None)
        return loaded.version if loaded else None


class ModelHolder:
    """Follows one registered model's aliases; `state` is what to serve.

    `refresh()` does one poll (the tests and the first load call it directly); `start()` polls
    in a daemon thread until `stop()`.
    """

    def __init__(self, model_name: str, *, mlflow_server: MlflowServer | None = None,
                 workspace: Workspace | None = None, poll_seconds: float = 2.0,
                 on_change: Any = None) -> None:
        self.model_name = model_name
        self.server = mlflow_server or MlflowServer()
        self.workspace = workspace or Workspace()
        self.poll_seconds = poll_seconds
        self.state = Serving()
        self.last_poll: str | None = None
        self.poll_error: str | None = None
        self._on_change = on_change
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._client = None
        self._failed: dict[str, str] = {}  # version -> why it can never load (checksum, gate): never retried
        self._retry: dict[str, tuple[int, float, str]] = {}  # version -> (failures, next try, why): transient

    def refresh(self) -> Serving:
        """Read the aliases once; load what moved; swap in the new state. Never raises."""
        try:
            if self._client is None:
                self._client = self.server.client(self.workspace)
            registered = self._client.get_registered_model(self.model_name)
        except Exception as exc:  # registry down: keep serving what is loaded
            self.poll_error = (f"reading model {self.model_name!r} from {self.server.uri(self.workspace)} failed: "
                               f"{shorten(str(exc), 500)}; still serving what was loaded")
            logger.warning(self.poll_error)
            return self.state
        self.poll_error = None
        self.last_poll = _now()
        aliases = {a: str(v) for a, v in (registered.aliases or {}).items()}
        old = self.state
        loaded: dict[str, Loaded | None] = {}
        problems: dict[str, str] = {}
        for alias in ALIASES:
            wanted = aliases.get(alias)
            current = getattr(old, alias)
            if wanted is None:
                loaded[alias] = None
            elif current is not None and current.version == wanted:
                loaded[alias] = current
            else:
                loaded[alias], problem = self._load(alias, wanted, old, loaded)
                if problem:
                    problems[alias] = problem
                    loaded[alias] = current if alias == CHAMPION else None
        if loaded[CANARY] is not None and loaded[CHAMPION] is not None \
                and loaded[CANARY].version == loaded[CHAMPION].version:
            loaded[CANARY] = None  # promoted: the canary alias is about to go
        share = parse_share((registered.tags or {}).get(SHARE_TAG)) if loaded[CANARY] else 0.0
        new = Serving(champion=loaded[CHAMPION], canary=loaded[CANARY], shadow=loaded[SHADOW],
                      canary_share=share, problems=problems)
        changed = [a for a in ALIASES if new.version(a) != old.version(a)]
        self.state = new  # the swap: one assignment
        if changed or share != old.canary_share or problems != old.problems:
            logger.info("model %s now serving %s (canary share %.0f%%)", self.model_name,
                        {a: new.version(a) for a in ALIASES if new.version(a)}, share * 100)
            if self._on_change is not None:
                self._on_change(new)
        return new

    def _load(self, alias: str, version: str, old: Serving, done: dict[str, Loaded | None]) -> tuple[Loaded | None,
                                                                                                      str | None]:
        for other in [*done.values(), old.champion, old.canary, old.shadow]:
            if other is not None and other.version == version:
                return other, None  # the same version under another alias: no second load
        what = f"model {self.model_name!r} v{version} (@{alias})"
        if version in self._failed:
            return None, self._failed[version]
        failures, next_try, why = self._retry.get(version, (0, 0.0, ""))
        if time.monotonic() < next_try:
            return None, why
        try:
            details = self._client.get_model_version(self.model_name, version)
            if alias != CHAMPION:
                refused = on_trial_allowed(details.tags or {})
                if refused:
                    raise GateNotPassedError(refused)
            started = time.perf_counter()
            model = self.server.load_model(details.source, self.workspace, flavor="sklearn", what=what,
                                           sha256=(details.tags or {}).get(DIGEST_TAG))
            seconds = time.perf_counter() - started
            schema = InputSchema.from_signature(_signature(self.server, self.workspace, details.source))
        except Exception as exc:
            keeping = getattr(old, alias)
            problem = (f"{what} failed to load: {shorten(str(exc), 1000)}; "
                       + (f"still serving v{keeping.version}" if keeping and alias == CHAMPION
                          else "it gets no traffic"))
            if isinstance(exc, IntegrityError | GateNotPassedError):
                self._failed[version] = problem  # the same files or tags give the same answer next time
            else:  # may pass (network, credentials, disk): try again, backing off up to MAX_RETRY_SECONDS
                wait = min(MAX_RETRY_SECONDS, self.poll_seconds * 2 ** failures)
                problem += f"; trying again in {wait:.0f} s"
                self._retry[version] = (failures + 1, time.monotonic() + wait, problem)
            logger.error(problem)
            return None, problem
        self._retry.pop(version, None)
        logger.info("%s loaded in %.2f s", what, seconds)
        return Loaded(version=version, model=model, schema=schema, source=details.source, loaded_at=_now(),
                      load_seconds=seconds), None

    def start(self) -> None:
        """Poll in a daemon thread until `stop()`."""
        self._thread = threading.Thread(target=self._run, name=f"model-holder-{self.model_name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            self.refresh()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)


def _signature(server: MlflowServer, workspace: Workspace, source: str) -> Any:
    """The model's signature from its MLmodel file (a few hundred bytes; the model is already verified)."""
    import os

    import mlflow.artifacts
    from mlflow.models import Model

    local = source.removeprefix("file://") if source.startswith(("file://", "/")) else None
    if local is None:
        path = mlflow.artifacts.download_artifacts(artifact_uri=f"{source.rstrip('/')}/MLmodel",
                                                   tracking_uri=server.uri(workspace))
    else:
        path = os.path.join(local, "MLmodel")
    return Model.load(path).signature


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
