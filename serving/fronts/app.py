"""The HTTP server of one service: `Front`, the ASGI app uvicorn runs, answers the hot routes
(POST /predictions/{model} and everything under /v2) itself and hands every other path to a
FastAPI app (/ping, /models, /metrics, /docs, weight updates), which also owns the lifespan of
the service and the gRPC server.

Why the hot routes are not FastAPI routes: the event loop shares the machine's cores with the
lookups, and every microsecond it spends per request is taken from them. FastAPI's stack
(Starlette's error and exception middlewares, FastAPI's body-limit and telemetry layers, the
router, request and response objects) cost the loop ~0.5 ms of CPU per request on the demo;
here a request costs one function call before its own work. FastAPI still documents them in
/openapi.json.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from importlib import metadata
from typing import Any

from fastapi import Depends, FastAPI, Path, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from fastapi.telemetry import TelemetryConfig
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.config import ModelSpec
from serving.core.host import Host
from serving.core.metrics import Metrics, exposition
from serving.errors import PayloadTooLarge, SeqServeError
from serving.fronts import codec, native, v2_grpc
from serving.fronts.asgi import Reply
from serving.fronts.native import Predictions, error_reply, model_of, seqserve_error_reply
from serving.fronts.schemas import error_responses, predict_openapi, weights_openapi
from serving.fronts.shm import SharedMemory
from serving.fronts.v2_openapi import v2_paths
from serving.fronts.v2_rest import V2Rest, is_v2

log = logging.getLogger("seqserve")

HTTP_NAMES = {404: "NotFound", 405: "MethodNotAllowed", 400: "InvalidInput"}
VERSION = metadata.version("seqserve")  # pyproject.toml's, as installed


def response(reply: Reply) -> Response:
    status, body, headers = reply
    return Response(body, status_code=status, headers={k.decode(): v.decode() for k, v in headers})


class Front:
    """The ASGI app: the hot routes here, every other path (and the lifespan) to FastAPI."""

    def __init__(self, app: FastAPI, service: Host, shm: SharedMemory | None = None):
        self.app = app
        self.service = service
        self.predictions = Predictions(service)
        self.v2 = V2Rest(service, VERSION, shm)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path: str = scope["path"]
            model = model_of(path)
            if model:
                return await self.predictions(scope, receive, send, model)
            if is_v2(path):
                return await self.v2(scope, receive, send)
        await self.app(scope, receive, send)


def create_app(
    service: Host,
    *,
    on_ready: Callable[[], None] | None = None,
    on_fatal: Callable[[BaseException], None] | None = None,
) -> Front:
    """The HTTP server of one host: native routes, the Open Inference Protocol over REST
    here and over gRPC on --grpc-port (started and stopped with the app)."""
    settings = service.settings
    spec = service.spec
    shm = SharedMemory(settings.allow_shared_memory)  # Triton's regions, for REST and gRPC

    # The schema names the one model served, so clients and fuzzers know the valid {model}.
    model_param = Path(
        description="the served model's name", json_schema_extra={"enum": [spec.name]}
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if service.listen_after_start:
            await service.start(on_ready, on_fatal)
        try:
            grpc_server = await v2_grpc.start(
                service, settings.host, settings.grpc_port, VERSION, shm
            )
        except OSError as e:  # the port is taken: say so in one line and stop, nothing started
            if on_fatal is None:
                raise
            on_fatal(e)
            yield
            return
        starting = asyncio.create_task(
            asyncio.sleep(0) if service.listen_after_start else service.start(on_ready, on_fatal)
        )
        try:
            yield
        finally:
            # Uvicorn has stopped accepting and answered what was in flight; gRPC does the
            # same within the request timeout, then the queue is drained.
            await grpc_server.stop(settings.request_timeout_s)
            if not starting.done():
                await service.abandon_start()
            await starting
            await service.stop()
            shm.close()

    # Our metrics are Prometheus (/metrics); FastAPI's native OpenTelemetry hooks would look up
    # providers on every request for nothing.
    no_otel: TelemetryConfig = {"tracing": False, "metrics": False, "logs": False}
    # /docs from Swagger UI's own files (swagger-ui-bundle), not FastAPI's default CDN: the page
    # works where the server runs, offline included. ReDoc has no such package: not served.
    app = FastAPI(
        title="seqserve",
        version=VERSION,
        lifespan=lifespan,
        telemetry=no_otel,
        docs_url=None,
        redoc_url=None,
    )
    serve_docs(app)
    app.add_middleware(MetricsMiddleware, metrics=service.metrics)

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

    async def authorized(
        credentials: HTTPAuthorizationCredentials | None = Depends(bearer),  # noqa: B008
    ) -> None:
        service.authorize(f"Bearer {credentials.credentials}" if credentials else None)

    # Dependencies cost per request in FastAPI: attach the token check only when there is one.
    guarded = [Depends(authorized)] if settings.auth_token else []
    document_fronts(app, spec, lambda: service.version, secured=bool(settings.auth_token))

    @app.get("/ping", responses=error_responses(503) | {200: {"description": "healthy"}})
    async def ping() -> Response:
        healthy = service.ready
        body = b'{"status":"Healthy"}' if healthy else b'{"status":"Unhealthy"}'
        return Response(body, status_code=200 if healthy else 503, media_type=codec.JSON)

    @app.get("/models/{model}", dependencies=guarded, responses=error_responses(401, 404))
    async def describe(model: str = model_param) -> dict[str, Any]:
        service.check_model(model)
        return await service.describe()

    @app.post(
        "/models/{model}/weights",
        dependencies=guarded,
        responses=error_responses(400, 401, 403, 404, 413, 415, 503),
        openapi_extra=weights_openapi(),
    )
    async def change_weights(request: Request, model: str = model_param) -> dict[str, int]:
        """A row delta (safetensors) or a full reload ({"safetensors"|"dcp": PATH}); the reply
        comes once every rank serves the new version."""
        service.check_model(model)
        # Refused (403, 415) before a large body is read.
        kind = service.change_kind(request.headers.get("content-type", ""))
        body = await body_within(request, settings.max_update_bytes)
        changed = await service.change(body, kind)
        return {"version": changed.version, "rows": changed.rows}

    @app.get("/metrics", response_class=Response)
    async def prometheus() -> Response:
        totals = await service.totals()
        return Response(exposition(totals.snapshot, totals.gauges), media_type=CONTENT_TYPE_LATEST)

    return Front(app, service, shm)


DOCS_ASSETS = "/docs-assets"


def serve_docs(app: FastAPI) -> None:
    """GET /docs: Swagger UI over /openapi.json, its scripts and styles served from here."""
    from swagger_ui_bundle import swagger_ui_path

    app.mount(DOCS_ASSETS, StaticFiles(directory=swagger_ui_path), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="seqserve - Swagger UI",
            swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{DOCS_ASSETS}/favicon-32x32.png",
            oauth2_redirect_url="/docs/oauth2-redirect",
        )

    @app.get("/docs/oauth2-redirect", include_in_schema=False)
    async def oauth2_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()


async def body_within(request: Request, limit: int) -> bytes:
    """The whole body, or PayloadTooLarge as soon as it is known to be over `limit`."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"body of {declared} bytes is over the limit of {limit}")
    parts, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"body is over the limit of {limit} bytes")
        parts.append(chunk)
    return b"".join(parts)


def document_fronts(
    app: FastAPI, spec: ModelSpec, version: Callable[[], int], secured: bool
) -> None:
    """Add POST /predictions/{model} and the v2 REST routes, answered outside FastAPI's
    routing, to the OpenAPI document FastAPI builds for its own routes. The v2 paths name the
    version served when the document is asked for: weight updates move it."""
    build = app.openapi
    operation: dict[str, Any] = {
        "summary": "Embeddings of the ids of one or several sequences",
        "operationId": "predict_predictions__model__post",
        **predict_openapi(spec),
    }
    if secured:
        operation["security"] = [{"HTTPBearer": []}]

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = build()  # FastAPI's document of its own routes, built once
        own = {k: v for k, v in app.openapi_schema["paths"].items() if not k.startswith("/v2/")}
        paths = {native.ROUTE: {"post": operation}, **own, **v2_paths(spec, version(), secured)}
        app.openapi_schema["paths"] = paths
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


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
