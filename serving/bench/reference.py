"""In-process reference lines for the HTTP figures, on the same requests as the servers see.

(a) the unsharded EmbeddingCollection (serving.engine.model.unsharded): collate + KJT +
    forward on batches of `batch` requests, on `threads` threads (1 by default; 0: torch's
    default): what one process does with no sharding, no HTTP and no codec. On a shared
    2-core box two threads are a poor default: with the other core busy, torch's parallel
    regions wait for a descheduled thread and the rate fell 10-50x (0.1-1.5 M ids/s against
    5.5 M on one thread, same run); one thread gives a steady figure.
(b) the sharded engine with no HTTP: the spec's engine (serving.engine.factory.create, local by
    default) on the same batches, collate and split included: what the sharded forward costs
    before any front adds its own.
(c) one core's raw row gather: torch.set_num_threads(1), torch.index_select on a float32
    table shaped like the model's largest, with the ids that table's features get in the mix.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torchrec import KeyedJaggedTensor

from serving.config import ModelSpec
from serving.engine.base import Ids
from serving.engine.collate import Batch, collate
from serving.engine.model import unsharded
from serving.engine.quiet import quiet_torch_logs


def unsharded_rows(
    ec: torch.nn.Module,
    keys: Sequence[str],
    requests: Sequence[Ids],
    device: torch.device | None = None,
) -> tuple[Batch, dict[str, torch.Tensor]]:
    """The unsharded model's rows for one collated batch: the in-process reference path."""
    b = collate(requests, keys)
    kjt = KeyedJaggedTensor(
        keys=list(b.keys), values=torch.from_numpy(b.values), lengths=torch.from_numpy(b.lengths)
    )
    if device is not None and device.type != "cpu":
        kjt = kjt.to(device)
    with torch.no_grad():
        out = ec(kjt)
    return b, {k: out[k].values() for k in b.keys}


def batches(requests: Sequence[Ids], size: int) -> list[Sequence[Ids]]:
    return [requests[i : i + size] for i in range(0, len(requests), size)] or [[]]


@contextmanager
def torch_threads(n: int) -> Iterator[int]:
    """Run the block on `n` torch threads (0: leave torch's setting); yields the count."""
    before = torch.get_num_threads()
    if n > 0:
        torch.set_num_threads(n)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def _rate(
    step: Callable[[int], int], count: int, seconds: float, batch: int, threads: int
) -> dict[str, Any]:
    """Call step(k) over k = 0, 1, ... (cycling through `count`) for at least `seconds` and
    at least `count` calls, after one unmeasured call: a reference line's figures."""
    step(0)
    ids = calls = 0
    t0 = time.perf_counter()
    while (elapsed := time.perf_counter() - t0) < seconds or calls < count:
        ids += step(calls % count)
        calls += 1
    return {
        "ids_s": ids / elapsed if elapsed > 0 else 0.0,
        "batches": calls,
        "seconds": elapsed,
        "batch_requests": batch,
        "threads": threads,
    }


def unsharded_rate(
    spec: ModelSpec,
    tables: Mapping[str, torch.Tensor],
    requests: Sequence[Ids],
    batch: int,
    seconds: float,
    threads: int = 1,
) -> dict[str, Any]:
    quiet_torch_logs()
    ec = unsharded(spec, tables)
    groups = batches(requests, batch)

    def step(k: int) -> int:
        _, out = unsharded_rows(ec, spec.features, groups[k])
        return sum(int(v.shape[0]) for v in out.values())

    with torch_threads(threads) as used:
        figures = _rate(step, len(groups), seconds, batch, used)
    return {
        "name": f"unsharded EmbeddingCollection, {used} thread{'s' if used > 1 else ''}",
        "what": f"collate + KJT + forward, {batch} requests a batch, in process",
        **figures,
    }


def sharded_rate(
    spec: ModelSpec, requests: Sequence[Ids], batch: int, seconds: float
) -> dict[str, Any]:
    from serving.engine.factory import create

    engine = create(spec)
    engine.start()
    groups = batches(requests, batch)

    def step(k: int) -> int:
        return sum(int(v.shape[0]) for a in engine.forward(groups[k]) for v in a.values())

    try:
        figures = _rate(step, len(groups), seconds, batch, torch.get_num_threads())
    finally:
        engine.close()
    world = spec.sharding.world_size
    return {
        "name": f"{engine.kind} engine, {world} rank{'s' if world > 1 else ''}",
        "what": f"collate + sharded forward + split, {batch} requests a batch, no HTTP",
        **figures,
    }


def gather_rate(
    spec: ModelSpec,
    tables: Mapping[str, torch.Tensor],
    requests: Sequence[Ids],
    batch: int,
    seconds: float,
) -> dict[str, Any]:
    largest = max(spec.tables, key=lambda t: t.num_embeddings * t.embedding_dim)
    table = tables[largest.name].to(torch.float32).contiguous()
    groups = [
        torch.from_numpy(np.concatenate([np.zeros(0, np.int64)] + ids).astype(np.int64))
        for g in batches(requests, batch)
        if (ids := [r[f] for r in g for f in largest.features if f in r])
    ] or [torch.zeros(1, dtype=torch.int64)]

    def step(k: int) -> int:
        torch.index_select(table, 0, groups[k])
        return int(groups[k].shape[0])

    with torch_threads(1):
        figures = _rate(step, len(groups), seconds, batch, 1)
    return {
        "name": "index_select, 1 core",
        "what": (
            f"torch.index_select on float32 [{largest.num_embeddings}, {largest.embedding_dim}]"
            f" ('{largest.name}'), its features' ids, {batch} requests a batch"
        ),
        **figures,
    }


def measure(
    spec: ModelSpec,
    tables: Mapping[str, torch.Tensor],
    requests: Sequence[Ids],
    batch: int,
    seconds: float,
    threads: int = 1,
) -> list[dict[str, Any]]:
    return [
        unsharded_rate(spec, tables, requests, batch, seconds, threads),
        sharded_rate(spec, requests, batch, seconds),
        gather_rate(spec, tables, requests, batch, seconds),
    ]
