"""Slow and surplus HTTP clients: a read timeout per request and a bound on open connections.

Uvicorn has neither. Its keep-alive timer runs only *between* requests, so a client that opens
a connection and sends nothing, or half a request, holds a socket (and, with a body half sent,
an app task waiting in `receive()`) for ever; and `limit_concurrency` counts tasks too and
answers 503 to requests on connections it already accepted. This module subclasses uvicorn's
httptools protocol (what `http="auto"` picks: httptools is one of our dependencies) to add:

* a read timeout: a request's headers and body must all have arrived within `read_timeout_s`
  of its first byte (of the connection's opening, for its first request). Past it, the request
  is answered 408 where a reply can still be sent, and the connection closed. Idle keep-alive
  between requests is left to uvicorn's own `timeout_keep_alive`, as before.
* a connection bound: a connection that would make more than `max_connections` open is
  answered 503 at once and closed, without running the app; open connections are unaffected.
* the request's cycle in its scope (`serving.fronts.asgi.CONNECTION`), whose `disconnected`
  the batcher reads to drop a request whose client left, with no task per request.
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from serving.fronts.asgi import CONNECTION
from serving.fronts.codec import encode_error


def http_protocol(read_timeout_s: float, max_connections: int) -> type[asyncio.Protocol]:
    """The protocol class to give `uvicorn.Config(http=...)`: uvicorn instantiates it itself
    (with config/server_state keywords), so the two bounds travel as class attributes."""
    if read_timeout_s <= 0 or max_connections < 1:
        raise ValueError(
            f"need read_timeout_s > 0 and max_connections >= 1, "
            f"got {read_timeout_s} and {max_connections}"
        )
    return type(
        "BoundedHttpToolsProtocol",
        (GuardedHttpToolsProtocol,),
        {"read_timeout_s": read_timeout_s, "max_connections": max_connections},
    )


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    read_timeout_s: ClassVar[float] = 30.0
    max_connections: ClassVar[int] = 1024

    _read_timer: asyncio.TimerHandle | None = None
    _refused = False

    def connection_made(  # type: ignore[override]
        self, transport: asyncio.Transport
    ) -> None:
        super().connection_made(transport)  # counts it in server_state.connections
        if len(self.connections) > self.max_connections:
            # Not counted any more: a refused connection holds no slot, even while closing.
            self.connections.discard(self)
            self._refused = True
            self._reply_and_close(
                503,
                "TooManyConnections",
                f"the server has {self.max_connections} connections open, its limit; retry later",
                extra=b"retry-after: 1\r\n",
            )
            return
        # A connection that never sends a byte is otherwise never closed: uvicorn arms its
        # keep-alive timer only after a response.
        self._arm_read_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_read_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if not self._refused:
            super().data_received(data)

    def handle_websocket_upgrade(self) -> None:
        self._cancel_read_timer()  # the transport is no longer ours to time
        super().handle_websocket_upgrade()

    def on_headers_complete(self) -> None:
        super().on_headers_complete()  # starts the app's task; it runs on a later loop turn
        cycle = self.cycle
        if cycle is not None and cycle.scope is self.scope:
            extensions: dict[str, Any] = {**self.scope.get("extensions", {}), CONNECTION: cycle}
            self.scope["extensions"] = extensions

    # Parser callbacks: the timer runs from a request's first byte to its last.
    def on_message_begin(self) -> None:
        self._arm_read_timer()  # no-op for a first request: it runs since connection_made
        super().on_message_begin()

    def on_message_complete(self) -> None:
        self._cancel_read_timer()
        super().on_message_complete()

    def _arm_read_timer(self) -> None:
        if self._read_timer is None:
            self._read_timer = self.loop.call_later(self.read_timeout_s, self._read_timed_out)

    def _cancel_read_timer(self) -> None:
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None

    def _read_timed_out(self) -> None:
        self._read_timer = None
        if self.transport.is_closing():
            return
        if self.flow.read_paused:
            # We stopped reading (a pipelined request waits for the one before it, or the app
            # has not taken the body buffered so far): the wait is ours, not the client's.
            self._arm_read_timer()
            return
        cycle = self.cycle
        if cycle is not None and cycle.more_body and cycle.response_started:
            # The app answered this request before its body was in (a 413, a 401...): the reply
            # is sent or under way, so no 408; the half-sent body just costs the connection.
            cycle.keep_alive = False
            if cycle.response_complete:
                self.transport.close()
            return
        if cycle is not None and not cycle.response_complete and not cycle.more_body:
            # An earlier request is still being answered while the next one stalls half sent:
            # a 408 now would be taken for the earlier reply. Close once that reply is out.
            cycle.keep_alive = False
            return
        if cycle is not None and not cycle.response_complete:
            # The app waits in receive() for the rest of the body: hand it http.disconnect, as
            # uvicorn does when a connection is lost, so it stops waiting and answers nothing.
            cycle.disconnected = True
            cycle.message_event.set()
        self._reply_and_close(
            408,
            "RequestTimeout",
            f"the request did not arrive in full within {self.read_timeout_s:g} s",
        )

    def _reply_and_close(self, status: int, kind: str, message: str, extra: bytes = b"") -> None:
        body = encode_error(status, kind, message)
        head = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            head.extend([name, b": ", value, b"\r\n"])
        head.append(
            b"content-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n%s\r\n"
            % (len(body), extra)
        )
        self.transport.write(b"".join(head) + body)
        self.transport.close()
