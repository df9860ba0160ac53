"""The distributed engine across two network hosts against one host holding the same shards:
per-batch latency and ids/s at each one-way delay between the hosts (one run; see README).

Hosts are network namespaces with their own addresses (tests/hosts/net.py), joined by a
switch that holds each packet for the delay (this kernel has no netem). Both engines serve the
same 4-rank plan (demo tables, each table's shards interleaved over ranks 0-3) with the whole
batch on rank 0 (dispatch "one", what several hosts need). "One host" runs ranks 0-3 on host
a; "two hosts" runs ranks 0-1 on host a and 2-3 in a `seqserve worker` on host b, so half of
every table's columns cross the switch. Calls alternate between the two. Needs root.

    .venv/bin/python benchmarks/nodes_bench.py [--delays 0,0.25,1] [--sizes 1,32,1024] [--reps 20]
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from serving.commands.demo import DEMO
from serving.config import parse_spec
from serving.engine.distributed.driver import DistributedEngine
from tests.hosts.net import Hosts, unavailable

KEY = "bench-key"
MASTER, ECHO = 8083, 7000
ECHO_SERVER = f"""
import socket
s = socket.create_server(("", {ECHO}))
while True:
    c, _ = s.accept()
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    while d := c.recv(64):
        c.sendall(d)
"""


def spec() -> Any:
    raw = json.loads(json.dumps(DEMO))
    raw["sharding"] = {
        "world_size": 4,
        "tables": {
            "items": {"column_wise": [0, 2, 1, 3]},
            "categories": {"column_wise": [3, 1, 2, 0]},
        },
    }
    return parse_spec(raw)


def crossing_mb(s: Any, reqs: list[dict[str, np.ndarray]]) -> float:
    """Bytes that cross between the hosts per batch: each id to every rank on host b that
    holds a shard of its table (int64), and its rows' columns held there back (float32)."""
    plan, tables = s.plan(), s.table_of()
    there = s.sharding.world_size // 2  # ranks from here up are on host b
    total = 0
    for f, table in tables.items():
        shards = [sh for sh in plan[table.name].shards if sh.rank >= there]
        ids = sum(len(r[f]) for r in reqs if f in r)
        total += ids * (
            8 * len({sh.rank for sh in shards}) + 4 * sum(sh.end - sh.start for sh in shards)
        )
    return total / 1e6


def round_trip_ms(host: str, n: int = 200) -> float:
    """Median TCP round trip of one byte to host b's echo server, as the ranks see it."""
    with socket.create_connection((host, ECHO), timeout=10) as c:
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        times = []
        for _ in range(n):
            t = time.perf_counter()
            c.sendall(b"x")
            c.recv(1)
            times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--delays", default="0,0.25,1", help="one-way delays between hosts, ms")
    ap.add_argument("--sizes", default="1,32,1024")
    ap.add_argument("--reps", type=int, default=20, help="timed calls per size and engine")
    ap.add_argument("--mean-len", type=int, default=20)
    ap.add_argument("--out", default="benchmarks/results/nodes/nodes_bench.json")
    args = ap.parse_args()
    reason = unavailable()
    if reason:
        sys.exit(f"nodes_bench needs network namespaces: {reason}")
    s = spec()
    rng = np.random.default_rng(0)
    rows = {f: t.num_embeddings for f, t in s.table_of().items()}
    batches = {
        size: [
            {f: rng.integers(0, rows[f], max(1, rng.poisson(args.mean_len))) for f in rows}
            for _ in range(size)
        ]
        for size in [int(x) for x in args.sizes.split(",")]
    }
    results: list[dict[str, Any]] = []
    with Hosts(["a", "b"]) as hosts:
        a = hosts.address("a")
        hosts.spawn("b", [sys.executable, "-c", ECHO_SERVER])
        hosts.spawn(
            "b",
            [sys.executable, "-m", "serving.commands.cli", "worker", "--master-addr", a]
            + ["--master-port", str(MASTER), "--node-rank", "1", "--nnodes", "2"]
            + ["--cluster-key", KEY],
        )
        with hosts.on("a"):  # the engines' sockets and rank processes live on host a
            one = DistributedEngine(s, dispatch="one", threads_per_rank=1)
            two = DistributedEngine(
                s, threads_per_rank=1, nnodes=2, master=(a, MASTER), cluster_key=KEY.encode()
            )
            try:
                one.start()
                two.start()
                for delay in [float(x) for x in args.delays.split(",")]:
                    hosts.set_delay(delay)
                    rtt = round_trip_ms(hosts.address("b"))
                    print(f"one-way delay {delay} ms: TCP round trip {rtt:.2f} ms", flush=True)
                    for reqs in batches.values():
                        row = measure(one, two, reqs, args.reps)
                        row["crossing_mb"] = crossing_mb(s, reqs)
                        results.append({"delay_ms": delay, "rtt_ms": rtt, **row})
            finally:
                two.close()
                one.close()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"results": results, "reps": args.reps}, indent=2))
    table(results)
    print(f"wrote {out}")


def measure(
    one: DistributedEngine, two: DistributedEngine, reqs: list[Any], reps: int
) -> dict[str, Any]:
    ids = sum(len(v) for r in reqs for v in r.values())
    for e in (one, two):
        e.forward(reqs)  # warm: buffers grow to this size once
    times: dict[str, list[float]] = {"one_host": [], "two_hosts": []}
    for _ in range(reps):
        for name, e in (("one_host", one), ("two_hosts", two)):
            t = time.perf_counter()
            e.forward(reqs)
            times[name].append(time.perf_counter() - t)
    row: dict[str, Any] = {"requests": len(reqs), "ids": ids}
    for name, ts in times.items():
        row[f"{name}_ms"] = statistics.median(ts) * 1e3
        row[f"{name}_ids_per_s"] = ids / statistics.median(ts)
    print(
        f"  {len(reqs)} requests ({ids} ids): one host {row['one_host_ms']:.2f} ms, "
        f"two hosts {row['two_hosts_ms']:.2f} ms ({row['two_hosts_ms'] / row['one_host_ms']:.2f}x)",
        flush=True,
    )
    return row


def table(results: list[dict[str, Any]]) -> None:
    print(
        "| one-way delay (RTT) | requests | ids (MB across) | one host ms (ids/s) "
        "| two hosts ms (ids/s) | two / one |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for r in results:
        print(
            f"| {r['delay_ms']:g} ms ({r['rtt_ms']:.2f} ms) | {r['requests']} "
            f"| {r['ids']} ({r['crossing_mb']:.2f}) "
            f"| {r['one_host_ms']:.1f} ({fmt(r['one_host_ids_per_s'])}) "
            f"| {r['two_hosts_ms']:.1f} ({fmt(r['two_hosts_ids_per_s'])}) "
            f"| {r['two_hosts_ms'] / r['one_host_ms']:.2f}x |"
        )


def fmt(rate: float) -> str:
    return f"{rate / 1e6:.2f} M" if rate >= 1e6 else f"{rate / 1e3:.0f} k"


if __name__ == "__main__":
    main()
