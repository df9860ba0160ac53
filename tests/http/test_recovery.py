"""A rank killed under a real server: 503s while the group restarts by itself, then exact again.

Ranks are processes in the distributed engine only; the local engine runs every rank's
kernels in the server's own process, so there is no rank to lose (see README, Engines).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.http.server import Server, same_bits
from tests.procs import alive, rank_pids

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(model_path: Path) -> Iterator[Server]:
    s = Server(model_path, "--engine", "distributed")
    try:
        s.wait_ready()
        yield s
    finally:
        s.close()


REQUEST = {"item_id": [3, 17, 17, 0, 4999], "category_id": [5, 49], "shop_id": [29]}


def assert_exact(server: Server) -> None:
    r = server.client.post("/predictions/small", json={"features": REQUEST})
    assert r.status_code == 200, r.text
    got = r.json()["embeddings"]
    for f, ids in REQUEST.items():
        assert same_bits(np.asarray(got[f], dtype=np.float32), server.rows(f, ids)), f


def ping_until(server: Server, status: int, timeout: float) -> None:
    end = time.monotonic() + timeout
    while (got := server.client.get("/ping").status_code) != status:
        assert time.monotonic() < end, f"/ping still {got} after {timeout}s: {server.output()}"
        time.sleep(0.02)


def recovered(server: Server, old: list[int]) -> None:
    server.wait_ready(timeout=60)
    new = rank_pids(server.proc.pid)
    assert len(new) == 2 and not set(new) & set(old), (old, new)
    assert not any(alive(p) for p in old), f"ranks {old} of the failed group still run"
    assert_exact(server)


def test_killed_rank_ping_turns_503_then_200_and_answers_are_exact(server: Server) -> None:
    server.wait_ready()
    assert_exact(server)
    old = rank_pids(server.proc.pid)
    assert len(old) == 2, old
    os.kill(old[1], signal.SIGKILL)
    ping_until(server, 503, timeout=10)
    r = server.client.post("/predictions/small", json={"features": REQUEST})
    assert r.status_code == 503 and r.json()["type"] == "EngineUnavailable", r.text
    assert "Retry-After" in r.headers
    recovered(server, old)


def test_request_in_flight_when_its_rank_dies_gets_503(server: Server) -> None:
    server.wait_ready()
    old = rank_pids(server.proc.pid)
    assert len(old) == 2, old
    # Stopped, rank 1 cannot answer: the batch waits in the engine, the other rank in the
    # collective. Killing it then is a rank dying under a batch in flight.
    os.kill(old[1], signal.SIGSTOP)
    try:

        def post() -> httpx.Response:
            with httpx.Client(base_url=server.url, timeout=30) as c:
                return c.post("/predictions/small", json={"features": REQUEST})

        with ThreadPoolExecutor(1) as pool:
            future = pool.submit(post)
            # Batches close after 2 ms; a request still pending after a second is in the
            # engine. Were it not, the answer would be the same 503 (from the ready check).
            time.sleep(1.0)
            assert not future.done(), future.result().text
            os.kill(old[1], signal.SIGKILL)
            killed = time.monotonic()
            r = future.result(timeout=30)
            took = time.monotonic() - killed
    finally:
        if alive(old[1]):
            os.kill(old[1], signal.SIGKILL)
    assert r.status_code == 503, r.text
    assert r.json()["type"] == "EngineUnavailable" and "Retry-After" in r.headers, r.text
    assert took < 5, f"answered {took:.1f}s after the kill"
    recovered(server, old)
