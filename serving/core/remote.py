"""A front process's host: the engine runs in the host's engine process, reached over a Unix
socket (serving/core/wire.py, serving/core/channel.py; the engine's side is
serving/core/engine_server.py).

`predict` queues a request, and the queued requests go together in one message (a flush;
split where it would be more than a batch): at the end of the event-loop turn when none of
this front's flushes is out, else as soon as the one out comes back. What arrives while a
flush is out could not join its batch anyway; holding it makes fewer, fuller messages (7.5
requests a message instead of 6 at 32 clients over 2 fronts: 5-12% more req/s, 6-8% less CPU
a request, docs/workers.md). The engine answers each flush
with one message: rows as one float32 frame, which the answers are views of, and the version
they came from. Readiness and the version come with a heartbeat every HEARTBEAT_S. When the
engine process goes away (its connection is lost, or it stays silent LOST_S), every request
waiting on it fails at once with EngineUnavailable (503, Retry-After), and so does admission
until a new engine is warm.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import time
from collections.abc import Callable
from typing import Any

from serving.config import ModelSpec
from serving.core import metrics, wire
from serving.core.channel import Closed, Frames, Full, Link
from serving.core.engine_server import HEARTBEAT_S, LOST_S
from serving.core.host import Changed, Host, Predicted, Totals
from serving.engine.base import Ids
from serving.errors import EngineUnavailable, QueueFull
from serving.settings import ServerSettings

HEAR_S = 5.0  # how long a starting front waits to hear from the engine before it listens

# A request waiting for its flush: its sequences, its future, its deadline, whether its
# client left.
_Waiting = tuple[list[Ids], "asyncio.Future[Predicted | None]", float, Callable[[], bool] | None]


class _Flight:
    """A flush sent: its requests' futures and sequence counts, and every sequence."""

    __slots__ = ("futures", "counts", "sequences")

    def __init__(self) -> None:
        self.futures: list[asyncio.Future[Predicted | None]] = []
        self.counts: list[int] = []
        self.sequences: list[Ids] = []


class RemoteService(Host):
    # A front process listens once it has heard from the engine process (its listener joins
    # the port's group only then): one started beside a serving engine never answers 503 for
    # its own sake; at the host's start, the fronts answer 503 until the engine is warm.
    listen_after_start = True

    def __init__(self, settings: ServerSettings, spec: ModelSpec, rundir: str, index: int):
        super().__init__(settings, spec)
        self.endpoint = wire.endpoint(rundir)
        self.counters = wire.counters(rundir, "front", os.getpid())
        self.index = index
        self.layout = wire.Layout.of(spec)
        self._engine_ready = False
        self.link = Link(self._on_message, self._on_lost)
        self._waiting: list[_Waiting] = []
        self._flights: dict[int, _Flight] = {}
        self._calls: dict[int, asyncio.Future[Any]] = {}
        self._ids = itertools.count(1)
        self._tasks: list[asyncio.Task[None]] = []

    # -- lifecycle ------------------------------------------------------------------------

    async def start(
        self,
        on_ready: Callable[[], None] | None = None,
        on_fatal: Callable[[BaseException], None] | None = None,
    ) -> None:
        self._heard = asyncio.Event()
        self._tasks.append(asyncio.get_running_loop().create_task(self._heartbeat()))
        # Beside a serving engine this takes a heartbeat; at the host's start, a front that has
        # not heard from the engine in HEAR_S listens anyway (503 until the engine is warm), so
        # that a SIGTERM meanwhile stops it rather than waiting on a start that may never end.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._heard.wait(), HEAR_S)

    async def stop(self) -> None:
        """Send this front's last counters, then close."""
        for task in self._tasks:
            task.cancel()
        with contextlib.suppress(EngineUnavailable):
            await self._call("state", self._hello(), timeout=1.0)
        metrics.store(self.metrics.snapshot(), self.counters)
        self._lost("the front is stopping")
        self.link.on_lost = None
        self.link.close()

    @property
    def ready(self) -> bool:
        return self._engine_ready and self.link.open

    async def _connect(self) -> None:
        """Connect to the engine process's socket, once it is there."""
        loop = asyncio.get_running_loop()
        with contextlib.suppress(OSError):  # no engine (yet): the next heartbeat tries again
            await loop.create_unix_connection(lambda: self.link, self.endpoint)

    def _on_lost(self, link: Link) -> None:
        self._lost("the engine process went away; a new one is starting")

    def _lost(self, why: str) -> None:
        """The engine is gone: nothing in flight will be answered."""
        self._engine_ready = False
        error = EngineUnavailable(why)
        flights, self._flights = self._flights, {}
        for flight in flights.values():
            for future in flight.futures:
                if not future.done():
                    future.set_exception(error)
        calls, self._calls = self._calls, {}
        for call in calls.values():
            if not call.done():
                call.set_exception(error)
        if self._waiting:
            self._flush()  # not ready now: each fails with EngineUnavailable

    def _hello(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "index": self.index, "counters": self.metrics.snapshot()}

    async def _heartbeat(self) -> None:
        while True:
            if not self.link.open:
                await self._connect()
            try:
                state = await self._call("state", self._hello(), timeout=LOST_S)
                self._engine_ready = bool(state["ready"])
                self.version = int(state["version"])
                self._heard.set()
            except EngineUnavailable:
                if self._flights or self._engine_ready:
                    self._lost("the engine process stopped answering; a new one is starting")
                # A connection that carries no answers is dropped: the next heartbeat connects
                # afresh, to whichever engine listens on the socket by then.
                self.link.close()
            # Where they outlive this process: the host's totals keep them if it dies.
            metrics.store(self.metrics.snapshot(), self.counters)
            await asyncio.sleep(HEARTBEAT_S)

    # -- predictions ----------------------------------------------------------------------

    async def predict(
        self,
        sequences: list[Ids],
        gone: Callable[[], bool] | None = None,
        timeout_s: float | None = None,
    ) -> Predicted | None:
        entered = time.perf_counter_ns()
        limit = self.settings.request_timeout_s
        deadline = time.monotonic() + (limit if timeout_s is None else min(limit, timeout_s))
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Predicted | None] = loop.create_future()
        if not self._waiting and not self._flights:
            loop.call_soon(self._flush)
        self._waiting.append((sequences, future, deadline, gone))
        # No timer per request: the engine drops a flush past its deadline, and a silent
        # engine fails every flush within LOST_S.
        ok = False
        try:
            predicted = await future
            ok = predicted is not None
            return predicted
        finally:
            self.metrics.stats.answered(ok, time.perf_counter_ns() - entered)

    def _flush(self) -> None:
        """Every request queued since the last flush, in as few messages as batches allow."""
        waiting, self._waiting = self._waiting, []
        batch = self.settings.batch
        flight, size, ids, deadline = _Flight(), 0, 0, float("inf")
        for sequences, future, due, gone in waiting:
            if gone is not None and gone():
                future.set_result(None)  # its client left: never computed
                continue
            n = sum(len(v) for s in sequences for v in s.values())
            if flight.futures and (
                size + len(sequences) > batch.max_batch_size or ids + n > batch.max_batch_ids
            ):
                self._send(flight, deadline)
                flight, size, ids, deadline = _Flight(), 0, 0, float("inf")
            flight.futures.append(future)
            flight.counts.append(len(sequences))
            flight.sequences.extend(sequences)
            size, ids, deadline = size + len(sequences), ids + n, min(deadline, due)
        if flight.futures:
            self._send(flight, deadline)

    def _send(self, flight: _Flight, deadline: float) -> None:
        flush = next(self._ids)
        lengths, ids = wire.pack_sequences(self.layout, flight.sequences)
        head = wire.pack([flush, deadline, flight.counts])
        try:
            if not self.ready:
                raise EngineUnavailable("the model is not ready: the engine process is starting")
            self.link.send([wire.PREDICT, head, lengths, ids])
        except (Closed, Full, EngineUnavailable) as e:
            error: Exception = QueueFull("the engine's queue is full: retry later")
            if isinstance(e, EngineUnavailable):
                error = e
            elif isinstance(e, Closed):
                error = EngineUnavailable("the engine process is not reachable")
            for future in flight.futures:
                future.set_exception(error)
            return
        self._flights[flush] = flight

    def _on_message(self, link: Link, frames: Frames) -> None:
        kind = bytes(frames[0])
        if kind == wire.ANSWER:
            self._answer(frames)
        elif kind == wire.RESULT:
            call, error, value = wire.unpack(frames[1])
            future = self._calls.pop(call, None)
            if future is not None and not future.done():
                if error:
                    try:
                        wire.raise_error(error)
                    except Exception as e:
                        future.set_exception(e)
                else:
                    future.set_result(value)
        elif kind == wire.REPORT:
            gather = wire.unpack(frames[1])
            # If it cannot be sent, the engine uses the counters of the last heartbeat.
            with contextlib.suppress(Closed, Full):
                self.link.send([wire.COUNTERS, wire.pack([gather, self.metrics.snapshot()])])

    def _answer(self, frames: Frames) -> None:
        # The engine took the flush's first `taken` requests; `error` is the others'.
        flush, version, taken, error = wire.unpack(frames[1])
        flight = self._flights.pop(flush, None)
        if flight is None:  # its requests already failed (the engine was lost meanwhile)
            return
        if not self._flights and self._waiting:
            self._flush()  # what gathered while this flush was out: the next one
        if error:
            try:
                wire.raise_error(error)
            except Exception as e:
                for future in flight.futures[taken:]:
                    if not future.done():
                        future.set_exception(e)
        if not taken:
            return
        counts = flight.counts[:taken]
        answers = wire.unpack_rows(self.layout, flight.sequences[: sum(counts)], frames[2])
        at = 0
        for future, n in zip(flight.futures, counts, strict=False):
            if not future.done():
                future.set_result(Predicted(answers[at : at + n], version))
            at += n

    # -- calls ----------------------------------------------------------------------------

    async def _call(
        self, method: str, args: Any, body: bytes | None = None, timeout: float | None = None
    ) -> Any:
        call = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        frames: list[Any] = [wire.CALL, wire.pack([call, method, args])]
        if body is not None:
            frames.append(body)
        try:
            self.link.send(frames)
        except (Closed, Full):
            raise EngineUnavailable("the engine process is not reachable") from None
        self._calls[call] = future
        try:
            async with asyncio.timeout(timeout):
                return await future
        except TimeoutError:
            raise EngineUnavailable("the engine process did not answer in time") from None
        finally:
            self._calls.pop(call, None)

    async def abandon_start(self) -> None:
        """Nothing to abandon: the engine process is the parent's to stop."""

    async def change(self, body: bytes, kind: str, source: str = "http") -> Changed:
        self.check_ready()
        version, rows = await self._call("change", [kind, source], body)
        self.version = max(self.version, version)
        return Changed(version, rows)

    async def describe(self) -> dict[str, Any]:
        doc: dict[str, Any] = await self._call("describe", None, timeout=LOST_S)
        return doc

    async def totals(self) -> Totals:
        value = await self._call("totals", None, timeout=LOST_S)
        return Totals(value["snapshot"], value["gauges"])
