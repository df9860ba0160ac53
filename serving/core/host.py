"""What every front (native HTTP, Open Inference Protocol REST and gRPC) asks of the host it
serves: the model and its limits, admission, the version of its weights, `predict`, `change`
(weight updates, docs/updates.md), its account of itself and its counters.

Two hosts honour it: `serving.core.service.Service`, where the engine runs in the front's own
process (`--workers 1`), and `serving.core.remote.RemoteService`, a front process's view of the
host's engine process (`--workers N`). A front calls `admit` (token, model and version,
readiness: in that order), reads its body, turns it into sequences (feature -> int64 ids,
range-checked by `serving.fronts.ids`) and the answers back into its protocol; errors are
`SeqServeError`s, each front renders them in one place.
"""

from __future__ import annotations

import hmac
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from serving.config import ModelSpec
from serving.core.metrics import Metrics, Snapshot
from serving.engine.base import Answer, Ids
from serving.errors import (
    EngineUnavailable,
    Unauthorized,
    UnknownModel,
    UnsupportedMediaType,
    UpdatesDisabled,
)
from serving.settings import ServerSettings

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


@dataclass(frozen=True)
class Totals:
    """The host's counters (every process's, added) and the engine's gauges."""

    snapshot: Snapshot
    gauges: dict[str, float]


class Host(ABC):
    settings: ServerSettings
    spec: ModelSpec
    metrics: Metrics  # this process's own counters
    version: int  # of the weights served, as last known here
    # Whether the server listens only once `start` returns (else at once, answering 503 until
    # the engine is ready).
    listen_after_start: bool = False

    def __init__(self, settings: ServerSettings, spec: ModelSpec):
        self.settings = settings
        self.limits = settings.limits
        self.spec = spec
        self.rows = {f: t.num_embeddings for f, t in spec.table_of().items()}
        self.metrics = Metrics()
        self.version = 1  # docs/updates.md counts updates from here
        self._token = settings.auth_token.encode()

    # -- lifecycle ------------------------------------------------------------------------

    @abstractmethod
    async def start(
        self,
        on_ready: Callable[[], None] | None = None,
        on_fatal: Callable[[BaseException], None] | None = None,
    ) -> None: ...

    @abstractmethod
    async def abandon_start(self) -> None:
        """The server stops while the engine starts."""

    @abstractmethod
    async def stop(self) -> None: ...

    @property
    @abstractmethod
    def ready(self) -> bool: ...

    # -- checks every front makes, in this order ------------------------------------------

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
        if not self.ready:
            raise EngineUnavailable("the model is not ready: ranks are starting or restarting")

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

    # -- the work -------------------------------------------------------------------------

    @abstractmethod
    async def predict(
        self,
        sequences: list[Ids],
        gone: Callable[[], bool] | None = None,
        timeout_s: float | None = None,
    ) -> Predicted | None:
        """Every sequence's rows, in order, all from one version of the weights; None if the
        client left (`gone()` true) before its batch ran: its sequences are never computed.
        The deadline is the server's request timeout, or `timeout_s` if that is sooner."""

    @abstractmethod
    async def change(self, body: bytes, kind: str, source: str = "http") -> Changed:
        """Apply a row delta (`kind` "delta": safetensors) or a full reload ("reload": JSON
        naming a path on the server); `kind` from change_kind, checked before the body is
        read. A rejected update (BadUpdate, 400) changes nothing."""

    @abstractmethod
    async def describe(self) -> dict[str, Any]:
        """/models/{model}: the engine's account of its ranks and shards, the version and the
        host's processes."""

    @abstractmethod
    async def totals(self) -> Totals:
        """The host's counters, for /metrics and the v2 statistics."""
