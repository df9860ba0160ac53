"""The boundary every engine honours (torch-free: the fronts and the core see only this).

`local`: one process drives every rank's FBGEMM kernels, no collective on the request path.
`distributed`: TorchRec DistributedModelParallel rank processes (gloo or NCCL); the path to
tables bigger than one host.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from serving.config import EngineKind, ModelSpec, WeightsSpec

# One sequence, the unit every layer names the same: feature -> its int64 ids (range-checked by
# the fronts; a feature it does not name is an empty sequence of that feature).
Ids = Mapping[str, np.ndarray]
Answer = dict[str, np.ndarray]  # one sequence's rows: feature -> float32 [n_ids, dim]


@dataclass(frozen=True)
class TableRows:
    ids: np.ndarray  # int64 [k], unique, in [0, num_embeddings)
    rows: np.ndarray  # float32 [k, embedding_dim]


Delta = dict[str, TableRows]  # table name -> its new rows


# A prepared change of the weights, run between two batches: quick, and all or nothing.
Commit = Callable[[], None]


class Engine(Protocol):
    spec: ModelSpec
    kind: EngineKind
    last_timings: dict[str, float]  # stage times of the last batch (seconds), for benchmarks
    # Batches of at most this many ids are computed on the caller's thread (the event loop):
    # for them the hand-off to a thread costs more than the lookup. 0: always hand off.
    inline_ids: int

    @property
    def ready(self) -> bool: ...

    def start(self) -> None: ...

    def forward(self, requests: Sequence[Ids]) -> list[Answer]:
        """Rows for each request: {feature: float32 [n_ids, dim]} for every feature it names."""
        ...

    def describe(self) -> dict[str, Any]:
        """The engine and where each shard lives, for /models/{model}."""
        ...

    def prepare_update(self, delta: Delta) -> Commit:
        """Ready `delta`'s rows (encoded in each table's dtype); the commit writes them into
        every rank's shards. The caller runs the commit when no batch is in flight."""
        ...

    def prepare_reload(self, weights: WeightsSpec) -> Commit:
        """Load `weights` beside the served ones while those keep serving (SpecError or
        EngineStartError if they cannot be loaded; nothing changes then); the commit swaps
        them in."""
        ...

    def close(self) -> None: ...
