"""The FastAPI front: routes, the one error -> status map, lifespan of the batcher and ranks."""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, Protocol

import numpy as np
from fastapi import Depends, FastAPI, Path, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.telemetry import TelemetryConfig
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving import codec
from serving.batching import Batcher
from serving.config import ModelSpec
from serving.errors import (
    EngineUnavailable,
    PayloadTooLarge,
    SeqServeError,
    Unauthorized,
    UnknownModel,
    http_status,
)
from serving.metrics import Metrics
from serving.schemas import error_responses, predict_openapi
from serving.settings import ServerSettings

log = logging.getLogger("seqserve")

HTTP_NAMES = {404: "NotFound", 405: "MethodNotAllowed", 400: "InvalidInput"}

Ids = dict[str, np.ndarray]
Answer = dict[str, np.ndarray]


class Engine(Protocol):
    spec: ModelSpec

    @property
    def device(self) -> str: ...

    @property
    def dispatch(self) -> str: ...

    @property
    def ready(self) -> bool: ...

    def start(self) -> None: ...

    def forward(self, requests: Sequence[Ids]) -> list[Answer]: ...

    def close(self) -> None: ...


def error_response(
    status: int, kind: str, message: str, retry_after: float | None = None
) -> Response:
    headers = {"Retry-After": str(max(1, round(retry_after)))} if retry_after is not None else None
    return Response(
        codec.encode_error(status, kind, message),
        status_code=status,
        media_type=codec.JSON,
        headers=headers,
    )


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
    app.state.metrics = metrics

    @app.exception_handler(SeqServeError)
    async def _seqserve_error(request: Request, exc: SeqServeError) -> Response:
        status = http_status(exc)
        retry = settings.batch.retry_after_s if status == 503 else None
        response = error_response(status, type(exc).__name__, str(exc), retry)
        if status == 401:
            response.headers["WWW-Authenticate"] = "Bearer"
        return response

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException) -> Response:
        name = HTTP_NAMES.get(exc.status_code, "HTTPError")
        return error_response(exc.status_code, name, f"{exc.detail}: {request.url.path}")

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
        return error_response(400, "InvalidInput", str(exc.errors()))

    bearer = HTTPBearer(auto_error=False, description="the server's --auth-token, if it has one")
    token = settings.auth_token.encode()

    async def authorized(
        credentials: HTTPAuthorizationCredentials | None = Depends(bearer),  # noqa: B008
    ) -> None:
        if not token:
            return
        given = credentials.credentials.encode() if credentials else b""
        # compare_digest: the time taken says nothing about how much of the token matched.
        if not hmac.compare_digest(given, token):
            raise Unauthorized("a valid 'Authorization: Bearer <token>' header is required")

    # Dependencies cost per request in FastAPI: attach the token check only when there is one.
    guarded = [Depends(authorized)] if token else []

    @app.post(
        "/predictions/{model}",
        dependencies=guarded,
        openapi_extra=predict_openapi(spec),
        response_class=Response,
        summary="Embeddings of the ids of one or several sequences",
    )
    async def predict(request: Request) -> Response:
        # The path parameter is read raw (declared for OpenAPI in predict_openapi): FastAPI's
        # parameter machinery costs more per request than the lookup of a small batch.
        model = request.path_params["model"]
        if model != spec.name:
            raise UnknownModel(
                f"model '{model}' is not served here; this server serves '{spec.name}'"
            )
        if not engine.ready:
            raise EngineUnavailable("the model is not ready: ranks are starting or restarting")
        body = await read_body(request, settings.limits.max_body_bytes)
        decoded = codec.decode(body, request.headers.get("content-type"), spec, settings.limits)
        deadline = time.monotonic() + settings.request_timeout_s
        answers = await until_disconnect(request, submit_all(batcher, decoded.requests, deadline))
        if answers is None:  # the client went away; nothing to answer
            return Response(status_code=499)
        content, media = codec.encode(answers, decoded.instances, request.headers.get("accept"))
        return Response(content, media_type=media)

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


def describe_model(engine: Engine) -> dict[str, Any]:
    spec = engine.spec
    plan = spec.plan()
    return {
        "name": spec.name,
        "embedding_dim": spec.embedding_dim,
        "world_size": spec.sharding.world_size,
        "device": engine.device,
        "dispatch": engine.dispatch,
        "features": spec.features,
        "tables": [
            {
                "name": t.name,
                "num_embeddings": t.num_embeddings,
                "embedding_dim": t.embedding_dim,
                "features": t.features,
                "sharding": plan[t.name].kind,
                "shards": [
                    {"rank": s.rank, "columns": [s.start, s.end]} for s in plan[t.name].shards
                ],
            }
            for t in spec.tables
        ],
    }


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it is known to be over `limit`."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise PayloadTooLarge(f"body of {length} bytes is over the limit of {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"body is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def submit_all(
    batcher: Batcher[Ids, Answer], requests: list[Ids], deadline: float
) -> list[Answer]:
    tasks = [
        asyncio.ensure_future(batcher.submit(r, sum(len(v) for v in r.values()), deadline))
        for r in requests
    ]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for t in tasks:  # one sequence failed: the others of this request need not be computed
            t.cancel()
        raise


async def until_disconnect(request: Request, work: Any) -> list[Answer] | None:
    """Await `work`, or cancel it (dropping its sequences before compute) if the client leaves."""
    task = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
    if task.done():
        return task.result()
    task.cancel()
    return None


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


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
            self.metrics.requests.labels(path, str(status)).inc()
            self.metrics.latency.labels(path).observe(time.perf_counter() - start)
