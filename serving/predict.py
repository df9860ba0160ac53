"""POST /predictions/{model}: the hot route, as plain ASGI in front of FastAPI's stack.

Why not a FastAPI route: under load the driver's event loop shares the machine's cores with
the rank processes, and every microsecond it spends per request is taken from the lookups.
Measured on the demo (msgpack, 32 clients, 2 cores), the route cost the event loop 0.49 ms of
CPU per request through FastAPI's middleware, request, dependency and response layers. Here
the body is read from `receive`, sequences go straight into the batcher as futures (no task
per sequence) and the answer goes out in two `send` calls. FastAPI still serves every other
path, and documents this one in /openapi.json (`serving.app`).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from starlette.types import ASGIApp, Receive, Scope, Send

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
from serving.settings import ServerSettings

log = logging.getLogger("seqserve")

ROUTE = "/predictions/{model}"  # the route's label in the metrics
PREFIX = "/predictions/"
CLIENT_GONE = 499  # counted, never sent: nobody is there to read it

Ids = dict[str, np.ndarray]
Answer = dict[str, np.ndarray]
Headers = list[tuple[bytes, bytes]]
Reply = tuple[int, bytes, Headers]


def error_reply(status: int, kind: str, message: str, retry_after: float | None = None) -> Reply:
    """The contract's error body and headers; the one place a status gets its extra headers."""
    headers: Headers = [(b"content-type", codec.JSON.encode())]
    if status == 503 and retry_after is not None:
        headers.append((b"retry-after", str(max(1, round(retry_after))).encode()))
    if status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    return status, codec.encode_error(status, kind, message), headers


def seqserve_error_reply(error: SeqServeError, retry_after: float) -> Reply:
    return error_reply(http_status(error), type(error).__name__, str(error), retry_after)


def token_ok(given: bytes, token: bytes) -> bool:
    # compare_digest: the time taken says nothing about how much of the token matched.
    return hmac.compare_digest(given, token)


def bearer_ok(authorization: bytes | None, token: bytes) -> bool:
    """An `Authorization: Bearer <token>` header carrying `token`."""
    scheme, _, given = (authorization or b"").partition(b" ")
    return scheme.lower() == b"bearer" and token_ok(given.strip(), token)


class Predictions:
    """ASGI middleware answering POST /predictions/{model}; everything else goes to `app`."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        spec: ModelSpec,
        settings: ServerSettings,
        batcher: Batcher[Ids, Answer],
        ready: Callable[[], bool],
        metrics: Metrics,
    ):
        self.app = app
        self.spec = spec
        self.settings = settings
        self.batcher = batcher
        self.ready = ready
        self.metrics = metrics
        self.token = settings.auth_token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"] if scope["type"] == "http" else ""
        model = path[len(PREFIX) :] if path.startswith(PREFIX) else ""
        if not model or "/" in model:  # not this route: FastAPI answers (404 included)
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        try:
            reply = await self.answer(scope, receive, model)
        except Exception as e:  # a bug of ours: the contract's shape, and the traceback in the log
            log.exception("POST %s failed", path)
            reply = error_reply(500, "InternalError", f"{type(e).__name__} while answering")
        if reply is None:
            status = CLIENT_GONE
        else:
            status, body, headers = reply
            headers.append((b"content-length", str(len(body)).encode()))
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body})
        self.metrics.observe(ROUTE, status, time.perf_counter() - start)

    async def answer(self, scope: Scope, receive: Receive, model: str) -> Reply | None:
        """The reply to one request, or None if the client left before it was computed."""
        if scope["method"] != "POST":
            status, error, extra = error_reply(
                405, "MethodNotAllowed", f"Method Not Allowed: {scope['path']}"
            )
            return status, error, [*extra, (b"allow", b"POST")]
        headers: dict[bytes, bytes] = dict(scope["headers"])  # names are lower-case in ASGI
        spec = self.spec
        try:
            if self.token and not bearer_ok(headers.get(b"authorization"), self.token):
                raise Unauthorized("a valid 'Authorization: Bearer <token>' header is required")
            if model != spec.name:
                raise UnknownModel(
                    f"model '{model}' is not served here; this server serves '{spec.name}'"
                )
            if not self.ready():
                raise EngineUnavailable("the model is not ready: ranks are starting or restarting")
            limit = self.settings.limits.max_body_bytes
            body = await read_body(receive, headers.get(b"content-length"), limit)
            if body is None:
                return None
            content_type = _text(headers.get(b"content-type"))
            decoded = codec.decode(body, content_type, spec, self.settings.limits)
            answers = await self.compute(decoded.requests, receive)
            if answers is None:
                return None
            accept = _text(headers.get(b"accept"))
            content, media = codec.encode(answers, decoded.instances, accept)
        except SeqServeError as e:
            return seqserve_error_reply(e, self.settings.batch.retry_after_s)
        return 200, content, [(b"content-type", media.encode())]

    async def compute(self, requests: list[Ids], receive: Receive) -> list[Answer] | None:
        """Every sequence's rows, or None if the client left first (its sequences are then
        dropped before compute). One failing sequence cancels the others of the request."""
        deadline = time.monotonic() + self.settings.request_timeout_s
        futures: list[asyncio.Future[Answer]] = []
        try:
            for r in requests:
                futures.append(self.batcher.enqueue(r, sum(len(v) for v in r.values()), deadline))
            waiter: asyncio.Future[Any] = (
                futures[0] if len(futures) == 1 else asyncio.gather(*futures)
            )
        except BaseException:
            for f in futures:
                f.cancel()
            raise
        gone = asyncio.ensure_future(_disconnected(receive))
        gone.add_done_callback(lambda _: waiter.cancel())
        try:
            result = await waiter
        except asyncio.CancelledError:
            if gone.done() and not gone.cancelled():
                return None  # the client left: cancelling `waiter` dropped its sequences
            raise
        except BaseException:
            for f in futures:
                f.cancel()
            raise
        finally:
            gone.cancel()
        return [result] if len(futures) == 1 else list(result)


async def read_body(receive: Receive, length: bytes | None, limit: int) -> bytes | None:
    """The body, refused with 413 as soon as it is known to be over `limit`; None if the
    client left while sending it."""
    if length is not None and length.isdigit() and int(length) > limit:
        raise PayloadTooLarge(f"body of {int(length)} bytes is over the limit of {limit}")
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"body is over the limit of {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def _disconnected(receive: Receive) -> None:
    # Once the body is read, the server's receive() returns only when the client disconnects.
    while (await receive())["type"] != "http.disconnect":
        pass


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("latin-1")
