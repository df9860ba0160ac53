"""The protocol-neutral service every front calls: the model served, its limits, admission,
the version of its weights, `predict`, and `change` (weight updates, docs/updates.md).

A front (native HTTP, Open Inference Protocol REST or gRPC) calls `admit` (token, model and
version, readiness: in that order), reads its body, turns it into sequences (feature -> int64
ids, range-checked by `serving.fronts.ids`) and the answers back into its protocol; errors are
`SeqServeError`s, each front renders them in one place.

One version per answer: a request is one batcher item, so all its sequences run in one batch,
and an update commits between two batches (the engine lock), so every row of every answer
comes from one version of the weights.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from serving.core import updates
from serving.core.batching import Batcher, Gone
from serving.core.metrics import Metrics
from serving.engine.base import Answer, Commit, Engine, Ids
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
        self.version = 1  # of the weights served; docs/updates.md counts updates from here
        self.rows = {f: t.num_embeddings for f, t in self.spec.table_of().items()}
        self.metrics = Metrics(
            queue_depth=lambda: self.batcher.queue_depth,
            ranks_ready=lambda: float(self.spec.sharding.world_size if engine.ready else 0),
            version=lambda: float(self.version),
        )
        self._changing = asyncio.Lock()  # one update at a time, from preparing to committing
        # Held by a batch while it computes and by an update while it commits: commits land
        # between two batches. FIFO, so a waiting update goes before the next batch.
        self._engine = asyncio.Lock()
        self._abandoned = False  # the server stopped before the engine was up
        # A request's item: its sequences and their ids, counted once at enqueue.
        self.batcher: Batcher[tuple[list[Ids], int], Predicted] = Batcher(
            self._process, settings.batch, on_batch=self.metrics.on_batch
        )
        self._token = settings.auth_token.encode()
        # Where a full reload may read (resolved once: the rule compares resolved paths).
        self.reload_roots = [
            Path(r).resolve() for r in settings.reload_roots.split(os.pathsep) if r
        ]
        # One thread runs every batch: the engine's per-thread state (torch's thread count)
        # is set once, and batches never overlap.
        self._engine_thread = ThreadPoolExecutor(1, "seqserve-engine")
        self._inline_ids: int = getattr(engine, "inline_ids", 0)

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
        self._engine_thread.shutdown(wait=False)

    async def _process(self, requests: list[tuple[list[Ids], int]]) -> list[Predicted]:
        """One engine batch of every sequence of `requests`, answered per request; its
        phases timed for the statistics (serving/core/stats.py)."""
        started = time.perf_counter_ns()
        flat = requests[0][0] if len(requests) == 1 else [s for r, _ in requests for s in r]
        async with self._engine:
            version = self.version
            if self._inline_ids and sum(n for _, n in requests) <= self._inline_ids:
                answers, began, ended = self._forward(flat)  # on the loop: see Engine
            else:
                loop = asyncio.get_running_loop()
                answers, began, ended = await loop.run_in_executor(
                    self._engine_thread, self._forward, flat
                )
        out, at = [], 0
        for r, _ in requests:
            out.append(Predicted(answers[at : at + len(r)], version))
            at += len(r)
        done = time.perf_counter_ns()
        self.metrics.stats.computed(len(requests), began - started, ended - began, done - ended)
        return out

    def _forward(self, flat: list[Ids]) -> tuple[list[Answer], int, int]:
        """On the engine thread: the answers, and when the engine began and ended."""
        began = time.perf_counter_ns()
        answers = self.engine.forward(flat)
        return answers, began, time.perf_counter_ns()

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

    def admit(self, authorization: str | bytes | None, model: str, version: str = "") -> None:
        """The checks before a request's body is read, in the one order every front uses:
        the token, the model and version named, readiness."""
        self.authorize(authorization)
        self.check_model(model, version)
        self.check_ready()

    def check_model(self, name: str, version: str = "") -> None:
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
        gone: Callable[[], bool] | None = None,
        timeout_s: float | None = None,
    ) -> Predicted | None:
        """Every sequence's rows, in order, all from one version of the weights; None if the
        client left (`gone()` true) before its batch ran: its sequences are never computed.
        The deadline is the server's request timeout, or `timeout_s` if that is sooner."""
        entered = time.perf_counter_ns()
        limit = self.settings.request_timeout_s
        deadline = time.monotonic() + (limit if timeout_s is None else min(limit, timeout_s))
        ids = sum(len(v) for s in sequences for v in s.values())
        ok = False
        try:
            future = self.batcher.enqueue(
                (sequences, ids), ids, deadline, size=len(sequences), gone=gone
            )
            predicted = await future
            ok = True
            return predicted
        except Gone:
            return None
        finally:
            self.metrics.stats.answered(ok, time.perf_counter_ns() - entered)

    def describe(self) -> dict[str, Any]:
        """/models/{model}: the engine's account of its ranks and shards, and the version."""
        return {**self.engine.describe(), "version": self.version}

    # -- weight updates -------------------------------------------------------------------

    async def change(self, body: bytes, kind: str, source: str = "http") -> Changed:
        """Apply a row delta (`kind` "delta": safetensors) or a full reload ("reload": JSON
        naming a path on the server); `kind` from change_kind, checked before the body is read.

        Everything is checked, and a reload loaded beside the served weights, while requests
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
        new = updates.parse_reload(body, self.reload_roots)
        try:
            commit = self.engine.prepare_reload(new)
        except (SpecError, EngineStartError) as e:
            raise BadUpdate(f"reload: {e}; version {self.version} keeps serving") from None
        return sum(t.num_embeddings for t in self.spec.tables), commit
