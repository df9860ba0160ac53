"""Dynamic batching in front of a serial engine (asyncio + stdlib only).

Callers `enqueue` one item each (a request: one or several sequences) and await its future; a
single background loop groups waiting items into batches and hands each batch to `process`,
one batch at a time. Batches form while the engine is busy, not by waiting: when the engine is
idle a batch goes at once with whatever is queued, and whatever arrives while it computes
makes the next one (continuous batching, as Triton's queue delay of 0 and vLLM's scheduler).
`max_delay_ms` and `max_gap_ms` are upper bounds a user may set to trade latency for size.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from serving.errors import DeadlineExceeded, EngineUnavailable, QueueFull
from serving.settings import BatchSettings

T = TypeVar("T")
R = TypeVar("R")

log = logging.getLogger(__name__)


class Gone(Exception):
    """The caller's client left before its item was computed: nobody reads the answer."""


@dataclass
class _Pending(Generic[T, R]):
    item: T
    cost: int  # ids: counted against max_batch_ids
    size: int  # sequences: counted against max_batch_size
    deadline: float | None  # absolute time.monotonic()
    gone: Callable[[], bool] | None  # True once the client has left
    future: asyncio.Future[R]
    arrived: float  # the loop's time at enqueue
    requests: int  # the requests it stands for (a front process's flush: several)


class Batcher(Generic[T, R]):
    def __init__(
        self,
        process: Callable[[list[T]], Awaitable[list[R]]],
        settings: BatchSettings,
        # After each batch: its sequences, ids, requests, and their summed queue time (s).
        on_batch: Callable[[int, int, int, float], None] | None = None,
    ):
        self._process = process
        self._settings = settings
        self._on_batch = on_batch
        # A deque rather than asyncio.Queue: the loop must peek at the head to decide whether
        # it still fits the batch, and leave it in place for the next batch if not.
        self._waiting: deque[_Pending[T, R]] = deque()
        self._queued = 0  # sequences in _waiting
        # Items taken off the queue for the current batch; stop(drain=False) answers these too.
        self._taken: list[_Pending[T, R]] = []
        self._wakeup = asyncio.Event()
        self._closed = False
        self._task: asyncio.Task[None] | None = None

    @property
    def queue_depth(self) -> int:
        """Sequences waiting, not counting the batch being processed."""
        return self._queued

    @property
    def room(self) -> int:
        """Sequences the queue takes before its bound (`enqueue` raises QueueFull beyond)."""
        return self._settings.max_queue - self._queued

    def full(self) -> QueueFull:
        """The error of an item beyond the bound."""
        return QueueFull(
            f"batch queue is full ({self._settings.max_queue} sequences waiting, at most)"
        )

    def start(self) -> None:
        if self._task is not None:
            raise RuntimeError("batcher already started")
        self._task = asyncio.get_running_loop().create_task(self._run())

    def enqueue(
        self,
        item: T,
        cost: int,
        deadline: float | None = None,
        *,
        size: int = 1,
        gone: Callable[[], bool] | None = None,
        requests: int = 1,
    ) -> asyncio.Future[R]:
        """Queue `item`; its result comes in the future (Gone if `gone()` turned true before
        its batch ran). Cancelling the future drops the item if its batch has not started."""
        if self._closed:
            raise EngineUnavailable("shutting down")
        if self._queued + size > self._settings.max_queue:
            raise self.full()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        pending = _Pending(item, cost, size, deadline, gone, future, loop.time(), requests)
        self._waiting.append(pending)
        self._queued += size
        self._wakeup.set()
        return future

    async def stop(self, drain: bool = True) -> None:
        """Refuse new items; with `drain`, answer every accepted item before returning."""
        self._closed = True
        self._wakeup.set()
        if self._task is not None:
            if not drain:
                self._task.cancel()
            # asyncio.wait, not await: a cancelled loop task must not cancel the caller.
            await asyncio.wait([self._task])
        # Anything still unanswered was never (or only partly) processed.
        for pending in [*self._taken, *self._waiting]:
            if not pending.future.done():
                pending.future.set_exception(EngineUnavailable("shutting down"))
        self._waiting.clear()
        self._queued = 0
        self._taken = []

    async def _run(self) -> None:
        while not (self._closed and not self._waiting):
            batch = await self._collect()
            if batch:
                await self._run_batch(batch)

    async def _wait_for_item(self, timeout: float | None) -> bool:
        """Sleep until an item arrives or stop() is called; False on timeout."""
        self._wakeup.clear()
        try:
            async with asyncio.timeout(timeout):
                await self._wakeup.wait()
        except TimeoutError:
            return False
        return True

    def _wanted(self, pending: _Pending[T, R]) -> bool:
        future = pending.future
        if future.done():  # the caller was cancelled; nobody reads the result
            return False
        if pending.gone is not None and pending.gone():
            future.set_exception(Gone())
            return False
        if pending.deadline is not None and time.monotonic() >= pending.deadline:
            future.set_exception(DeadlineExceeded("request waited past its deadline"))
            return False
        return True

    async def _collect(self) -> list[_Pending[T, R]]:
        """Take the next batch off the queue; may be empty if every item taken was dropped."""
        settings = self._settings
        loop = asyncio.get_running_loop()
        batch: list[_Pending[T, R]] = []
        self._taken = batch
        cost = size = 0
        close_at = 0.0
        while size < settings.max_batch_size and cost < settings.max_batch_ids:
            if not self._waiting:
                if self._closed or not batch:
                    if self._closed:  # nothing more can arrive: waiting gains nothing
                        break
                    await self._wait_for_item(None)
                    continue
                # The engine is idle and the queue empty: wait for company only as long as
                # the user's bounds allow (none by default).
                quiet_at = batch[-1].arrived + settings.max_gap_ms / 1000
                timeout = min(close_at, quiet_at) - loop.time()
                if timeout <= 0 or not await self._wait_for_item(timeout):
                    break
                continue
            head = self._waiting[0]
            if batch and (
                cost + head.cost > settings.max_batch_ids
                or size + head.size > settings.max_batch_size
            ):
                break  # head opens the next batch (an empty batch takes even an oversized head)
            self._waiting.popleft()
            self._queued -= head.size
            if not self._wanted(head):
                continue
            if not batch:
                close_at = head.arrived + settings.max_delay_ms / 1000
            batch.append(head)
            cost += head.cost
            size += head.size
        # Items may have been cancelled, expired or left while the batch was held open.
        return [p for p in batch if self._wanted(p)]

    async def _run_batch(self, batch: list[_Pending[T, R]]) -> None:
        started = asyncio.get_running_loop().time()
        try:
            results = await self._process([p.item for p in batch])
            if len(results) != len(batch):
                raise RuntimeError(
                    f"process returned {len(results)} results for a batch of {len(batch)} items"
                )
        except Exception as exc:
            # One failing batch must not stop the loop: its callers get the error, later
            # batches still run.
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(exc)
        else:
            for pending, result in zip(batch, results, strict=True):
                if not pending.future.done():
                    pending.future.set_result(result)
        if self._on_batch is not None:
            try:
                queued = sum((started - p.arrived) * p.requests for p in batch)
                size, cost = sum(p.size for p in batch), sum(p.cost for p in batch)
                self._on_batch(size, cost, sum(p.requests for p in batch), queued)
            except Exception:  # a metrics bug must not take serving down
                log.exception("on_batch callback failed")
