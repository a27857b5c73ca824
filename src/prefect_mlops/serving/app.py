"""The scoring service: FastAPI routes over a `ModelHolder`, a `MicroBatcher` and a `PredictionLog`.

Routing: a request's `key` (its `request_id` when none) is hashed (BLAKE2b, stable across
processes and restarts) to a point in [0, 1); points under the canary share go to `@canary`.
A canary that raises is answered by the champion and counted as a canary error, so a bad canary
costs its users nothing and the progressive rollout sees it. `@shadow` scores the same rows in
its own thread after the answer is sent.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import queue
import threading
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import numpy as np
import orjson
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from prefect_mlops.blocks.data_source import DataSource
from prefect_mlops.blocks.mlflow_server import MlflowServer
from prefect_mlops.errors import ConfigError, shorten
from prefect_mlops.serving.batcher import MicroBatcher
from prefect_mlops.serving.holder import Loaded, ModelHolder, Serving
from prefect_mlops.serving.metrics import ServiceMetrics
from prefect_mlops.serving.predlog import LOG_COLUMNS, PredictionLog
from prefect_mlops.serving.schema import RequestError
from prefect_mlops.tasks.reconcile import CANARY, CHAMPION, SHADOW
from prefect_mlops.workspace import Workspace

logger = logging.getLogger("prefect_mlops.serving")
_JSON = "application/json"


class ServeSettings(BaseModel):
    """How `prefect-mlops serve` runs."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    model_name: str = Field(description="Registered model to serve (its @champion, @canary and @shadow).")
    mlflow_server: MlflowServer = Field(default_factory=MlflowServer, description="Registry to follow.")
    workspace: str | None = Field(default=None, description="Workspace (embedded MLflow store, default log).")
    poll_seconds: float = Field(default=2.0, gt=0, description="How often the registry's aliases are read.")
    token: SecretStr | None = Field(default=None, description="Bearer token every request must carry; none: open.")
    protect_metrics: bool = Field(default=False, description="/metrics asks for the token too.")
    protect_health: bool = Field(default=False, description="/health and /ready ask for the token too.")
    log_uri: str | None = Field(default=None, description="Prediction log folder or s3:// prefix; empty: "
                                "<workspace>/predictions/<model>; 'off' writes none.")
    log_output: DataSource | None = Field(default=None, description="S3 credentials for an s3:// log_uri.")
    flush_seconds: float = Field(default=5.0, gt=0, description="Prediction log: longest wait before a write.")
    max_batch_rows: int = Field(default=1024, ge=1, description="Most rows one micro-batched predict call takes.")


def canary_point(key: str) -> float:
    """Where a key falls in [0, 1): stable across processes, so one key always meets one model.

    Example:
        ```python
        from prefect_mlops.serving.app import canary_point
        assert canary_point("customer-7") == canary_point("customer-7") and 0 <= canary_point("x") < 1
        ```
    """
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big") / 2**64


@dataclass
class Job:
    """One request on its way through the micro-batcher."""

    request_id: str
    key: str
    columns: dict[str, list[Any]]
    rows: int
    alias: str
    state: Serving
    started: float
    answered_by: Loaded | None = None
    predictions: Any = None
    predictions_error: Exception | None = None
    fallback: bool = False


class ScoringService:
    """The parts behind the routes; `create_app` wires them into FastAPI."""

    def __init__(self, settings: ServeSettings) -> None:
        self.settings = settings
        self.metrics = ServiceMetrics()
        self.workspace = Workspace(settings.workspace)
        self.holder = ModelHolder(settings.model_name, mlflow_server=settings.mlflow_server,
                                  workspace=self.workspace, poll_seconds=settings.poll_seconds,
                                  on_change=self._on_change)
        self.batcher = MicroBatcher(self._process, rows=lambda job: job.rows, after=self._after,
                                    max_rows=settings.max_batch_rows)
        self.log: PredictionLog | None = None
        if (settings.log_uri or "").lower() != "off":
            root = settings.log_uri or str(self.workspace.folder("predictions", settings.model_name))
            self.log = PredictionLog(root, model_name=settings.model_name, output=settings.log_output,
                                     flush_seconds=settings.flush_seconds, on_drop=self.metrics.log_dropped.inc)
        self._shadow_queue: queue.Queue[tuple[Loaded, list[Job], Any] | None] = queue.Queue(maxsize=256)
        self._shadow_thread = threading.Thread(target=self._shadow_run, name="shadow-scorer", daemon=True)

    # -- lifecycle
    def start(self) -> None:
        """Load the models and start the threads and the batcher; call it on the running event loop."""
        state = self.holder.refresh()
        self._on_change(state)
        self._check_log_columns(state)
        self.holder.start()
        self.batcher.start()
        self._shadow_thread.start()

    async def stop(self) -> None:
        self.holder.stop()
        await self.batcher.stop()
        self._shadow_queue.put(None)
        self._shadow_thread.join(timeout=30)
        if self.log is not None:
            self.log.close()

    def _check_log_columns(self, state: Serving) -> None:
        schema = state.champion.schema if state.champion else None
        clash = sorted(set(schema.names) & set(LOG_COLUMNS)) if schema else []
        if clash and self.log is not None:
            raise ConfigError(f"model {self.settings.model_name!r}: inputs {clash} have the names of prediction-log "
                              "columns; serve with --log-uri off or rename the inputs")

    def _on_change(self, state: Serving) -> None:
        for alias in (CHAMPION, CANARY, SHADOW):
            self.metrics.version.labels(alias).set(float(state.version(alias) or 0))
            self.metrics.load_failures.labels(alias).set(1.0 if alias in state.problems else 0.0)
        self.metrics.canary_share.set(state.canary_share)

    # -- the request path
    def route(self, state: Serving, key: str) -> str:
        if state.canary is not None and state.canary_share > 0 and canary_point(key) < state.canary_share:
            return CANARY
        return CHAMPION

    def _process(self, jobs: list[Job]) -> list[Any]:
        """Score a micro-batch: one predict call per model in it."""
        groups: dict[int, list[Job]] = {}
        for job in jobs:
            loaded = getattr(job.state, job.alias)
            job.answered_by = loaded
            groups.setdefault(id(loaded), []).append(job)
        for group in groups.values():
            self._score(group[0].answered_by, group)
        return [job if job.predictions is not None else job.predictions_error or RuntimeError("not scored")
                for job in jobs]

    def _score(self, loaded: Loaded, jobs: list[Job]) -> None:
        alias = jobs[0].alias
        try:
            predictions = self._predict(loaded, jobs, alias)
        except Exception as exc:
            if alias == CANARY and jobs[0].state.champion is not None:
                self.metrics.model_errors.labels(alias).inc(len(jobs))  # per request: the rollout's error rate
                logger.warning("canary v%s failed to predict (%s); the champion answers", loaded.version, exc)
                for job in jobs:
                    job.alias, job.fallback = CHAMPION, True
                self._score(jobs[0].state.champion, jobs)
                return
            if len(jobs) > 1:  # find the request the model cannot take; the others still get answers
                for job in jobs:
                    self._score(loaded, [job])
                return
            self.metrics.model_errors.labels(alias).inc()
            jobs[0].predictions_error = RequestError([{"field": None, "problem": (
                f"model v{loaded.version} could not score this input: {shorten(str(exc), 500)}")}])
            return
        start = 0
        for job in jobs:
            job.answered_by = loaded
            job.predictions = predictions[start:start + job.rows]
            start += job.rows

    def _predict(self, loaded: Loaded, jobs: list[Job], alias: str) -> np.ndarray:
        schema = loaded.schema or jobs[0].state.champion.schema
        if len(jobs) == 1:
            columns = jobs[0].columns
        else:
            columns = {name: [v for job in jobs for v in job.columns[name]] for name in schema.names}
        frame = schema.frame(columns)
        started = time.perf_counter()
        predictions = np.asarray(loaded.model.predict(frame)).reshape(len(frame), -1)[:, 0]
        self.metrics.predict_seconds.labels(alias).observe(time.perf_counter() - started)
        self.metrics.batch_rows.observe(len(frame))
        return predictions

    def _after(self, jobs: list[Job], results: list[Any]) -> None:
        """Metrics, the log and the shadow, once the answers are on their way."""
        done = [job for job in jobs if job.predictions is not None]
        if self.log is not None and done:
            self.log.append(self._log_chunk(done, "served"))
        shadow = jobs[0].state.shadow
        if shadow is not None and done:
            try:
                self._shadow_queue.put_nowait((shadow, done, None))
            except queue.Full:
                self.metrics.shadow_skipped.inc(sum(job.rows for job in done))

    def _log_chunk(self, jobs: list[Job], role: str, predictions: Any = None, loaded: Loaded | None = None,
                   alias: str | None = None, seconds: float | None = None) -> dict[str, list[Any]]:
        stamp = datetime.now(timezone.utc)
        chunk: dict[str, list[Any]] = {name: [] for name in LOG_COLUMNS}
        for job in jobs:
            n = job.rows
            by = loaded or job.answered_by
            latency = (seconds if seconds is not None else time.perf_counter() - job.started) * 1000
            chunk["request_id"] += [job.request_id] * n
            chunk["key"] += [job.key] * n
            chunk["served_at"] += [stamp] * n
            chunk["model_name"] += [self.settings.model_name] * n
            chunk["model_version"] += [by.version] * n
            chunk["alias"] += [alias or job.alias] * n
            chunk["role"] += [role] * n
            chunk["latency_ms"] += [latency] * n
        chunk["prediction"] = list(np.concatenate([np.asarray(job.predictions) for job in jobs])
                                   if predictions is None else predictions)
        for name in jobs[0].columns:
            chunk[name] = [v for job in jobs for v in job.columns[name]]
        return chunk

    def _shadow_run(self) -> None:
        while True:
            item = self._shadow_queue.get()
            if item is None:
                return
            shadow, jobs, _ = item
            started = time.perf_counter()
            try:
                predicted = self._predict(shadow, jobs, SHADOW)
            except Exception as exc:
                self.metrics.model_errors.labels(SHADOW).inc()
                logger.warning("shadow v%s failed to predict: %s", shadow.version, exc)
                continue
            seconds = time.perf_counter() - started
            served = np.concatenate([np.asarray(job.predictions) for job in jobs])
            if np.issubdtype(served.dtype, np.floating) and np.issubdtype(predicted.dtype, np.floating):
                agree = int(np.sum(np.isclose(predicted, served, rtol=0.01)))
            else:
                agree = int(np.sum(predicted.astype(str) == served.astype(str)))
            self.metrics.shadow_rows.inc(len(served))
            self.metrics.shadow_agree.inc(agree)
            self.metrics.latency.labels(SHADOW).observe(seconds)
            if self.log is not None:
                self.log.append(self._log_chunk(jobs, "shadow", predicted, shadow, SHADOW, seconds))

    # -- auth
    def authorised(self, request: Request) -> bool:
        token = self.settings.token
        if token is None:
            return True
        given = request.headers.get("authorization", "")
        scheme, _, value = given.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(value.encode(), token.get_secret_value().encode())


def _json(content: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY), status_code=status, media_type=_JSON)


def _unauthorised() -> Response:
    return JSONResponse({"detail": "missing or wrong bearer token: send 'Authorization: Bearer <token>'"},
                        status_code=401, headers={"WWW-Authenticate": "Bearer"})


def create_app(settings: ServeSettings) -> FastAPI:
    """The FastAPI app serving `settings.model_name`; the model loads when the app starts."""
    service = ScoringService(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service.start()
        try:
            yield
        finally:
            await service.stop()

    app = FastAPI(title=f"prefect-mlops: {settings.model_name}", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.service = service
    metrics = service.metrics

    @app.post("/predict")
    async def predict(request: Request) -> Response:
        started = time.perf_counter()
        if not service.authorised(request):
            return _unauthorised()
        state = service.holder.state
        if state.champion is None:
            problem = state.problems.get(CHAMPION) or f"model {settings.model_name!r} has no @champion yet"
            return _json({"detail": f"not ready: {problem}"}, 503)
        with service.batcher.arrival():
            parsed = await _read(request, state)
        if isinstance(parsed, Response):
            return parsed
        body, columns, rows = parsed
        request_id = str(body.get("request_id") or uuid.uuid4().hex)
        key = str(body.get("key") or request_id)
        alias = service.route(state, key)
        job = Job(request_id=request_id, key=key, columns=columns, rows=rows, alias=alias, state=state,
                  started=started)
        try:
            result = await service.batcher.submit(job)
        except RequestError as exc:
            metrics.requests.labels(alias, "invalid").inc()
            return _json({"detail": exc.problems, "message": str(exc)}, 422)
        except Exception as exc:
            metrics.requests.labels(alias, "error").inc()
            logger.exception("request %s failed", request_id)
            return _json({"detail": f"scoring failed: {shorten(str(exc), 500)}"}, 500)
        outcome = "fallback" if result.fallback else "ok"
        metrics.requests.labels(alias if not result.fallback else CANARY, outcome).inc()
        metrics.rows.labels(result.alias).inc(rows)
        metrics.latency.labels(result.alias).observe(time.perf_counter() - started)
        return _json({"request_id": request_id, "model_name": settings.model_name,
                      "model_version": result.answered_by.version, "alias": result.alias,
                      "predictions": result.predictions})

    async def _read(request: Request, state: Serving) -> Response | tuple[dict[str, Any], dict[str, list[Any]], int]:
        try:
            try:
                body = orjson.loads(await request.body())
            except orjson.JSONDecodeError as exc:
                raise RequestError([{"field": None, "problem": f"the body is not valid JSON ({exc})"}]) from exc
            if state.champion.schema is None:
                raise RequestError([{"field": None, "problem": "the model has no input signature to check against"}])
            columns, rows = state.champion.schema.parse(body)
        except RequestError as exc:
            metrics.requests.labels(CHAMPION, "invalid").inc()
            return _json({"detail": exc.problems, "message": str(exc)}, 422)
        return body, columns, rows

    @app.get("/health")
    async def health(request: Request) -> Response:
        if settings.protect_health and not service.authorised(request):
            return _unauthorised()
        state = service.holder.state
        return _json({"status": "alive", "ready": state.champion is not None, "model_name": settings.model_name,
                      "versions": {a: state.version(a) for a in (CHAMPION, CANARY, SHADOW) if state.version(a)},
                      "canary_share": state.canary_share, "problems": state.problems,
                      "registry_error": service.holder.poll_error, "last_poll": service.holder.last_poll})

    @app.get("/ready")
    async def ready(request: Request) -> Response:
        if settings.protect_health and not service.authorised(request):
            return _unauthorised()
        state = service.holder.state
        if state.champion is None:
            return _json({"ready": False, "problems": state.problems}, 503)
        return _json({"ready": True, "version": state.champion.version})

    @app.get("/metrics")
    async def prometheus(request: Request) -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        if settings.protect_metrics and not service.authorised(request):
            return _unauthorised()
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app
