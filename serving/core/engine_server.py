"""The engine process's side of a `--workers N` host: a Unix socket every front process
connects to (serving/core/wire.py, serving/core/channel.py), over the one `Service` of the
host.

A front's flush becomes one batcher item standing for its requests, so flushes from every front
batch together, one version per answer still holds (an update commits between two batches),
and the queue bound answers QueueFull for the whole host. Fronts say they are alive every
HEARTBEAT_S with their counters; /metrics asks every live front for fresh ones (REPORT), and a
front that died keeps its last counters in the totals, so they never go back.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from serving.core import metrics, wire
from serving.core.channel import Frames, Full, Link
from serving.core.host import Totals
from serving.core.service import Service
from serving.engine.base import Ids
from serving.errors import SeqServeError

log = logging.getLogger("seqserve")

HEARTBEAT_S = 0.2  # a front's heartbeat period; how often counters are stored
LOST_S = 2.0  # a front (or the engine) not heard from this long is gone
GATHER_S = 0.5  # how long /metrics waits for the live fronts' counters


@dataclass
class FrontRecord:
    pid: int
    index: int
    seen: float  # time.monotonic() of its last message
    snapshot: metrics.Snapshot = field(default_factory=lambda: metrics.Metrics().snapshot())


@dataclass
class _Gather:
    waiting: set[Link]
    done: asyncio.Future[None]


class EngineServer:
    def __init__(self, service: Service, rundir: str):
        self.service = service
        self.endpoint = wire.endpoint(rundir)
        self.counters = wire.counters(rundir, "engine", os.getpid())
        self.layout = wire.Layout.of(service.spec)
        self.fronts: dict[Link, FrontRecord] = {}
        self._gathers: dict[int, _Gather] = {}
        self._ids = itertools.count(1)
        self._calls: dict[str, Callable[..., Any]] = {
            "state": self._state,
            "describe": self._describe,
            "change": self._change,
            "totals": self._totals,
        }

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        # A socket file left by an engine that died is replaced (asyncio removes it).
        self.server = await loop.create_unix_server(
            lambda: Link(self._on_message, self._on_lost), self.endpoint
        )
        self._keeping = loop.create_task(self._keep_counters())

    def close(self) -> None:
        self._keeping.cancel()
        metrics.store(self.service.metrics.snapshot(), self.counters)
        self.server.close()
        for link in list(self.fronts):
            link.close()

    async def _keep_counters(self) -> None:
        """This process's counters on disk, so a new engine's totals still count them."""
        while True:
            metrics.store(self.service.metrics.snapshot(), self.counters)
            await asyncio.sleep(HEARTBEAT_S)

    def _send(self, link: Link, frames: list[Any]) -> None:
        try:
            link.send(frames)
        except Full:  # the front is not reading: it fails its requests itself when it is lost
            log.warning("a front is not taking answers; one message to it was dropped")
        except Exception:  # gone: nobody waits for the answer
            pass

    def _on_lost(self, link: Link) -> None:
        front = self.fronts.get(link)
        if front is not None:
            front.seen = 0.0  # not live: its stored counters count from now on

    def _on_message(self, link: Link, frames: Frames) -> None:
        kind = bytes(frames[0])
        front = self.fronts.get(link)
        if front is not None:
            front.seen = time.monotonic()
        if kind == wire.PREDICT:
            self._predict(link, frames)
        elif kind == wire.CALL:
            asyncio.get_running_loop().create_task(self._call(link, frames))
        elif kind == wire.COUNTERS:
            self._counters(link, frames)

    # -- predictions: one item per flush ---------------------------------------------------

    def _predict(self, link: Link, frames: Frames) -> None:
        flush, deadline, counts = wire.unpack(frames[1])
        sequences = wire.unpack_sequences(self.layout, frames[2], frames[3])
        # As if its requests came one by one: those that fit the queue go in, the others get
        # QueueFull (a flush is not refused whole for being bigger than the room left).
        batcher = self.service.batcher
        taken, size = _fitting(counts, batcher.room)
        rest = None
        if taken < len(counts):
            rest, sequences = wire.error_of(batcher.full()), sequences[:size]
        try:
            if not taken:
                raise batcher.full()
            future = self.service.submit(sequences, deadline, None, taken)
        except Exception as e:  # QueueFull, or shutting down
            self._send(link, [wire.ANSWER, wire.pack([flush, 0, 0, wire.error_of(e)]), b""])
            return
        future.add_done_callback(lambda f: self._answer(link, flush, sequences, taken, rest, f))

    def _answer(
        self, link: Link, flush: int, sequences: list[Ids], taken: int, rest: Any, future: Any
    ) -> None:
        error = None if future.cancelled() else future.exception()
        if future.cancelled() or error is not None:
            failure = wire.error_of(error or asyncio.CancelledError())
            self._send(link, [wire.ANSWER, wire.pack([flush, 0, 0, failure]), b""])
            return
        predicted = future.result()
        rows = wire.pack_rows(self.layout, sequences, predicted.answers)
        head = wire.pack([flush, predicted.version, taken, rest])
        self._send(link, [wire.ANSWER, head, rows])

    # -- calls ----------------------------------------------------------------------------

    async def _call(self, link: Link, frames: Frames) -> None:
        call, method, args = wire.unpack(frames[1])
        try:
            value = await self._calls[method](link, args, frames[2:])
            reply = [call, None, value]
        except Exception as e:
            if not isinstance(e, SeqServeError):
                log.exception("call %s failed", method)
            reply = [call, wire.error_of(e), None]
        self._send(link, [wire.RESULT, wire.pack(reply)])

    async def _state(self, link: Link, args: dict[str, Any], _: Any) -> dict[str, Any]:
        """A front's heartbeat: who it is and its counters; the answer: the engine's state."""
        record = self.fronts.get(link)
        if record is None:
            record = self.fronts[link] = FrontRecord(args["pid"], args["index"], 0.0)
        record.seen = time.monotonic()
        record.snapshot = args["counters"]
        service = self.service
        return {"ready": service.ready, "version": service.version, "pid": os.getpid()}

    def live_fronts(self) -> list[tuple[Link, FrontRecord]]:
        now = time.monotonic()
        return sorted(
            ((i, f) for i, f in self.fronts.items() if i.open and now - f.seen < LOST_S),
            key=lambda x: x[1].index,
        )

    async def _describe(self, link: Link, args: Any, _: Any) -> dict[str, Any]:
        doc = await self.service.describe()
        fronts = [{"kind": "front", "index": f.index, "pid": f.pid} for _, f in self.live_fronts()]
        doc["processes"] = [*doc["processes"], *fronts]
        return doc

    async def _change(self, link: Link, args: list[str], body: Frames) -> list[int]:
        kind, source = args
        changed = await self.service.change(bytes(body[0]), kind, source)
        return [changed.version, changed.rows]

    async def _totals(self, link: Link, args: Any, _: Any) -> dict[str, Any]:
        totals = await self.totals()
        return {"snapshot": totals.snapshot, "gauges": totals.gauges}

    # -- the host's counters ----------------------------------------------------------------

    async def totals(self, fresh: bool = True) -> Totals:
        """The engine's counters and every live front's, fresh (asked now), and the stored
        counters of the host's processes that are gone (earlier engines and fronts)."""
        fronts = self.live_fronts()
        live = [link for link, _ in fronts]
        if fresh and live:
            gather_id = next(self._ids)
            gather = _Gather(set(live), asyncio.get_running_loop().create_future())
            self._gathers[gather_id] = gather
            for link in live:
                self._send(link, [wire.REPORT, wire.pack(gather_id)])
            try:
                await asyncio.wait_for(asyncio.shield(gather.done), GATHER_S)
            except TimeoutError:
                log.warning("metrics: %d front(s) did not report in time", len(gather.waiting))
            del self._gathers[gather_id]
        own = self.service.metrics.snapshot()
        gone = metrics.stored(self.counters.parent, {os.getpid(), *(f.pid for _, f in fronts)})
        snapshots = [own, *(f.snapshot for _, f in fronts), *gone]
        return Totals(metrics.add(snapshots), self.service.gauges())

    def _counters(self, link: Link, frames: Frames) -> None:
        gather_id, snapshot = wire.unpack(frames[1])
        record = self.fronts.get(link)
        if record is not None:
            record.snapshot = snapshot
        gather = self._gathers.get(gather_id)
        if gather is not None:
            gather.waiting.discard(link)
            if not gather.waiting and not gather.done.done():
                gather.done.set_result(None)


def _fitting(counts: list[int], room: int) -> tuple[int, int]:
    """How many of the first requests (sequence `counts`) fit `room`, and their sequences."""
    taken = size = 0
    for n in counts:
        if size + n > room:
            break
        taken, size = taken + 1, size + n
    return taken, size
