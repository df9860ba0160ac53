"""Per-feature outputs of one batch -> per-request arrays (pure numpy)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from serving.engine.collate import Batch, Request


def split(
    batch: Batch, outputs: Mapping[str, np.ndarray], requests: Sequence[Request]
) -> list[dict[str, np.ndarray]]:
    """`outputs[key]` holds the rows of every id of `key`, request-major as collated.

    Each request gets the features it named, as views into `outputs`, in request order.
    """
    lengths = batch.lengths_by_key()
    answers: list[dict[str, np.ndarray]] = [{} for _ in requests]
    for k, key in enumerate(batch.keys):
        starts = np.concatenate([[0], np.cumsum(lengths[k])])
        rows = outputs[key]
        for i, req in enumerate(requests):
            if key in req:
                answers[i][key] = rows[starts[i] : starts[i + 1]]
    return answers
