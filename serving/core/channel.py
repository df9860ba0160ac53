"""A ZMQ socket driven by the asyncio event loop with no future per message: sends never
block (zmq.Again when the peer's queue is at its high-water mark, or there is no peer), and
every message received is handed to a callback on the loop.

pyzmq's own asyncio sockets allocate a future and a callback per send and receive; here a
flush costs one `send_multipart`. ZMQ's file descriptor is edge-triggered: it signals that
the socket's state changed, not that a message waits, and a send may consume that signal. So
after every send the socket is drained on the next loop turn, and each drain empties it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import zmq

log = logging.getLogger("seqserve")

# Messages a peer may have queued towards the other before sends fail: a full engine answers
# QueueFull instead of letting flushes pile up in the transport.
HIGH_WATER = 256


class Channel:
    def __init__(self, sock: zmq.Socket[Any], on_message: Callable[[list[zmq.Frame]], None]):
        self.sock = sock
        self.on_message = on_message
        self._loop = asyncio.get_running_loop()
        self._fd: int = sock.getsockopt(zmq.FD)  # type: ignore[assignment]
        self._scheduled = True
        self._loop.add_reader(self._fd, self._drain)
        self._loop.call_soon(self._drain)  # what arrived before the reader was added

    def send(self, frames: list[Any]) -> None:
        """Queue a message; zmq.Again if it cannot be queued now."""
        self.sock.send_multipart(frames, flags=zmq.NOBLOCK, copy=False)
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._drain)

    def _drain(self) -> None:
        self._scheduled = False
        sock = self.sock
        if sock.closed:
            return
        while sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:  # type: ignore[operator,arg-type]
            frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
            try:
                self.on_message(frames)
            except Exception:  # one bad message must not stop the channel
                log.exception("a message could not be handled")

    def close(self) -> None:
        if not self.sock.closed:
            self._loop.remove_reader(self._fd)
            self.sock.close(linger=0)
