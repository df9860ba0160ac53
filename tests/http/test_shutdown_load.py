"""SIGTERM under load: every accepted request gets its answer or a clean 503; exit 0."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.distributed.test_lifecycle import alive
from tests.http.server import Server, same_bits
from tests.http.test_shutdown import _children

pytestmark = pytest.mark.slow


def test_sigterm_under_load_loses_nothing(model_path: Path) -> None:
    s = Server(model_path)
    try:
        s.wait_ready()
        ranks = [int(line.split()[0]) for line in _children(s.proc.pid)]
        outcomes: list[tuple[str, object]] = []
        stop = threading.Event()

        def client(seed: int) -> None:
            rng = np.random.default_rng(seed)
            while not stop.is_set():
                ids = rng.integers(0, 5000, 20).tolist()
                # A connection per request: "accepted" then means the request was sent on a
                # connection the server took; a refused connection was never accepted.
                try:
                    with httpx.Client(base_url=s.url, timeout=30) as c:
                        r = c.post("/predictions/small", json={"features": {"item_id": ids}})
                except httpx.ConnectError:
                    outcomes.append(("refused", None))
                    time.sleep(0.01)
                    continue
                except httpx.TransportError as e:
                    outcomes.append(("lost", repr(e)))
                    continue
                if r.status_code == 200:
                    exact = same_bits(
                        np.asarray(r.json()["embeddings"]["item_id"]), s.rows("item_id", ids)
                    )
                    outcomes.append(("ok" if exact else "wrong", ids))
                else:
                    outcomes.append((str(r.status_code), r.text))

        threads = [threading.Thread(target=client, args=(i,)) for i in range(16)]
        for t in threads:
            t.start()
        time.sleep(2)
        code = s.terminate()
        time.sleep(0.5)
        stop.set()
        for t in threads:
            t.join(timeout=60)
        kinds = {k for k, _ in outcomes}
        assert code == 0, s.output()
        assert kinds <= {"ok", "503", "refused"}, [
            o for o in outcomes if o[0] not in {"ok", "503", "refused"}
        ][:5]
        assert sum(k == "ok" for k, _ in outcomes) > 10
        deadline = time.monotonic() + 10
        while any(alive(p) for p in ranks) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(alive(p) for p in ranks)
    finally:
        s.close()
