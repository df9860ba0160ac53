"""The FastAPI front: routes, the one error -> status map, lifespan of the batcher and ranks."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
from fastapi import Depends, FastAPI, Path, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.telemetry import TelemetryConfig
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving import codec
from serving import predict as predict_route
from serving.batching import Batcher
from serving.config import ModelSpec
from serving.engine.base import Answer, Engine
from serving.errors import SeqServeError, Unauthorized, UnknownModel
from serving.metrics import Metrics
from serving.predict import Predictions, error_reply, seqserve_error_reply, token_ok
from serving.schemas import error_responses, predict_openapi
from serving.settings import ServerSettings

log = logging.getLogger("seqserve")

HTTP_NAMES = {404: "NotFound", 405: "MethodNotAllowed", 400: "InvalidInput"}

Ids = dict[str, np.ndarray]


def response(reply: predict_route.Reply) -> Response:
    status, body, headers = reply
    return Response(body, status_code=status, headers={k.decode(): v.decode() for k, v in headers})


def create_app(
    settings: ServerSettings,
    engine: Engine,
    *,
    on_ready: Callable[[], None] | None = None,
    on_fatal: Callable[[BaseException], None] | None = None,
) -> FastAPI:
    spec = engine.spec

    async def process(batch: list[Ids]) -> list[Answer]:
        return await asyncio.to_thread(engine.forward, batch)

    # The schema names the one model served, so clients and fuzzers know the valid {model}.
    model_param = Path(
        description="the served model's name", json_schema_extra={"enum": [spec.name]}
    )
    metrics = Metrics(queue_depth=lambda: batcher.queue_depth, ranks_ready=lambda: _ranks_ready())
    batcher: Batcher[Ids, Answer] = Batcher(process, settings.batch, on_batch=metrics.on_batch)

    def _ranks_ready() -> float:
        return float(spec.sharding.world_size if engine.ready else 0)

    async def start_engine() -> None:
        try:
            await asyncio.to_thread(engine.start)
        except BaseException as e:  # the ranks' traceback is in the message
            log.error("the rank group failed to start: %s", e)
            if on_fatal:
                on_fatal(e)
            return
        if on_ready:
            on_ready()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        starting = asyncio.create_task(start_engine())
        try:
            yield
        finally:
            # Uvicorn has stopped accepting and answered what was in flight; drain the queue.
            await batcher.stop(drain=True)
            await starting
            await asyncio.to_thread(engine.close)

    # Our metrics are Prometheus (/metrics); FastAPI's native OpenTelemetry hooks would look up
    # providers on every request for nothing.
    no_otel: TelemetryConfig = {"tracing": False, "metrics": False, "logs": False}
    app = FastAPI(title="seqserve", version="0.1.0", lifespan=lifespan, telemetry=no_otel)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    # Added last, so outermost: the hot route skips the layers above (serving.predict says why).
    app.add_middleware(
        Predictions,
        spec=spec,
        settings=settings,
        batcher=batcher,
        ready=lambda: engine.ready,
        metrics=metrics,
    )
    app.state.metrics = metrics

    @app.exception_handler(SeqServeError)
    async def _seqserve_error(request: Request, exc: SeqServeError) -> Response:
        return response(seqserve_error_reply(exc, settings.batch.retry_after_s))

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException) -> Response:
        name = HTTP_NAMES.get(exc.status_code, "HTTPError")
        return response(error_reply(exc.status_code, name, f"{exc.detail}: {request.url.path}"))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
        return response(error_reply(400, "InvalidInput", str(exc.errors())))

    bearer = HTTPBearer(auto_error=False, description="the server's --auth-token, if it has one")
    token = settings.auth_token.encode()

    async def authorized(
        credentials: HTTPAuthorizationCredentials | None = Depends(bearer),  # noqa: B008
    ) -> None:
        given = credentials.credentials.encode() if credentials else b""
        if not token_ok(given, token):
            raise Unauthorized("a valid 'Authorization: Bearer <token>' header is required")

    # Dependencies cost per request in FastAPI: attach the token check only when there is one.
    guarded = [Depends(authorized)] if token else []
    document_predictions(app, spec, secured=bool(token))

    @app.get("/ping", responses=error_responses(503) | {200: {"description": "healthy"}})
    async def ping() -> Response:
        healthy = engine.ready
        body = b'{"status":"Healthy"}' if healthy else b'{"status":"Unhealthy"}'
        return Response(body, status_code=200 if healthy else 503, media_type=codec.JSON)

    @app.get("/models/{model}", dependencies=guarded, responses=error_responses(401, 404))
    async def describe(model: str = model_param) -> dict[str, Any]:
        if model != spec.name:
            raise UnknownModel(
                f"model '{model}' is not served here; this server serves '{spec.name}'"
            )
        return describe_model(engine)

    @app.get("/metrics", response_class=Response)
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


def document_predictions(app: FastAPI, spec: ModelSpec, secured: bool) -> None:
    """Add POST /predictions/{model}, answered by `Predictions` outside FastAPI's routing, to
    the OpenAPI document FastAPI builds for its own routes."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = build()  # FastAPI's document of its own routes, kept in app.openapi_schema
            operation: dict[str, Any] = {
                "summary": "Embeddings of the ids of one or several sequences",
                "operationId": "predict_predictions__model__post",
                **predict_openapi(spec),
            }
            if secured:
                operation["security"] = [{"HTTPBearer": []}]
            doc["paths"] = {predict_route.ROUTE: {"post": operation}, **doc.get("paths", {})}
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def describe_model(engine: Engine) -> dict[str, Any]:
    """The spec as served, the engine, and for every table where each shard lives."""
    spec = engine.spec
    plan = spec.plan()
    served = engine.describe()
    devices = served.pop("rank_devices")
    return {
        "name": spec.name,
        "world_size": spec.sharding.world_size,
        **served,
        "features": spec.features,
        "tables": [
            {
                "name": t.name,
                "num_embeddings": t.num_embeddings,
                "embedding_dim": t.embedding_dim,
                "features": t.features,
                "sharding": plan[t.name].kind,
                "shards": [
                    {"rank": s.rank, "columns": [s.start, s.end], "device": devices[s.rank]}
                    for s in plan[t.name].shards
                ],
            }
            for t in spec.tables
        ],
    }


class MetricsMiddleware:
    """Counts and times every HTTP request by route template and status (pure ASGI: cheap)."""

    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", "other")
            self.metrics.observe(path, status, time.perf_counter() - start)
