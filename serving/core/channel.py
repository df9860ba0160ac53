"""A connection between a front process and the engine process: messages of frames over a Unix
stream socket, driven by the event loop (asyncio's own transports: no thread, no future per
message).

Why not ZMQ: measured here, a pyzmq `send_multipart` of a flush costs its sender 12.8 us of
CPU (9.1 us on the calling thread, the rest on ZMQ's I/O thread, which every message wakes on
both sides) against 2.0 us for a write on a Unix socket; and on a machine whose cores the
fronts, the engine and the clients share, every thread that wakes is a switch more. What ZMQ
gave, asyncio has: `connection_lost` says at once that the peer went away, and the transport's
write buffer is the high-water mark.

A message: a little-endian u32 frame count, a u32 size per frame, then the frames. A received
message's frames are memoryviews of one bytes object (numpy reads them without a copy).
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Callable, Sequence
from typing import Any, cast

log = logging.getLogger("seqserve")

# Bytes a peer may have queued towards the other before sends fail: a full engine answers
# QueueFull instead of letting flushes pile up in the transport.
HIGH_WATER = 64 * 1024 * 1024

_COUNT = struct.Struct("<I")


class Closed(Exception):
    """There is no peer at the other end (now)."""


class Full(Exception):
    """The peer is not reading: its queue is at the high-water mark."""


Frames = list[memoryview]


class Link(asyncio.Protocol):
    """One end of a connection. `on_message(link, frames)` for every message received,
    `on_lost(link)` once the connection is gone."""

    def __init__(
        self,
        on_message: Callable[[Link, Frames], None],
        on_lost: Callable[[Link], None] | None = None,
    ):
        self.on_message = on_message
        self.on_lost = on_lost
        self.transport: asyncio.Transport | None = None
        self._pending = bytearray()  # the start of a message not yet whole

    @property
    def open(self) -> bool:
        return self.transport is not None and not self.transport.is_closing()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's: not a subclass
        # A front's link outlives its connection (it reconnects to a new engine): the part of
        # a message the dead peer never finished must not prefix the new peer's first one.
        self._pending.clear()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._pending.clear()
        if self.on_lost is not None:
            self.on_lost(self)

    def send(self, frames: Sequence[Any]) -> None:
        """Queue a message (Closed: no peer; Full: the peer is not reading)."""
        transport = self.transport
        if transport is None or transport.is_closing():
            raise Closed("not connected")
        if transport.get_write_buffer_size() > HIGH_WATER:
            raise Full("the peer is not reading")
        views = [memoryview(f).cast("B") for f in frames]
        head = struct.pack(f"<I{len(views)}I", len(views), *(v.nbytes for v in views))
        transport.write(b"".join([head, *views]))

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self._pending:
            self._pending += data
            data = bytes(self._pending)
            self._pending.clear()
        view = memoryview(data)
        at, size = 0, len(data)
        while size - at >= 4:
            (count,) = _COUNT.unpack_from(data, at)
            body = at + 4 + 4 * count
            if size < body:
                break
            sizes = struct.unpack_from(f"<{count}I", data, at + 4)
            end = body + sum(sizes)
            if size < end:
                break
            frames = []
            for n in sizes:
                frames.append(view[body : body + n])
                body += n
            at = end
            try:
                self.on_message(self, frames)
            except Exception:  # one bad message must not take the connection down
                log.exception("a message could not be handled")
        if at < size:
            self._pending += view[at:]
