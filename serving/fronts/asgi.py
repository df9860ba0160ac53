"""Plain-ASGI plumbing the HTTP fronts share: reading a body, knowing whether the client left,
the headers an error status carries, sending a reply and counting it. The hot routes run as
plain ASGI ahead of FastAPI (`serving.fronts.app` says why); FastAPI serves every other path."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from starlette.types import Receive, Scope, Send

from serving.core.metrics import Metrics
from serving.errors import PayloadTooLarge

log = logging.getLogger("seqserve")

CLIENT_GONE = 499  # counted, never sent: nobody is there to read it
# Where our HTTP protocol (serving.fronts.connections) puts the request's uvicorn cycle, whose
# `disconnected` turns true when the client hangs up.
CONNECTION = "seqserve.connection"

Headers = list[tuple[bytes, bytes]]
Reply = tuple[int, bytes, Headers]
Answerer = Callable[[], Awaitable[Reply | None]]


def error_headers(status: int, media: bytes, retry_after: float) -> Headers:
    """An error reply's headers, for every HTTP protocol: its media type, `Retry-After` on a
    503 and the bearer challenge on a 401."""
    headers: Headers = [(b"content-type", media)]
    if status == 503:
        headers.append((b"retry-after", str(max(1, round(retry_after))).encode()))
    elif status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    return headers


async def respond(
    send: Send,
    metrics: Metrics,
    route: str,
    answer: Answerer,
    internal_error: Callable[[str], Reply],
) -> None:
    """Compute one reply with `answer`, send it and count it under `route`. A bug of ours
    becomes `internal_error(message)`, with the traceback in the log; None (the client left)
    is counted as 499 and sends nothing."""
    start = time.perf_counter()
    try:
        reply = await answer()
    except Exception as e:
        log.exception("%s failed", route)
        reply = internal_error(f"{type(e).__name__} while answering")
    if reply is None:
        status = CLIENT_GONE
    else:
        status, body, headers = reply
        headers.append((b"content-length", b"%d" % len(body)))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
    metrics.observe(route, status, time.perf_counter() - start)


async def read_body(receive: Receive, length: bytes | None, limit: int) -> bytes | None:
    """The body, refused with 413 as soon as it is known to be over `limit` (the one place
    the body limit is checked); None if the client left while sending it."""
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


def gone_of(scope: Scope) -> Callable[[], bool] | None:
    """A test of whether this request's client has left, read by the batcher before the
    request is computed (no task per request waiting on `receive`); None where the server is
    not ours (the request is then computed whatever happens)."""
    connection = scope.get("extensions", {}).get(CONNECTION)
    if connection is None:
        return None
    return lambda: connection.disconnected


def headers_of(scope: Scope) -> dict[bytes, bytes]:
    return dict(scope["headers"])  # names are lower-case in ASGI


def text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("latin-1")
