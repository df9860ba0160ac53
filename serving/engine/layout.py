"""Where every answer column comes from: per key, its dim and the shards that fill it.

Both engines answer `{key: float32 [n_ids, dim_of_key]}`; the layout says, per key, which rank
holds the columns `[start, end)` of its rows. Shards are listed in the table's column order
(shard k holds columns `[k*w, (k+1)*w)`), never in rank order: stitching by rank order gives
wrong rows for plans like `[1, 0, 0]` (the bug class TorchRec's permute-indices fix addressed).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import accumulate
from typing import TypeVar

import numpy as np
import torch

from serving.config import ModelSpec, Shard

Buffer = TypeVar("Buffer", np.ndarray, torch.Tensor)


@dataclass(frozen=True)
class KeyLayout:
    key: str
    table: str
    rows: int  # num_embeddings: ids must be in [0, rows)
    dim: int
    shards: tuple[Shard, ...]  # in column order


@dataclass(frozen=True)
class Layout:
    keys: tuple[str, ...]  # every feature, in spec order: the key order of every batch
    by_key: Mapping[str, KeyLayout]
    dims: tuple[int, ...]  # each key's dim, in key order

    @classmethod
    def of(cls, spec: ModelSpec) -> Layout:
        plan = spec.plan()
        by_key = {
            f: KeyLayout(f, t.name, t.num_embeddings, t.embedding_dim, plan[t.name].shards)
            for t in spec.tables
            for f in t.features
        }
        keys = tuple(spec.features)
        return cls(keys, by_key, tuple(by_key[k].dim for k in keys))

    @property
    def rows(self) -> dict[str, int]:
        return {k: v.rows for k, v in self.by_key.items()}

    def offsets(self, ids_per_key: Sequence[int]) -> list[int]:
        """Start of each key's rows in one flat float32 buffer holding the whole answer, and
        the total size as the last entry (elements, not bytes). Plain ints: it runs per batch
        on a few keys, where numpy's call overhead is most of the cost."""
        return list(
            accumulate((n * d for n, d in zip(ids_per_key, self.dims, strict=True)), initial=0)
        )

    def views(self, flat: Buffer, ids_per_key: Sequence[int]) -> dict[str, Buffer]:
        """Per-key [n, dim] views of a flat buffer (numpy or torch) laid out by `offsets`."""
        edges = self.offsets(ids_per_key)
        return {
            k: flat[edges[i] : edges[i + 1]].reshape(ids_per_key[i], self.dims[i])
            for i, k in enumerate(self.keys)
        }
