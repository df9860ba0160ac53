"""The one error taxonomy. Each front maps these kinds to statuses in one place."""

from __future__ import annotations


class SeqServeError(Exception):
    """Base of every error seqserve raises on purpose."""


class SpecError(SeqServeError):
    """The model spec or its weights break a rule; the message names the table and the rule."""


class InvalidInput(SeqServeError):
    """A request is malformed; the message names the field and the position."""

    def __init__(self, message: str, field: str | None = None, position: int | None = None):
        super().__init__(message)
        self.field = field
        self.position = position


class EngineStartError(SeqServeError):
    """A rank failed to start; the message carries that rank's traceback."""


class EngineUnavailable(SeqServeError):
    """The rank group is not serving (not started, died, or timed out)."""


class PayloadTooLarge(SeqServeError):
    """A body, an id count or an instance count is over its limit."""


class UnsupportedMediaType(SeqServeError):
    """A content type other than JSON or msgpack."""


class Unauthorized(SeqServeError):
    """A bearer token is required and was missing or wrong."""


class UnknownModel(SeqServeError):
    """No model of that name is served here."""


class QueueFull(SeqServeError):
    """Admission control: the batch queue is at its bound (503 with --retry-after-s)."""


class BadUpdate(SeqServeError):
    """A weight update that cannot be applied; nothing changed. The message says why."""


class UpdatesDisabled(SeqServeError):
    """Weight updates are off: the server was not started with --allow-updates."""


class SharedMemoryDisabled(SeqServeError):
    """Triton's system shared memory is off: the server was not started with
    --allow-shared-memory."""


class NotSupported(SeqServeError):
    """A protocol operation this server does not offer (loading or unloading models): 400 on
    REST, UNIMPLEMENTED on gRPC; the message names what is supported instead."""


class DeadlineExceeded(SeqServeError):
    """A request waited past its deadline; it was not computed."""


# The HTTP status of each kind, the same for both fronts (FastAPI and the TorchServe handler):
# they honour one contract.
HTTP_STATUS: dict[type[SeqServeError], int] = {
    InvalidInput: 400,
    BadUpdate: 400,
    NotSupported: 400,
    Unauthorized: 401,
    UpdatesDisabled: 403,
    SharedMemoryDisabled: 403,
    UnknownModel: 404,
    PayloadTooLarge: 413,
    UnsupportedMediaType: 415,
    QueueFull: 503,
    EngineUnavailable: 503,
    EngineStartError: 503,
    DeadlineExceeded: 504,
}


def http_status(error: SeqServeError) -> int:
    for kind in type(error).__mro__:
        if kind in HTTP_STATUS:
            return HTTP_STATUS[kind]
    return 500
