"""Per-feature outputs of one batch -> per-request arrays (pure numpy).

Every answer is a view of the batch's output buffers: split makes one numpy view per (request,
feature) and one dict per request, from offsets computed once per key, with no copy.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from serving.engine.collate import Batch, Request

# A run of consecutive requests ending before request `end`, and its rows: outputs[key] holds
# the rows of every id of `key` of those requests, request-major as collated.
Part = tuple[int, Mapping[str, np.ndarray]]


def split(
    batch: Batch, outputs: Mapping[str, np.ndarray], requests: Sequence[Request]
) -> list[dict[str, np.ndarray]]:
    """`outputs[key]` holds the rows of every id of `key`, request-major as collated.

    Each request gets the features it named, as views into `outputs`, in request order.
    """
    return split_parts(batch, [(batch.stride, outputs)], requests)


def split_parts(
    batch: Batch, parts: Iterable[Part], requests: Sequence[Request]
) -> list[dict[str, np.ndarray]]:
    """As `split`, with the batch's rows in parts of consecutive requests, in order."""
    offsets = batch.offsets
    keys = batch.keys
    answers: list[dict[str, np.ndarray]] = []
    start = 0
    for end, outputs in parts:
        views = []
        for k, key in enumerate(keys):
            edges = offsets[k, start : end + 1]
            at = (edges - edges[0]).tolist()
            views.append(list(map(outputs[key].__getitem__, map(slice, at, at[1:]))))
        # zip without strict: its end-of-input check costs ~40% of building the dicts.
        if batch.every_key:
            answers.extend(dict(zip(keys, row, strict=False)) for row in zip(*views, strict=False))
        else:
            answers.extend(
                {k: v for k, v in zip(keys, row, strict=False) if k in req}
                for row, req in zip(zip(*views, strict=False), requests[start:end], strict=False)
            )
        start = end
    return answers
