"""Concurrent requests share batches; a bad one among them leaves the others exact."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.http.server import Server, same_bits

pytestmark = pytest.mark.slow

N = 32


def test_concurrent_requests_are_batched_and_a_bad_one_fails_alone(model_path: Path) -> None:
    # A 50 ms window from the oldest request of a batch: the 32 requests meet in few batches.
    s = Server(model_path, "--max-delay-ms", "50", "--max-gap-ms", "50")
    try:
        s.wait_ready()
        before = s.metric("seqserve_batch_sequences_count")
        rng = np.random.default_rng(0)
        bodies = [{"features": {"item_id": rng.integers(0, 5000, 7).tolist()}} for _ in range(N)]
        bodies[N // 2] = {"features": {"item_id": [1, 2, 5000]}}  # out of range

        def post(body: dict) -> httpx.Response:
            with httpx.Client(base_url=s.url, timeout=30) as c:
                return c.post("/predictions/small", json=body)

        with ThreadPoolExecutor(N) as pool:
            responses = list(pool.map(post, bodies))
        batches = s.metric("seqserve_batch_sequences_count") - before
        assert 1 <= batches < N - 1, f"{N - 1} good requests took {batches} batches"
        for i, (body, r) in enumerate(zip(bodies, responses, strict=True)):
            if i == N // 2:
                assert r.status_code == 400 and "features.item_id[2]" in r.json()["message"]
                continue
            assert r.status_code == 200, r.text
            ids = body["features"]["item_id"]
            assert same_bits(np.asarray(r.json()["embeddings"]["item_id"]), s.rows("item_id", ids))
    finally:
        s.close()
