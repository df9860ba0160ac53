"""Two "hosts" on loopback: the front with ranks 0-1 as node 0, and ranks 2-3 as node 1 from a
separate `seqserve worker` command. An interleaved plan spans both; losing node 1 turns /ping
to 503, and starting its worker again brings exact answers back."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from serving.demo import write_model
from tests.http.server import MODEL, ROOT, Server, free_port, same_bits

pytestmark = pytest.mark.slow

KEY = "loopback-cluster-key"
# Every table's shards on both nodes (ranks 0-1 here, 2-3 on node 1), in interleaved order.
SHARDING = {
    "world_size": 4,
    "engine": "distributed",
    "tables": {
        "items": {"column_wise": [0, 2, 1, 3]},
        "categories": {"column_wise": [3, 1, 2, 0]},
        "shops": {"table_wise": 3},
    },
}
REQUEST = {"item_id": [3, 17, 17, 0, 4999], "category_id": [5, 49], "shop_id": [29, 0]}


def worker(port: int, key: str = KEY) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "serving.cli", "worker", "--master-addr", "127.0.0.1"]
        + ["--master-port", str(port), "--node-rank", "1", "--nnodes", "2", "--cluster-key", key],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def stop(proc: subprocess.Popen[str], sig: int = signal.SIGKILL) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        proc.wait(timeout=30)


@pytest.fixture
def front(tmp_path: Path) -> Iterator[tuple[Server, int]]:
    model = write_model(tmp_path, {**MODEL, "sharding": SHARDING})
    port = free_port()
    server = Server(model, "--nnodes", "2", "--master-port", str(port), "--cluster-key", KEY)
    try:
        yield server, port
    finally:
        server.close()


def assert_exact(server: Server) -> None:
    r = server.client.post("/predictions/small", json={"features": REQUEST})
    assert r.status_code == 200, r.text
    for f, ids in REQUEST.items():
        assert same_bits(np.asarray(r.json()["embeddings"][f]), server.rows(f, ids)), f


def until_status(server: Server, status: int, timeout: float) -> float:
    start = time.monotonic()
    while server.client.get("/ping").status_code != status:
        assert time.monotonic() - start < timeout, f"/ping not {status} in {timeout}s"
        time.sleep(0.1)
    return time.monotonic() - start


def test_two_nodes_serve_exactly_and_heal_when_the_lost_node_rejoins(
    front: tuple[Server, int],
) -> None:
    server, port = front
    # A worker with another key is refused, in one line, and the front goes on waiting.
    wrong = worker(port, "not-the-key")
    out, _ = wrong.communicate(timeout=60)
    assert wrong.returncode == 2 and "refused this worker: the cluster keys differ" in out, out
    node1 = worker(port)
    try:
        server.wait_ready()
        assert_exact(server)
        spec = server.client.get("/models/small").json()
        assert spec["world_size"] == 4 and spec["dispatch"] == "one"
        # Node 1 is lost (its worker killed; its ranks follow it).
        stop(node1)
        until_status(server, 503, 10)
        r = server.client.post("/predictions/small", json={"features": REQUEST})
        assert r.status_code == 503
        # Its worker comes back: the front starts a new group over both nodes.
        node1 = worker(port)
        until_status(server, 200, 120)
        assert_exact(server)
        # Anything else reaching the cluster port is refused without harm.
        with pytest.raises(httpx.TransportError):
            httpx.get(f"http://127.0.0.1:{port}", timeout=5)
        assert server.client.get("/ping").status_code == 200
    finally:
        stop(node1, signal.SIGTERM)
