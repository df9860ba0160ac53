"""Sequences -> one key-major KeyedJaggedTensor layout (pure numpy, no torch).

Collate trusts its input: every id reaching an engine has been checked against its table by
the front that decoded it, and every feature named is one of the model's. Its cost is per batch
and per array, not per id: one pass to gather every sequence's array in key-major order, one
to read their lengths, and one concatenation of their bytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from itertools import chain
from operator import itemgetter

import numpy as np

from serving.engine.base import Ids

EMPTY = np.zeros(0, dtype=np.int64)


@dataclass(frozen=True)
class Batch:
    keys: tuple[str, ...]
    lengths: np.ndarray  # int32 [len(keys) * stride], key-major: all requests of key 0 first
    values: np.ndarray  # int64 [sum(lengths)]
    stride: int  # number of requests
    every_key: bool = False  # every request names every key (split need not ask which)

    def lengths_by_key(self) -> np.ndarray:
        return self.lengths.reshape(len(self.keys), self.stride)

    def ids_per_key(self) -> np.ndarray:
        return self.lengths_by_key().sum(axis=1)

    @cached_property
    def offsets(self) -> np.ndarray:
        """int64 [len(keys), stride + 1]: where each request's ids of a key start among that
        key's ids, and their count as the last column (computed once per batch)."""
        out = np.zeros((len(self.keys), self.stride + 1), dtype=np.int64)
        np.cumsum(self.lengths_by_key(), axis=1, out=out[:, 1:])
        return out


def collate(requests: Sequence[Ids], keys: Sequence[str]) -> Batch:
    """Pack requests into one batch, keys in the given order."""
    keys = tuple(keys)
    stride = len(requests)
    try:
        # Every request names every key (the common case): one C-level call per request.
        get = itemgetter(*keys) if len(keys) > 1 else (lambda r: (r[keys[0]],))
        chunks = list(chain.from_iterable(zip(*map(get, requests), strict=True)))
        every_key = True
    except KeyError:
        chunks = [r.get(k, EMPTY) for k in keys for r in requests]
        every_key = False
    lengths = np.fromiter(map(len, chunks), dtype=np.int32, count=len(chunks))
    return Batch(keys, lengths, _concatenate(chunks, int(lengths.sum())), stride, every_key)


def _concatenate(chunks: list[np.ndarray], total: int) -> np.ndarray:
    """int64 arrays -> one, through their bytes: ~3x numpy's concatenate on many short arrays.
    Anything else (a list, a narrower dtype, a strided view) takes numpy's way."""
    if total == 0:
        return EMPTY
    try:
        joined = bytearray().join(chunks)  # type: ignore[arg-type]
    except (TypeError, ValueError, BufferError):
        joined = bytearray()
    if len(joined) == 8 * total:
        return np.frombuffer(joined, dtype=np.int64)
    return np.concatenate(chunks).astype(np.int64, copy=False)


def slices(requests: Sequence[Ids], parts: int) -> list[slice]:
    """Cut requests into at most `parts` contiguous runs of about equal id counts."""
    if not requests:
        return []
    sizes = np.array([sum(len(v) for v in r.values()) + 1 for r in requests], dtype=np.int64)
    cum = np.cumsum(sizes)
    targets = cum[-1] * np.arange(1, parts) / parts
    cuts = np.abs(cum[None, :] - targets[:, None]).argmin(axis=1) + 1
    bounds = [0, *sorted(set(int(c) for c in cuts if 0 < c < len(requests))), len(requests)]
    return [slice(a, b) for a, b in zip(bounds, bounds[1:], strict=False)]
