"""One version per answer: requests read the weights together, an update writes them alone.

A request holds the gate from its first sequence queued to its answer, so every sequence of
it, and every column of every row, comes from the weights of one version. An update waits for
the requests in flight to finish and holds back new ones meanwhile (writer preference: a stream
of requests never starves it), then changes the weights between two batches.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class Gate:
    def __init__(self) -> None:
        self.readers = 0
        self._open = asyncio.Event()
        self._open.set()
        self._idle: asyncio.Event | None = None  # set by the last reader out, for a writer
        self._writer = asyncio.Lock()  # one update at a time

    @asynccontextmanager
    async def reading(self) -> AsyncIterator[None]:
        while not self._open.is_set():
            await self._open.wait()
        self.readers += 1
        try:
            yield
        finally:
            self.readers -= 1
            if self.readers == 0 and self._idle is not None:
                self._idle.set()

    @asynccontextmanager
    async def writing(self) -> AsyncIterator[None]:
        async with self._writer:
            self._open.clear()
            try:
                if self.readers:
                    self._idle = asyncio.Event()
                    await self._idle.wait()
                yield
            finally:
                self._idle = None
                self._open.set()
