"""The messages between a host's front processes and its engine process (docs/workers.md),
as frames (serving/core/channel.py). Torch-free: both sides import it.

A front sends one `PREDICT` per flush (the requests its event loop gathered in one turn): a
header (its deadline and each request's sequence count), the lengths of every sequence's
features as one int32 frame (spec feature order, -1 for a feature the sequence does not name)
and every id as one int64 frame. The engine answers with one `ANSWER`: a header (the version
every row came from, how many of the flush's requests it took, and the error of the others:
QueueFull when the queue had room for only the first few, as it would admit them one by one)
and the rows of the requests it took as one float32 frame, in the same order. Neither side
copies ids or rows into Python objects: the frames are numpy views.

Everything else is a small call: `CALL` (a method name and msgpack arguments) answered by
`RESULT`; and the engine asks every front for its counters with `REPORT` (answered by
`COUNTERS`), so /metrics on any front shows the host's totals.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from serving import errors
from serving.config import ModelSpec
from serving.engine.base import Answer, Ids

PREDICT, ANSWER, CALL, RESULT, REPORT, COUNTERS = b"P", b"A", b"C", b"R", b"Q", b"N"


def endpoint(rundir: str) -> str:
    """The engine's socket, in the host's run folder."""
    return f"{rundir}/engine.sock"


def counters(rundir: str, kind: str, pid: int) -> Path:
    """Where a process of the host stores its counters (serving/core/metrics.py's `stored`)."""
    folder = Path(rundir) / "counters"
    folder.mkdir(exist_ok=True)
    return folder / f"{kind}-{pid}.counters"


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder()


def pack(value: Any) -> bytes:
    return _encoder.encode(value)


def unpack(frame: Any) -> Any:
    return _decoder.decode(frame)


# -- errors: the taxonomy crosses the process boundary by name -------------------------------

_KINDS = {
    k.__name__: k
    for k in vars(errors).values()
    if isinstance(k, type) and issubclass(k, errors.SeqServeError)
}


def error_of(e: BaseException) -> list[str]:
    """An error as [kind, message]; anything outside the taxonomy travels as EngineUnavailable
    (the engine, not the request, failed)."""
    if isinstance(e, errors.SeqServeError):
        return [type(e).__name__, str(e)]
    return ["EngineUnavailable", f"the engine failed: {type(e).__name__}: {e}"]


def raise_error(error: Sequence[str]) -> None:
    kind, message = error
    raise _KINDS.get(kind, errors.EngineUnavailable)(message)


# -- one flush of requests ---------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """Where each feature's ids and rows sit in a flush: the spec's features and widths."""

    features: tuple[str, ...]
    widths: tuple[tuple[str, int], ...]  # (feature, its embedding_dim), in spec order

    @classmethod
    def of(cls, spec: ModelSpec) -> Layout:
        table = spec.table_of()
        features = tuple(spec.features)
        return cls(features, tuple((f, table[f].embedding_dim) for f in features))


def pack_sequences(layout: Layout, sequences: Sequence[Ids]) -> tuple[np.ndarray, bytes]:
    """Every sequence's feature lengths (int32 [n, n_features], -1: not named) and ids."""
    lengths = np.full((len(sequences), len(layout.features)), -1, np.int32)
    parts = []
    index = {f: i for i, f in enumerate(layout.features)}
    for s, seq in enumerate(sequences):
        row = lengths[s]
        for f in layout.features:
            ids = seq.get(f)
            if ids is not None:
                row[index[f]] = len(ids)
                parts.append(ids)
    ids = np.concatenate(parts).astype(np.int64, copy=False) if parts else np.empty(0, np.int64)
    return lengths, ids.tobytes()


def unpack_sequences(layout: Layout, lengths_frame: Any, ids_frame: Any) -> list[Ids]:
    """The engine's side of `pack_sequences`: views of the ids frame, no copy."""
    features = layout.features
    lengths = np.frombuffer(lengths_frame, np.int32).reshape(-1, len(features))
    ids = np.frombuffer(ids_frame, np.int64)
    out: list[Ids] = []
    at = 0
    for row in lengths.tolist():
        seq = {}
        for f, n in zip(features, row, strict=True):
            if n >= 0:
                seq[f] = ids[at : at + n]
                at += n
        out.append(seq)
    return out


def pack_rows(layout: Layout, sequences: Sequence[Ids], answers: Sequence[Answer]) -> bytes:
    """Every answer's rows in flush order (sequence, then spec feature), as one buffer."""
    parts = [a[f].ravel() for seq, a in zip(sequences, answers, strict=True) for f in seq if f in a]
    if not parts:
        return b""
    return np.concatenate(parts).astype(np.float32, copy=False).data  # type: ignore[return-value]


def unpack_rows(layout: Layout, sequences: Sequence[Ids], rows_frame: Any) -> list[Answer]:
    """The front's side of `pack_rows`: each sequence's rows, as views of the one frame, named
    in the order the sequence named its features (the answer's order, as in one process)."""
    rows = np.frombuffer(rows_frame, np.float32)
    widths = layout.widths
    out: list[Answer] = []
    at = 0
    for seq in sequences:
        views = {}
        for f, d in widths:  # the order the engine packed them
            ids = seq.get(f)
            if ids is not None:
                end = at + len(ids) * d
                views[f] = rows[at:end].reshape(-1, d)
                at = end
        out.append(
            views if len(views) < 2 or list(views) == list(seq) else {f: views[f] for f in seq}
        )
    return out
