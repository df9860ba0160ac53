"""The boundary every engine honours, and the choice between them.

`local`: one process drives every rank's FBGEMM kernels, no collective on the request path.
`distributed`: TorchRec DistributedModelParallel rank processes (gloo or NCCL); the path to
tables bigger than one host.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np
import torch

from serving.collate import Request
from serving.config import EngineKind, ModelSpec, WeightsSpec
from serving.errors import SpecError
from serving.updates import Delta

Answer = dict[str, np.ndarray]  # feature -> float32 [n_ids, dim]
# A prepared change of the weights, run between two batches: quick, and all or nothing.
Commit = Callable[[], None]


class Engine(Protocol):
    spec: ModelSpec
    kind: EngineKind
    last_timings: dict[str, float]  # stage times of the last batch (seconds), for benchmarks

    @property
    def ready(self) -> bool: ...

    def start(self) -> None: ...

    def forward(self, requests: Sequence[Request]) -> list[Answer]:
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


def gpu_count() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def default_device() -> str:
    return "cuda" if gpu_count() else "cpu"


def create(
    spec: ModelSpec,
    kind: str = "",
    *,
    device: str | None = None,
    dispatch: str = "split",
    batch_timeout: float = 60.0,
    nnodes: int = 1,
    master: tuple[str, int] = ("127.0.0.1", 0),
    cluster_key: str = "",
) -> Engine:
    """The engine the spec asks for (`sharding.engine`), unless `kind` overrides it. The
    other settings concern the distributed engine's rank processes, `nnodes` > 1 spreading
    them over hosts whose workers join at `master`."""
    kind = kind or spec.sharding.engine
    if kind == "distributed":
        from serving.engine.distributed.driver import DistributedEngine

        return DistributedEngine(
            spec,
            device=device,
            dispatch=dispatch,  # type: ignore[arg-type]
            batch_timeout=batch_timeout,
            nnodes=nnodes,
            master=master,
            cluster_key=cluster_key.encode(),
        )
    if nnodes > 1:
        raise SpecError(f"--nnodes {nnodes} needs the distributed engine (--engine distributed)")
    from serving.engine.local.engine import LocalEngine

    return LocalEngine(spec, device=device)
