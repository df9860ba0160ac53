"""Two "hosts" on loopback: the front with ranks 0-1 as node 0, and ranks 2-3 as node 1 from a
separate `seqserve worker` command. An interleaved plan spans both; losing node 1 turns /ping
to 503, and starting its worker again brings exact answers back. Workers that do not fit are
refused in one line, and nothing on the cluster port can hold the front up."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from serving.commands.demo import write_model
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


def worker(port: int, key: str = KEY, nnodes: int = 2) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "serving.commands.cli", "worker", "--master-addr", "127.0.0.1"]
        + ["--master-port", str(port), "--node-rank", "1", "--nnodes", str(nnodes)]
        + ["--cluster-key", key],
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
    # So is one that counts the nodes otherwise.
    wrong = worker(port, nnodes=3)
    out, _ = wrong.communicate(timeout=60)
    assert wrong.returncode == 2 and "this front spans 2 nodes, not 3 (--nnodes)" in out, out
    # A connection that never says a word holds up nobody: node 1 joins beside it.
    idle = socket.create_connection(("127.0.0.1", port))
    node1 = worker(port)
    try:
        server.wait_ready()
        assert_exact(server)
        spec = server.client.get("/models/small").json()
        assert spec["world_size"] == 4 and spec["dispatch"] == "one"
        # A second worker claiming node 1 is refused, and the group serves on.
        twin = worker(port)
        out, _ = twin.communicate(timeout=60)
        assert twin.returncode == 2 and "node 1 already has a worker" in out, out
        assert server.client.get("/ping").status_code == 200
        assert_exact(server)
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
        idle.close()
        stop(node1, signal.SIGTERM)


def test_a_front_waiting_for_its_workers_stops_at_once(tmp_path: Path) -> None:
    model = write_model(tmp_path, {**MODEL, "sharding": SHARDING})
    port = free_port()
    server = Server(model, "--nnodes", "2", "--master-port", str(port), "--cluster-key", KEY)
    try:
        end = time.monotonic() + 60
        while True:  # listening for workers (none will come)
            try:
                socket.create_connection(("127.0.0.1", port)).close()
                break
            except OSError:
                assert time.monotonic() < end and server.proc.poll() is None, server.output()
                time.sleep(0.1)
        started = time.monotonic()
        assert server.terminate(timeout=30) == 0
        assert time.monotonic() - started < 15
        out = server.output()
        assert "ready on" not in out and "failed to start" not in out, out
    finally:
        server.close()


def test_two_nodes_under_two_front_processes(tmp_path: Path) -> None:
    """--workers 2 on the first host: the engine process leads the group across both nodes."""
    model = write_model(tmp_path, {**MODEL, "sharding": SHARDING})
    port = free_port()
    server = Server(
        model, "--workers", "2", "--nnodes", "2", "--master-port", str(port), "--cluster-key", KEY
    )
    node1 = worker(port)
    try:
        server.wait_ready(180)
        for _ in range(6):  # connections of their own: both fronts answer
            with httpx.Client(base_url=server.url, timeout=30) as c:
                r = c.post("/predictions/small", json={"features": REQUEST})
            assert r.status_code == 200, r.text
            for f, ids in REQUEST.items():
                assert same_bits(np.asarray(r.json()["embeddings"][f]), server.rows(f, ids)), f
        assert server.terminate() == 0
    finally:
        stop(node1, signal.SIGTERM)
        server.close()
