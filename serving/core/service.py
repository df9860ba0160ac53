"""The protocol-neutral service every front calls: the model served, its limits, readiness,
the version of its weights, `predict`, and `change` (weight updates, CONTRACT section 5).

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
from dataclasses import dataclass
from typing import Any

import numpy as np

from serving.core import updates
from serving.core.batching import Batcher
from serving.core.gate import Gate
from serving.core.metrics import Metrics
from serving.engine.base import Answer, Commit, Engine
from serving.errors import (
    BadUpdate,
    EngineStartError,
    EngineUnavailable,
    SpecError,
    Unauthorized,
    UnknownModel,
    UnsupportedMediaType,
    UpdatesDisabled,
)
from serving.settings import ServerSettings

log = logging.getLogger("seqserve")

Ids = dict[str, np.ndarray]  # one sequence: feature -> int64 ids, already range-checked
DELTA = "application/octet-stream"  # a safetensors row delta
RELOAD = "application/json"  # {"safetensors": PATH} or {"dcp": PATH}


@dataclass(frozen=True)
class Predicted:
    answers: list[Answer]  # one per sequence, in order
    version: int  # of the weights every row of every answer came from


@dataclass(frozen=True)
class Changed:
    version: int
    rows: int  # rows replaced (a reload: every row of every table)


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
            version=lambda: float(self.version),
        )
        self.gate = Gate()  # requests read one version; an update writes between batches
        self._changing = asyncio.Lock()  # one update at a time, from preparing to committing
        self._abandoned = False  # the server stopped before the engine was up
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
    ) -> Predicted | None:
        """Every sequence's rows, in order, all from one version of the weights; None if `gone`
        finished first (the client left: its sequences are dropped before compute). One
        failing sequence cancels the others. The deadline is the server's request timeout, or
        `timeout_s` if that is sooner."""
        async with self.gate.reading():
            answers = await self._predict(sequences, gone, timeout_s)
            return None if answers is None else Predicted(answers, self.version)

    async def _predict(
        self,
        sequences: list[Ids],
        gone: Awaitable[Any] | None,
        timeout_s: float | None,
    ) -> list[Answer] | None:
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

    # -- weight updates -------------------------------------------------------------------

    async def change(self, body: bytes, kind: str, source: str = "http") -> Changed:
        """Apply a row delta (`kind` "delta": safetensors) or a full reload ("reload": JSON
        naming a path on the server); `kind` from change_kind, checked before the body is read.

        Everything is checked, and a reload loaded beside the served weights, while requests
        go on; then the gate holds new requests back, lets those in flight finish, and the
        change is committed between two batches and the version moves. A rejected update
        (BadUpdate, 400) changes nothing."""
        async with self._changing:
            self.check_ready()
            try:
                rows, commit = await asyncio.to_thread(self._prepare, kind, body)
            except BadUpdate:
                self.metrics.on_update(kind, "rejected", 0)
                raise
            async with self.gate.writing():
                await asyncio.to_thread(commit)
                self.version += 1
                version = self.version
        self.metrics.on_update(kind, "applied", rows)
        log.info("weights version %d: %s of %d rows (%s)", version, kind, rows, source)
        return Changed(version, rows)

    def change_kind(self, content_type: str, source: str = "http") -> str:
        """ "delta" or "reload", or why this change is refused before its body is read."""
        if source == "http" and not self.settings.allow_updates:
            raise UpdatesDisabled(
                "weight updates are off: start the server with --allow-updates to accept them"
            )
        media = content_type.split(";", 1)[0].strip().lower()
        if media not in (DELTA, RELOAD):
            raise UnsupportedMediaType(
                f"content type '{media}': send {DELTA} (a safetensors row delta) or {RELOAD} "
                '({"safetensors": PATH} or {"dcp": PATH})'
            )
        return "delta" if media == DELTA else "reload"

    def _prepare(self, kind: str, body: bytes) -> tuple[int, Commit]:
        if kind == "delta":
            delta = updates.parse_delta(body, self.spec)
            return updates.rows_in(delta), self.engine.prepare_update(delta)
        new = updates.parse_reload(body)
        try:
            commit = self.engine.prepare_reload(new)
        except (SpecError, EngineStartError) as e:
            raise BadUpdate(f"reload: {e}; version {self.version} keeps serving") from None
        return sum(t.num_embeddings for t in self.spec.tables), commit
