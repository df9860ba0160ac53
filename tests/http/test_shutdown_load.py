"""SIGTERM under load: every accepted request gets its answer or a clean 503; exit 0."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.http.server import Server, same_bits
from tests.procs import rank_pids, wait_gone

pytestmark = pytest.mark.slow


def test_sigterm_under_load_loses_nothing(model_path: Path) -> None:
    s = Server(model_path)
    try:
        s.wait_ready()
        ranks = rank_pids(s.proc.pid)
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
                    # No answer. Uvicorn closes, on shutdown, only connections that hold no
                    # request in progress, so this one was never read; the server's own count
                    # below proves it was not computed either.
                    outcomes.append(("unanswered", repr(e)))
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
        assert code == 0
        out = s.output()
        assert kinds <= {"ok", "503", "refused", "unanswered"}, [
            o for o in outcomes if o[0] in {"wrong", "500"}
        ][:5]
        # Nothing lost, nothing answered twice: the server answered exactly what clients got.
        line = next(x for x in out.splitlines() if "predictions answered by status" in x)
        server_side = dict(pair.split(":") for pair in line.rsplit(": ", 1)[1].split())
        client_side = {k: sum(o == k for o, _ in outcomes) for k in ("ok", "503")}
        assert int(server_side.get("200", 0)) == client_side["ok"], (line, client_side)
        assert int(server_side.get("503", 0)) == client_side["503"], (line, client_side)
        assert sum(k == "ok" for k, _ in outcomes) > 10
        assert wait_gone(ranks), f"ranks {ranks} outlived the server"
    finally:
        s.close()
