"""A burst well above capacity: fast 503s with Retry-After, never a 500, accepted answers exact."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.http.server import Server, same_bits

pytestmark = pytest.mark.slow

BURST = 400


def test_a_burst_gets_quick_503s_and_the_server_recovers(model_path: Path) -> None:
    # A queue of one request (4 sequences), so a burst of 400 of them from 64 clients is far
    # above capacity however fast the server answers.
    s = Server(model_path, "--max-queue", "4", "--max-batch-size", "4")
    try:
        s.wait_ready()
        rng = np.random.default_rng(2)
        bodies = [
            {"instances": [{"features": {"item_id": rng.integers(0, 5000, 30).tolist()}}] * 4}
            for _ in range(BURST)
        ]

        def post(body: dict) -> tuple[httpx.Response, float]:
            t0 = time.perf_counter()
            with httpx.Client(base_url=s.url, timeout=60) as c:
                r = c.post("/predictions/small", json=body)
            return r, time.perf_counter() - t0

        with ThreadPoolExecutor(64) as pool:
            results = list(pool.map(post, bodies))
        statuses = [r.status_code for r, _ in results]
        assert set(statuses) <= {200, 503}, f"unexpected statuses {sorted(set(statuses))}"
        refused = [(r, t) for r, t in results if r.status_code == 503]
        assert refused, "the burst never filled the queue"
        for r, took in refused:
            assert r.headers["Retry-After"] == "1" and r.json()["type"] == "QueueFull"
            assert took < 5, f"a 503 took {took:.1f}s: refusals must be fast"
        for body, (r, _) in zip(bodies, results, strict=True):
            if r.status_code == 200:
                ids = body["instances"][0]["features"]["item_id"]
                for p in r.json()["predictions"]:
                    assert same_bits(np.asarray(p["embeddings"]["item_id"]), s.rows("item_id", ids))
        # After the burst: healthy, and the next request is served.
        assert s.client.get("/ping").status_code == 200
        r = s.client.post("/predictions/small", json={"features": {"shop_id": [3]}})
        assert r.status_code == 200
        assert s.metric("seqserve_queue_depth") == 0
    finally:
        s.close()
