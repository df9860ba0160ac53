"""A front's host (serving/core/remote.py) over an engine process's server
(serving/core/engine_server.py), both on one event loop here, on a real Unix socket, over a
fake engine: the queue bound admits a flush's requests as it would admit them one by one."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from serving.core.engine_server import EngineServer
from serving.core.remote import RemoteService
from serving.core.service import Service
from serving.errors import QueueFull
from serving.settings import defaults
from tests.unit.test_service import SPEC, Engine

WIDTH = SPEC.table_of()["item_id"].embedding_dim


class WideEngine(Engine):
    """The fake engine's answers as wide as the demo's rows: they cross the wire."""

    def forward(self, requests: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
        return [{f: np.ones((len(v), WIDTH), np.float32) for f, v in r.items()} for r in requests]


def seq(n: int) -> dict[str, np.ndarray]:
    return {"item_id": np.arange(n, dtype=np.int64)}


async def _flush_of(sizes: list[int], max_queue: int, rundir: Path) -> list[object]:
    """Every request's outcome when one flush carries requests of `sizes` sequences."""
    settings = defaults(max_queue=max_queue)
    service = Service(settings, WideEngine())  # type: ignore[arg-type]
    await service.start()
    server = EngineServer(service, str(rundir))
    await server.start()
    front = RemoteService(settings, SPEC, str(rundir), 0)
    try:
        await front.start()
        assert front.ready
        # One loop turn: the front sends them as one message.
        calls = [front.predict([seq(2)] * n) for n in sizes]
        return await asyncio.gather(*calls, return_exceptions=True)
    finally:
        await front.stop()
        server.close()
        await service.stop()


@pytest.mark.parametrize(
    ("sizes", "taken"),
    [
        ([1, 1, 1, 1, 1], 3),  # a flush bigger than the bound: the first three, not none
        ([1, 2, 1, 1], 2),  # the third would make 4: it and every later one are refused
        ([3], 1),
        ([4, 1], 0),  # the first does not fit: refused whole, as it would be alone
    ],
)
def test_a_flush_beyond_the_queue_bound_takes_what_fits_in_order(
    tmp_path: Path, sizes: list[int], taken: int
) -> None:
    outcomes = asyncio.run(_flush_of(sizes, 3, tmp_path))
    for i, (n, outcome) in enumerate(zip(sizes, outcomes, strict=True)):
        if i < taken:
            assert not isinstance(outcome, BaseException), outcome
            answers = outcome.answers  # type: ignore[attr-defined]
            assert len(answers) == n
            ones = np.ones((2, WIDTH), np.float32)
            assert all(np.array_equal(a["item_id"], ones) for a in answers)
        else:
            assert isinstance(outcome, QueueFull), outcome
            assert "3 sequences waiting" in str(outcome)
