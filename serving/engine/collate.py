"""Requests -> one key-major KeyedJaggedTensor layout (pure numpy, no torch).

Every batch goes through `collate`, whichever front built it, so the id-range check here is
the last gate before a lookup: an out-of-range id never reaches FBGEMM.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from serving.errors import InvalidInput

# One request: feature name -> int64 ids. Features it does not name are empty sequences.
Request = Mapping[str, np.ndarray]


@dataclass(frozen=True)
class Batch:
    keys: tuple[str, ...]
    lengths: np.ndarray  # int32 [len(keys) * stride], key-major: all requests of key 0 first
    values: np.ndarray  # int64 [sum(lengths)]
    stride: int  # number of requests

    def lengths_by_key(self) -> np.ndarray:
        return self.lengths.reshape(len(self.keys), self.stride)

    def ids_per_key(self) -> np.ndarray:
        return self.lengths_by_key().sum(axis=1)


def collate(requests: Sequence[Request], keys: Sequence[str], rows: Mapping[str, int]) -> Batch:
    """Pack requests into one batch; `rows[f]` is the table size of feature f."""
    stride = len(requests)
    empty = np.zeros(0, dtype=np.int64)
    lengths = np.zeros((len(keys), stride), dtype=np.int32)
    chunks: list[np.ndarray] = []
    for k, key in enumerate(keys):
        column = [req.get(key, empty) for req in requests]
        lengths[k] = [len(ids) for ids in column]
        chunks.extend(column)
    for i, req in enumerate(requests):
        unknown = set(req) - set(keys)
        if unknown:
            raise InvalidInput(f"request {i}: unknown feature '{sorted(unknown)[0]}'")
    values = np.concatenate(chunks).astype(np.int64, copy=False) if chunks else empty
    batch = Batch(tuple(keys), lengths.reshape(-1), values, stride)
    check_ranges(batch, rows)
    return batch


def check_ranges(batch: Batch, rows: Mapping[str, int]) -> None:
    """Refuse any id outside [0, rows) with the feature, request and position that hold it."""
    offsets = np.concatenate([[0], np.cumsum(batch.ids_per_key())])
    for k, key in enumerate(batch.keys):
        ids = batch.values[offsets[k] : offsets[k + 1]]
        if ids.size == 0:
            continue
        bad = (ids < 0) | (ids >= rows[key])
        if not bad.any():
            continue
        first = int(np.argmax(bad))
        starts = np.concatenate([[0], np.cumsum(batch.lengths_by_key()[k])])
        req = int(np.searchsorted(starts, first, side="right") - 1)
        pos = first - int(starts[req])
        raise InvalidInput(
            f"features.{key}[{pos}]: id {int(ids[first])} is outside [0, {rows[key]})"
            + (f" (request {req})" if batch.stride > 1 else ""),
            field=f"features.{key}",
            position=pos,
        )


def slices(requests: Sequence[Request], parts: int) -> list[slice]:
    """Cut requests into at most `parts` contiguous runs of about equal id counts."""
    if not requests:
        return []
    sizes = np.array([sum(len(v) for v in r.values()) + 1 for r in requests], dtype=np.int64)
    cum = np.cumsum(sizes)
    targets = cum[-1] * np.arange(1, parts) / parts
    cuts = np.abs(cum[None, :] - targets[:, None]).argmin(axis=1) + 1
    bounds = [0, *sorted(set(int(c) for c in cuts if 0 < c < len(requests))), len(requests)]
    return [slice(a, b) for a, b in zip(bounds, bounds[1:], strict=False)]
