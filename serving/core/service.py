"""The host of a front whose engine runs in its own process (`--workers 1`, tests, embedding):
the batcher, the engine, versions and updates (the contract every front sees: host.py).

One version per answer: a request is one batcher item, so all its sequences run in one batch,
and an update commits between two batches (the engine lock), so every row of every answer
comes from one version of the weights. The engine process of a `--workers N` host runs this
same service under the fronts' flushes (serving/core/engine_server.py).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from serving.core import updates
from serving.core.batching import Batcher, Gone
from serving.core.host import Changed, Host, Predicted, Totals
from serving.core.watch import watch
from serving.engine.base import Answer, Commit, Engine, Ids
from serving.errors import BadUpdate, EngineStartError, SpecError
from serving.settings import ServerSettings

log = logging.getLogger("seqserve")

# A request's item: its sequences, their ids (counted once, at enqueue) and how many requests
# it stands for (a front process's flush stands for several).
Item = tuple[list[Ids], int, int]


class Service(Host):
    def __init__(self, settings: ServerSettings, engine: Engine):
        super().__init__(settings, engine.spec)
        self.engine = engine
        self._changing = asyncio.Lock()  # one update at a time, from preparing to committing
        # Held by a batch while it computes and by an update while it commits: commits land
        # between two batches. FIFO, so a waiting update goes before the next batch.
        self._engine = asyncio.Lock()
        self._abandoned = False  # the server stopped before the engine was up
        self.batcher: Batcher[Item, Predicted] = Batcher(
            self._process, settings.batch, on_batch=self.metrics.on_batch
        )
        # Where a full reload may read (resolved once: the rule compares resolved paths).
        self.reload_roots = [
            Path(r).resolve() for r in settings.reload_roots.split(os.pathsep) if r
        ]
        # One thread runs every batch: the engine's per-thread state (torch's thread count)
        # is set once, and batches never overlap.
        self._engine_thread = ThreadPoolExecutor(1, "seqserve-engine")
        self._inline_ids: int = getattr(engine, "inline_ids", 0)
        self._watcher: asyncio.Task[None] | None = None  # --updates-dir

    # -- lifecycle ------------------------------------------------------------------------

    async def start(
        self,
        on_ready: Callable[[], None] | None = None,
        on_fatal: Callable[[BaseException], None] | None = None,
    ) -> None:
        """Start the batcher, then the engine (ranks load and warm; minutes for big tables)."""
        self.batcher.start()
        if self.settings.updates_dir:
            folder = Path(self.settings.updates_dir)
            self._watcher = asyncio.get_running_loop().create_task(watch(self, folder))
        try:
            await asyncio.to_thread(self.engine.start)
        except BaseException as e:  # the ranks' traceback is in the message
            if self._abandoned:
                log.warning("the engine's start was abandoned: the server is stopping")
                return
            log.error("the engine failed to start: %s", e)
            if on_fatal:
                on_fatal(e)
            return
        if on_ready and not self._abandoned:
            on_ready()

    async def abandon_start(self) -> None:
        """The server stops while the engine starts: close it, so that a start waiting on
        something that may never come (another host's worker) ends now."""
        self._abandoned = True
        await asyncio.to_thread(self.engine.close)

    async def stop(self) -> None:
        """Answer what is queued, then close the engine."""
        if self._watcher is not None:
            self._watcher.cancel()
        await self.batcher.stop(drain=True)
        await asyncio.to_thread(self.engine.close)
        self._engine_thread.shutdown(wait=False)

    async def _process(self, requests: list[Item]) -> list[Predicted]:
        """One engine batch of every sequence of `requests`, answered per request; its
        phases timed for the statistics (serving/core/stats.py)."""
        started = time.perf_counter_ns()
        flat = requests[0][0] if len(requests) == 1 else [s for r, _, _ in requests for s in r]
        async with self._engine:
            version = self.version
            if self._inline_ids and sum(n for _, n, _ in requests) <= self._inline_ids:
                answers, began, ended = self._forward(flat)  # on the loop: see Engine
            else:
                loop = asyncio.get_running_loop()
                answers, began, ended = await loop.run_in_executor(
                    self._engine_thread, self._forward, flat
                )
        out, at = [], 0
        for r, _, _ in requests:
            out.append(Predicted(answers[at : at + len(r)], version))
            at += len(r)
        done = time.perf_counter_ns()
        weight = sum(n for _, _, n in requests)
        self.metrics.stats.computed(weight, began - started, ended - began, done - ended)
        return out

    def _forward(self, flat: list[Ids]) -> tuple[list[Answer], int, int]:
        """On the engine thread: the answers, and when the engine began and ended."""
        began = time.perf_counter_ns()
        answers = self.engine.forward(flat)
        return answers, began, time.perf_counter_ns()

    @property
    def ready(self) -> bool:
        return self.engine.ready

    # -- the one way to compute -----------------------------------------------------------

    async def predict(
        self,
        sequences: list[Ids],
        gone: Callable[[], bool] | None = None,
        timeout_s: float | None = None,
    ) -> Predicted | None:
        """Every sequence's rows, in order, all from one version of the weights; None if the
        client left (`gone()` true) before its batch ran: its sequences are never computed.
        The deadline is the server's request timeout, or `timeout_s` if that is sooner."""
        entered = time.perf_counter_ns()
        limit = self.settings.request_timeout_s
        deadline = time.monotonic() + (limit if timeout_s is None else min(limit, timeout_s))
        ok = False
        try:
            predicted = await self.submit(sequences, deadline, gone)
            ok = True
            return predicted
        except Gone:
            return None
        finally:
            self.metrics.stats.answered(ok, time.perf_counter_ns() - entered)

    def submit(
        self,
        sequences: list[Ids],
        deadline: float,
        gone: Callable[[], bool] | None = None,
        requests: int = 1,
    ) -> asyncio.Future[Predicted]:
        """Queue `sequences` as one item standing for `requests` requests (QueueFull if the
        queue is at its bound); the future has their rows."""
        ids = sum(len(v) for s in sequences for v in s.values())
        item = (sequences, ids, requests)
        return self.batcher.enqueue(
            item, ids, deadline, size=len(sequences), gone=gone, requests=requests
        )

    async def describe(self) -> dict[str, Any]:
        """/models/{model}: the engine's account of its ranks and shards, and the version."""
        return {**self.engine.describe(), "version": self.version, "processes": [self.process()]}

    def process(self) -> dict[str, Any]:
        return {"kind": "engine" if self.settings.workers > 1 else "server", "pid": os.getpid()}

    def gauges(self) -> dict[str, float]:
        ready = self.engine.ready
        return {
            "queue_depth": float(self.batcher.queue_depth),
            "ranks_ready": float(self.spec.sharding.world_size if ready else 0),
            "version": float(self.version),
        }

    async def totals(self) -> Totals:
        return Totals(self.metrics.snapshot(), self.gauges())

    # -- weight updates -------------------------------------------------------------------

    async def change(self, body: bytes, kind: str, source: str = "http") -> Changed:
        """Everything is checked, and a reload loaded beside the served weights, while requests
        go on; then the change is committed between two batches (the batch in flight
        finishes first, the next waits) and the version moves. A rejected update
        (BadUpdate, 400) changes nothing."""
        async with self._changing:
            self.check_ready()
            try:
                rows, commit = await asyncio.to_thread(self._prepare, kind, body)
            except BadUpdate:
                self.metrics.on_update(kind, "rejected", 0)
                raise
            async with self._engine:
                await asyncio.to_thread(commit)
                self.version += 1
                version = self.version
        self.metrics.on_update(kind, "applied", rows)
        log.info("weights version %d: %s of %d rows (%s)", version, kind, rows, source)
        return Changed(version, rows)

    def _prepare(self, kind: str, body: bytes) -> tuple[int, Commit]:
        if kind == "delta":
            delta = updates.parse_delta(body, self.spec)
            return updates.rows_in(delta), self.engine.prepare_update(delta)
        new = updates.parse_reload(body, self.reload_roots)
        try:
            commit = self.engine.prepare_reload(new)
        except (SpecError, EngineStartError) as e:
            raise BadUpdate(f"reload: {e}; version {self.version} keeps serving") from None
        return sum(t.num_embeddings for t in self.spec.tables), commit
