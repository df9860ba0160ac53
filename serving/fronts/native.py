"""POST /predictions/{model}, the native API (docs/http.md), as plain ASGI ahead of FastAPI.

The body is read from `receive`, checked by `serving.fronts.codec` (ids range-checked once),
queued as one batcher item and answered in two `send` calls; whether the client left is read
by the batcher from the connection, so a request costs no task or future of its own beyond
the one it awaits.
"""

from __future__ import annotations

from starlette.types import Receive, Scope, Send

from serving.core.host import Host
from serving.errors import SeqServeError, http_status
from serving.fronts import codec
from serving.fronts.asgi import Reply, error_headers, gone_of, headers_of, read_body, respond, text

ROUTE = "/predictions/{model}"  # the route's label in the metrics
PREFIX = "/predictions/"
JSON_MEDIA = codec.JSON.encode()


def error_reply(status: int, kind: str, message: str, retry_after: float = 1.0) -> Reply:
    """The native error body: {"code", "type", "message"}."""
    body = codec.encode_error(status, kind, message)
    return status, body, error_headers(status, JSON_MEDIA, retry_after)


def seqserve_error_reply(error: SeqServeError, retry_after: float) -> Reply:
    """The native rendering of the error taxonomy."""
    return error_reply(http_status(error), type(error).__name__, str(error), retry_after)


def internal_error(message: str) -> Reply:
    return error_reply(500, "InternalError", message)


def model_of(path: str) -> str:
    """The {model} of a /predictions/{model} path, or "" for any other path."""
    model = path[len(PREFIX) :] if path.startswith(PREFIX) else ""
    return "" if "/" in model else model


class Predictions:
    """Answers POST /predictions/{model}; `serving.fronts.app.Front` routes here."""

    def __init__(self, service: Host):
        self.service = service
        self.retry_after = service.settings.batch.retry_after_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send, model: str) -> None:
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
            service.admit(headers.get(b"authorization"), model)
            limits = service.limits
            body = await read_body(receive, headers.get(b"content-length"), limits.max_body_bytes)
            if body is None:
                return None
            decoded = codec.decode(body, text(headers.get(b"content-type")), service.rows, limits)
            predicted = await service.predict(decoded.sequences, gone_of(scope))
            if predicted is None:
                return None
            content, media = codec.encode(
                predicted.answers, decoded.instances, text(headers.get(b"accept"))
            )
        except SeqServeError as e:
            return seqserve_error_reply(e, self.retry_after)
        return (
            200,
            content,
            [(b"content-type", media.encode()), (b"x-model-version", b"%d" % predicted.version)],
        )
