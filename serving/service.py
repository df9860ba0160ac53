"""The protocol-neutral service every front calls: the model served, its limits, readiness,
the version of its weights, and `predict`.

A front (native HTTP, Open Inference Protocol REST or gRPC) only turns its protocol's request
into sequences (feature -> int64 ids, checked against the table sizes) and the answers back
into its protocol; errors are `SeqServeError`s, each front renders them in one place.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np

from serving.batching import Batcher
from serving.engine.base import Answer, Engine
from serving.errors import EngineUnavailable, Unauthorized, UnknownModel
from serving.metrics import Metrics
from serving.settings import ServerSettings

log = logging.getLogger("seqserve")

Ids = dict[str, np.ndarray]  # one sequence: feature -> int64 ids, already range-checked


class Service:
    def __init__(self, settings: ServerSettings, engine: Engine):
        self.settings = settings
        self.limits = settings.limits
        self.engine = engine
        self.spec = engine.spec
        self.version = 1  # of the weights served; CONTRACT section 5 counts updates from here
        self.rows = {f: t.num_embeddings for f, t in self.spec.table_of().items()}
        self.metrics = Metrics(
            queue_depth=lambda: self.batcher.queue_depth,
            ranks_ready=lambda: float(self.spec.sharding.world_size if engine.ready else 0),
        )
        self.batcher: Batcher[Ids, Answer] = Batcher(
            self._process, settings.batch, on_batch=self.metrics.on_batch
        )
        self._token = settings.auth_token.encode()

    # -- lifecycle ------------------------------------------------------------------------

    async def start(
        self,
        on_ready: Callable[[], None] | None = None,
        on_fatal: Callable[[BaseException], None] | None = None,
    ) -> None:
        """Start the batcher, then the engine (ranks load and warm; minutes for big tables)."""
        self.batcher.start()
        try:
            await asyncio.to_thread(self.engine.start)
        except BaseException as e:  # the ranks' traceback is in the message
            log.error("the engine failed to start: %s", e)
            if on_fatal:
                on_fatal(e)
            return
        if on_ready:
            on_ready()

    async def stop(self) -> None:
        """Answer what is queued, then close the engine."""
        await self.batcher.stop(drain=True)
        await asyncio.to_thread(self.engine.close)

    async def _process(self, batch: list[Ids]) -> list[Answer]:
        return await asyncio.to_thread(self.engine.forward, batch)

    # -- checks every front makes, in this order ------------------------------------------

    @property
    def ready(self) -> bool:
        return self.engine.ready

    def authorize(self, authorization: str | bytes | None) -> None:
        """An `Authorization: Bearer <token>` value carrying the server's token, if it has one."""
        if not self._token:
            return
        raw = authorization.encode() if isinstance(authorization, str) else authorization or b""
        scheme, _, given = raw.partition(b" ")
        # compare_digest: the time taken says nothing about how much of the token matched.
        if scheme.lower() != b"bearer" or not hmac.compare_digest(given.strip(), self._token):
            raise Unauthorized("a valid 'Authorization: Bearer <token>' header is required")

    def model(self, name: str, version: str = "") -> None:
        """The model (and, if given, the version) named is the one served here."""
        if name != self.spec.name:
            raise UnknownModel(
                f"model '{name}' is not served here; this server serves '{self.spec.name}'"
            )
        if version and version != str(self.version):
            raise UnknownModel(
                f"model '{name}' version '{version}' is not served; version {self.version} is"
            )

    def check_ready(self) -> None:
        if not self.engine.ready:
            raise EngineUnavailable("the model is not ready: ranks are starting or restarting")

    # -- the one way to compute -----------------------------------------------------------

    async def predict(
        self,
        sequences: list[Ids],
        gone: Awaitable[Any] | None = None,
        timeout_s: float | None = None,
    ) -> list[Answer] | None:
        """Every sequence's rows, in order; None if `gone` finished first (the client left: its
        sequences are dropped before compute). One failing sequence cancels the others.
        The deadline is the server's request timeout, or `timeout_s` if that is sooner."""
        limit = self.settings.request_timeout_s
        deadline = time.monotonic() + (limit if timeout_s is None else min(limit, timeout_s))
        futures: list[asyncio.Future[Answer]] = []
        try:
            for s in sequences:
                futures.append(self.batcher.enqueue(s, sum(len(v) for v in s.values()), deadline))
            waiter: asyncio.Future[Any] = (
                futures[0] if len(futures) == 1 else asyncio.gather(*futures)
            )
        except BaseException:
            for f in futures:
                f.cancel()
            raise
        watch = asyncio.ensure_future(gone) if gone is not None else None
        if watch is not None:
            watch.add_done_callback(lambda _: waiter.cancel())
        try:
            result = await waiter
        except asyncio.CancelledError:
            if watch is not None and watch.done() and not watch.cancelled():
                return None  # the client left: cancelling `waiter` dropped its sequences
            raise
        except BaseException:
            for f in futures:
                f.cancel()
            raise
        finally:
            if watch is not None:
                watch.cancel()
        return [result] if len(futures) == 1 else list(result)
