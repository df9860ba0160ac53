"""The test oracle: an unsharded EmbeddingCollection holding the same weights."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torchrec import KeyedJaggedTensor

from serving.config import ModelSpec
from serving.engine import model


def expected(
    spec: ModelSpec,
    tables: Mapping[str, torch.Tensor],
    requests: Sequence[Mapping[str, np.ndarray]],
) -> list[dict[str, torch.Tensor]]:
    """Rows per request from the unsharded model, one request at a time (no shared collate)."""
    ec = model.unsharded(spec, tables)
    keys = spec.features
    out = []
    for req in requests:
        ids = [torch.as_tensor(req.get(k, np.zeros(0)), dtype=torch.int64) for k in keys]
        kjt = KeyedJaggedTensor(
            keys=keys,
            values=torch.cat(ids),
            lengths=torch.tensor([len(i) for i in ids], dtype=torch.int32),
        )
        with torch.no_grad():
            jts = ec(kjt)
        out.append({k: jts[k].values() for k in req})
    return out


def assert_exact(
    spec: ModelSpec,
    tables: Mapping[str, torch.Tensor],
    requests: Sequence[Mapping[str, np.ndarray]],
    answers: Sequence[Mapping[str, np.ndarray]],
) -> None:
    assert len(answers) == len(requests)
    for i, (want, got) in enumerate(zip(expected(spec, tables, requests), answers, strict=True)):
        assert set(got) == set(want), f"request {i}: features {set(got)} != {set(want)}"
        for k, rows in want.items():
            assert got[k].dtype == np.float32
            assert got[k].shape == (len(requests[i][k]), spec.table_of()[k].embedding_dim)
            assert torch.equal(torch.from_numpy(np.ascontiguousarray(got[k])), rows), (
                f"request {i} feature {k}: rows differ"
            )
