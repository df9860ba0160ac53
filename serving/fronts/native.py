"""POST /predictions/{model}, the native contract (CONTRACT section 3), as plain ASGI in front
of FastAPI's stack.

Why not a FastAPI route: under load the event loop shares the machine's cores with the
lookups, and every microsecond it spends per request is taken from them. Measured on the demo
(msgpack, 32 clients, 2 cores), the route cost the event loop 0.49 ms of CPU per request
through FastAPI's middleware, request, dependency and response layers. Here the body is read
from `receive`, sequences go straight into the batcher as futures (no task per sequence) and
the answer goes out in two `send` calls. FastAPI still serves every other path, and documents
this one in /openapi.json (`serving.fronts.app`).
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from serving.core.service import Service
from serving.errors import SeqServeError, http_status
from serving.fronts import codec
from serving.fronts.asgi import Headers, Reply, disconnected, headers_of, read_body, respond, text

ROUTE = "/predictions/{model}"  # the route's label in the metrics
PREFIX = "/predictions/"


def error_reply(status: int, kind: str, message: str, retry_after: float | None = None) -> Reply:
    """The contract's error body and headers; the one place a status gets its extra headers."""
    headers: Headers = [(b"content-type", codec.JSON.encode())]
    if status == 503 and retry_after is not None:
        headers.append((b"retry-after", str(max(1, round(retry_after))).encode()))
    if status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    return status, codec.encode_error(status, kind, message), headers


def seqserve_error_reply(error: SeqServeError, retry_after: float) -> Reply:
    """The native rendering of the error taxonomy."""
    return error_reply(http_status(error), type(error).__name__, str(error), retry_after)


def internal_error(message: str) -> Reply:
    return error_reply(500, "InternalError", message)


class Predictions:
    """ASGI middleware answering POST /predictions/{model}; everything else goes to `app`."""

    def __init__(self, app: ASGIApp, *, service: Service):
        self.app = app
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"] if scope["type"] == "http" else ""
        model = path[len(PREFIX) :] if path.startswith(PREFIX) else ""
        if not model or "/" in model:  # not this route: FastAPI answers (404 included)
            await self.app(scope, receive, send)
            return

        async def answer() -> Reply | None:
            return await self.answer(scope, receive, model)

        await respond(send, self.service.metrics, ROUTE, answer, internal_error)

    async def answer(self, scope: Scope, receive: Receive, model: str) -> Reply | None:
        """The reply to one request, or None if the client left before it was computed."""
        if scope["method"] != "POST":
            status, error, extra = error_reply(
                405, "MethodNotAllowed", f"Method Not Allowed: {scope['path']}"
            )
            return status, error, [*extra, (b"allow", b"POST")]
        headers = headers_of(scope)
        service = self.service
        try:
            service.authorize(headers.get(b"authorization"))
            service.model(model)
            service.check_ready()
            limits = service.limits
            body = await read_body(receive, headers.get(b"content-length"), limits.max_body_bytes)
            if body is None:
                return None
            decoded = codec.decode(body, text(headers.get(b"content-type")), service.spec, limits)
            predicted = await service.predict(decoded.requests, disconnected(receive))
            if predicted is None:
                return None
            content, media = codec.encode(
                predicted.answers, decoded.instances, text(headers.get(b"accept"))
            )
        except SeqServeError as e:
            return seqserve_error_reply(e, service.settings.batch.retry_after_s)
        return (
            200,
            content,
            [
                (b"content-type", media.encode()),
                (b"x-model-version", str(predicted.version).encode()),
            ],
        )
