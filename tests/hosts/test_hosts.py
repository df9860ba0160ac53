"""Tables across real network hosts: network namespaces with their own addresses, joined by a
switch that adds 0.25 ms each way (tests/hosts/net.py), the front in one and `seqserve worker`s
in the others, nothing on loopback between them, this test talking HTTP to the front's address.

The plan spans both hosts: every column-wise table interleaved over rank 0 (host a) and rank 1
(host b), and the table-wise `shops` wholly on host b; answers are compared bit for bit with
the weights. Each host's ranks must find the interface that reaches the other host by
themselves: the host name resolves to 127.0.0.1 in every namespace, which is what gloo would
bind to otherwise."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest

from serving.commands.demo import write_model
from tests.hosts.net import Hosts, tool, unavailable
from tests.http.server import MODEL, rows_of, same_bits

pytestmark = pytest.mark.slow

KEY = "hosts-cluster-key"
HTTP, MASTER = 8080, 8083  # inside each namespace: no other process can hold them
JOIN_S = 5.0  # --join-timeout-s: how long a step of joining may take before it fails
SHARDING = {
    "world_size": 2,
    "engine": "distributed",
    "tables": {
        "items": {"column_wise": [0, 1, 0, 1]},
        "categories": {"column_wise": [1, 0, 0, 1]},
        "shops": {"table_wise": 1},
    },
}
RNG = np.random.default_rng(7)
REQUESTS = [
    {"item_id": [3, 17, 17, 0, 4999], "category_id": [5, 49], "shop_id": [29, 0]},
    {
        "item_id": RNG.integers(0, 5000, 300).tolist(),
        "clicked_item_id": RNG.integers(0, 5000, 40).tolist(),
        "shop_id": RNG.integers(0, 30, 20).tolist(),
    },
]
NO_NFT = "nft is not installed (`make test` installs it): no firewall to block a port with"


@pytest.fixture
def hosts() -> Iterator[Hosts]:
    reason = unavailable()
    if reason:
        pytest.skip(f"no network namespaces here: {reason}")
    with Hosts(["a", "b", "c"], delay_ms=0.25) as h:
        yield h


@pytest.fixture
def model(tmp_path: Path) -> Path:
    return write_model(tmp_path / "model", {**MODEL, "sharding": SHARDING})


@dataclass
class Proc:
    proc: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, pattern: str, timeout: float) -> str:
        """The first output line matching `pattern`, waiting up to `timeout` seconds."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for line in self.output().splitlines():
                if re.search(pattern, line):
                    return line
            if self.proc.poll() is not None and not re.search(pattern, self.output()):
                break
            time.sleep(0.1)
        raise AssertionError(f"no line matching {pattern!r} in {timeout}s:\n{self.output()}")


def start(
    hosts: Hosts, host: str, argv: list[str], log: Path, env: dict[str, str] | None = None
) -> Proc:
    out = log.open("wb")
    argv = [sys.executable, "-m", "serving.commands.cli", *argv]
    environ = {**os.environ, **(env or {})}
    proc = hosts.spawn(host, argv, stdout=out, stderr=subprocess.STDOUT, env=environ)
    out.close()
    return Proc(proc, log)


def front(hosts: Hosts, model: Path, tmp: Path, bind: str, name: str = "front") -> Proc:
    return start(
        hosts,
        "a",
        ["serve", "--model", str(model), "--host", bind, "--port", str(HTTP)]
        + ["--grpc-port", "8081", "--nnodes", "2", "--master-port", str(MASTER)]
        + ["--cluster-key", KEY, "--join-timeout-s", str(JOIN_S), "--rank-timeout-s", "3"],
        tmp / f"{name}.log",
    )


def worker(
    hosts: Hosts, host: str, tmp: Path, *flags: str, name: str = "worker", **env: str
) -> Proc:
    argv = ["worker", "--master-addr", hosts.address("a"), "--master-port", str(MASTER)]
    defaults = {"--node-rank": "1", "--nnodes": "2", "--cluster-key": KEY, "--join-timeout-s": "2"}
    for flag, value in defaults.items():
        if flag not in flags:
            argv += [flag, value]
    return start(hosts, host, [*argv, *flags], tmp / f"{name}.log", env)


def client(hosts: Hosts) -> httpx.Client:
    # trust_env=False: no proxy from the environment; this talks to host a and nowhere else.
    return httpx.Client(base_url=f"http://{hosts.address('a')}:{HTTP}", timeout=30, trust_env=False)


def until_status(http: httpx.Client, status: int, timeout: float, proc: Proc) -> float:
    start_t = time.monotonic()
    while True:
        try:
            if http.get("/ping").status_code == status:
                return time.monotonic() - start_t
        except httpx.TransportError:
            pass
        assert proc.proc.poll() is None, proc.output()
        assert time.monotonic() - start_t < timeout, f"/ping not {status} in {timeout}s"
        time.sleep(0.1)


def assert_exact(http: httpx.Client, weights: dict[str, np.ndarray]) -> None:
    for request in REQUESTS:
        r = http.post("/predictions/small", json={"features": request})
        assert r.status_code == 200, r.text
        for f, ids in request.items():
            got = np.asarray(r.json()["embeddings"][f])
            assert same_bits(got, rows_of(weights, f, ids)), f


def weights_of(model: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(model.parent / "weights.safetensors"))


def error_line(out: str, prefix: str) -> str:
    """The one line starting with `prefix`, checked to be the whole message."""
    lines = [line for line in out.splitlines() if line.startswith(prefix)]
    assert lines, out
    assert "Traceback" not in out, out
    return lines[0]


def test_tables_across_hosts_exact_through_blocks_lost_hosts_and_a_new_front(
    hosts: Hosts, model: Path, tmp_path: Path
) -> None:
    if tool("nft") is None:
        pytest.skip(NO_NFT)
    weights = weights_of(model)
    a, b = hosts.address("a"), hosts.address("b")
    served = front(hosts, model, tmp_path, a)
    node1 = worker(hosts, "b", tmp_path)
    with client(hosts) as http:
        until_status(http, 200, 180, served)
        assert_exact(http, weights)
        # Each rank's host and the address it was found to use: a's for rank 0, b's for rank 1.
        ranks = http.get("/models/small").json()["ranks"]
        assert [(r["rank"], r["node"], r["address"]) for r in ranks] == [(0, 0, a), (1, 1, b)]
        assert [r["interface"] for r in ranks] == [hosts.device("a"), hosts.device("b")]
        line = node1.wait_for(r"joined .* its ranks use", 5)
        assert f"its ranks use {hosts.device('b')} ({b}; found)" in line, line

        # Workers that do not fit, from a third host: one line each, and the group serves on.
        wrong_key = worker(hosts, "c", tmp_path, "--cluster-key", "not-it", name="wrong-key")
        wrong_nnodes = worker(hosts, "c", tmp_path, "--nnodes", "3", name="wrong-nnodes")
        assert wrong_key.proc.wait(timeout=60) == 2
        assert wrong_nnodes.proc.wait(timeout=60) == 2
        line = error_line(wrong_key.output(), "seqserve: error:")
        assert "refused this worker: the cluster keys differ" in line
        line = error_line(wrong_nnodes.output(), "seqserve: error:")
        assert "this front spans 2 nodes, not 3 (--nnodes)" in line
        assert_exact(http, weights)

        # Host b's firewall drops every TCP packet, mid-run: 503 within the rank timeout
        # (3 s), never a wrong answer; once it lets them through again, exact answers.
        hosts.drop_all_tcp("b")
        r = http.post("/predictions/small", json={"features": REQUESTS[0]}, timeout=20)
        assert r.status_code == 503, r.text
        assert http.get("/ping").status_code == 503
        hosts.open_firewall("b")
        until_status(http, 200, 120, served)
        assert_exact(http, weights)

        # Host b is lost (every process on it killed): 503.
        hosts.kill_host("b")
        until_status(http, 503, 15, served)
        # A worker whose ranks would be reached on loopback (what every host's gloo did before
        # the interface was found) cannot bring it back; the front says why in one line.
        worker(hosts, "b", tmp_path, "--cluster-interface", "lo", name="worker-lo")
        line = served.wait_for(r"restarting the rank group failed.* loopback", 120)
        assert "ranks [1] would be reached at 127.0.0.1, a loopback address, which the " in line
        assert "set --cluster-interface (or GLOO_SOCKET_IFNAME) on that host" in line, line
        assert http.get("/ping").status_code == 503
        hosts.kill_host("b")
        # Its worker back, its interface named by GLOO_SOCKET_IFNAME as a user may have it
        # (kept as it is): exact again.
        named = {"GLOO_SOCKET_IFNAME": hosts.device("b")}
        node1 = worker(hosts, "b", tmp_path, name="worker-again", **named)
        line = node1.wait_for(r"joined .* its ranks use", 60)
        assert f"its ranks use {hosts.device('b')} ({b}; GLOO_SOCKET_IFNAME)" in line, line
        until_status(http, 200, 120, served)
        assert_exact(http, weights)

        # The front is lost: the worker notices and joins the next front, which listens on
        # every address and finds its interface by where the worker's connection arrived.
        served.proc.kill()
        served.proc.wait(timeout=30)
        node1.wait_for("the front went away; joining again", 30)
        served = front(hosts, model, tmp_path, "0.0.0.0", name="front-again")
        until_status(http, 200, 180, served)
        assert_exact(http, weights)
        ranks = http.get("/models/small").json()["ranks"]
        assert [(r["rank"], r["address"]) for r in ranks] == [(0, a), (1, b)]
        assert node1.proc.poll() is None, node1.output()


def test_a_firewall_that_drops_the_ranks_ports_fails_the_start_in_one_line(
    hosts: Hosts, model: Path, tmp_path: Path
) -> None:
    """Host a lets in only HTTP, the master port and the store's (what a user who opened the
    documented ports but not the ranks' would have): the front stops with one line naming the
    rank, the address and port it could not reach, and what to open; no hang."""
    if tool("nft") is None:
        pytest.skip(NO_NFT)
    hosts.firewall("a", [HTTP, MASTER, MASTER + 1])
    served = front(hosts, model, tmp_path, hosts.address("a"))
    node1 = worker(hosts, "b", tmp_path)
    joined = served.wait_for("node 1 joined", 120)
    t0 = time.monotonic()
    assert served.proc.wait(timeout=120) == 1, served.output()
    # The ranks start (torch imports on a shared machine), then fail within JOIN_S.
    assert time.monotonic() - t0 < 60, joined
    line = error_line(served.output(), "seqserve: error:")
    a = re.escape(hosts.address("a"))
    assert re.search(
        rf"rank 1 on node 1 \({re.escape(hosts.address('b'))}\) cannot reach rank 0 at "
        rf"{a}:\d+ within 5s \(timed out\): allow TCP between the cluster's hosts",
        line,
    ), line
    # The worker's host says the same, from its rank.
    assert "cannot reach rank 0 at" in node1.wait_for(r"seqserve rank 1: error:", 10)


def test_a_worker_that_cannot_reach_its_front_says_why_and_keeps_trying(
    hosts: Hosts, tmp_path: Path
) -> None:
    """Nothing listens on host a; then host a drops everything: one line each, within the
    worker's --join-timeout-s (2 s here), and the worker keeps trying."""
    refused = worker(hosts, "b", tmp_path, name="refused")
    line = refused.wait_for("seqserve worker: error:", 60)
    assert f"cannot reach the front at {hosts.address('a')}:{MASTER}" in line, line
    assert "(connection refused)" in line and f"TCP port {MASTER} open" in line, line
    if tool("nft") is not None:
        hosts.drop_all_tcp("a")
        dropped = worker(hosts, "c", tmp_path, name="dropped")
        assert "(timed out)" in dropped.wait_for("seqserve worker: error:", 60)
        assert dropped.proc.poll() is None
    assert refused.proc.poll() is None  # still trying
