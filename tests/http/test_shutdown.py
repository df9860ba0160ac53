"""SIGTERM with requests in flight: every one is answered, exit 0, no rank process left."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.http.server import Server, same_bits
from tests.procs import rank_pids, wait_gone

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("engine", ["local", "distributed"])
def test_sigterm_answers_what_is_in_flight_then_exits_clean(model_path: Path, engine: str) -> None:
    # Batches wait 1.5 s for company, so the requests are still queued when SIGTERM lands.
    s = Server(model_path, "--max-delay-ms", "1500", "--max-gap-ms", "1500", "--engine", engine)
    try:
        s.wait_ready()
        ranks = rank_pids(s.proc.pid)
        # Rank processes exist only in the distributed engine.
        assert len(ranks) == (2 if engine == "distributed" else 0), ranks

        def post(i: int) -> httpx.Response:
            with httpx.Client(base_url=s.url, timeout=30) as c:
                return c.post("/predictions/small", json={"features": {"shop_id": [i, 29 - i]}})

        with ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(post, i) for i in range(8)]
            time.sleep(0.5)
            assert not any(f.done() for f in futures), "requests finished before SIGTERM"
            code = s.terminate()
            responses = [f.result() for f in futures]
        assert code == 0, s.output()
        for i, r in enumerate(responses):
            assert r.status_code == 200, r.text
            want = s.rows("shop_id", [i, 29 - i])
            assert same_bits(np.asarray(r.json()["embeddings"]["shop_id"]), want)
        assert wait_gone(ranks), f"ranks {ranks} outlived the server"
    finally:
        s.close()
