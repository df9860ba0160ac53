"""`seqserve worker`: this host's ranks of a distributed engine whose front runs elsewhere.

It joins the front at `--master-addr:--master-port` as node `--node-rank`, then starts the
ranks the front asks for (a new generation replaces the last), tells the front when one of
them ends, and kills them when the front asks or goes away; then it joins again, so a
restarted front finds it. Its ranks connect to the front themselves and rendezvous through the
front's TCPStore; they exit if this process dies (each watches its parent).
"""

from __future__ import annotations

import argparse
import dataclasses
import multiprocessing as mp
import os
import signal
import sys
import time
from multiprocessing import AuthenticationError
from multiprocessing.connection import Client, Connection, wait
from multiprocessing.process import BaseProcess

from serving.errors import SeqServeError

RETRY_S = 1.0  # between attempts to reach the front


def add_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--master-addr", required=True, help="the front's address")
    p.add_argument("--master-port", type=int, default=8083, help="the front's --master-port")
    p.add_argument("--node-rank", type=int, required=True, help="this host's node, 1 and up")
    p.add_argument("--nnodes", type=int, required=True, help="hosts in all, the front's included")
    p.add_argument(
        "--cluster-key",
        default=os.environ.get("SEQSERVE_CLUSTER_KEY", ""),
        help="the front's --cluster-key (env SEQSERVE_CLUSTER_KEY)",
    )


def run(args: argparse.Namespace) -> int:
    if args.nnodes < 2:
        raise SeqServeError(f"--nnodes must be at least 2 (the front is node 0), not {args.nnodes}")
    if not 1 <= args.node_rank < args.nnodes:
        raise SeqServeError(f"--node-rank must be in [1, {args.nnodes}): node 0 is the front's")
    if not args.cluster_key:
        raise SeqServeError("--cluster-key (or SEQSERVE_CLUSTER_KEY) is required")
    ranks: dict[int, BaseProcess] = {}

    def leave(*_: object) -> None:
        _kill(ranks)
        sys.exit(0)

    signal.signal(signal.SIGTERM, leave)
    signal.signal(signal.SIGINT, leave)
    from serving.engine.distributed.nodes import Join, keep_alive  # torch: not for --help

    address = (args.master_addr, args.master_port)
    key = args.cluster_key.encode()
    while True:
        try:
            conn = Client(address, authkey=key)
        except OSError:
            time.sleep(RETRY_S)  # the front is not up (yet): keep trying
            continue
        except AuthenticationError:
            raise SeqServeError(
                f"{address[0]}:{address[1]} refused this worker: the cluster keys differ"
            ) from None
        keep_alive(conn)  # a front whose host vanished reads as gone: join again
        conn.send(Join(args.node_rank, os.getpid(), args.nnodes))
        print(
            f"seqserve worker: node {args.node_rank} joined {address[0]}:{address[1]}", flush=True
        )
        _serve(conn, address, key, ranks)
        _kill(ranks)
        print("seqserve worker: the front went away; joining again", flush=True)


def _serve(
    conn: Connection, address: tuple[str, int], key: bytes, ranks: dict[int, BaseProcess]
) -> None:
    from serving.engine.distributed import rank as rank_lib
    from serving.engine.distributed.nodes import Exited, Halt, Launch, Refused

    ctx = mp.get_context("spawn")
    generation = ""
    while True:
        sentinels = {p.sentinel: r for r, p in ranks.items()}
        ready = wait([conn, *sentinels])
        for s in ready:
            if s in sentinels:
                r = sentinels[s]
                proc = ranks.pop(r)
                proc.join(timeout=1)
                try:
                    conn.send(Exited(generation, r, proc.exitcode))
                except OSError:
                    return
        if conn not in ready:
            continue
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if isinstance(msg, Refused):
            raise SeqServeError(f"{address[0]}:{address[1]} refused this worker: {msg.reason}")
        if isinstance(msg, Launch):
            _kill(ranks)
            generation = msg.generation
            for a in msg.ranks:
                here = dataclasses.replace(
                    a, store_host=address[0], connect=address, key=key, parent_pid=os.getpid()
                )
                proc = ctx.Process(
                    target=rank_lib.main,
                    args=(here, None),
                    name=f"seqserve-rank{a.rank}",
                    daemon=True,
                )
                ranks[a.rank] = proc
                proc.start()
        elif isinstance(msg, Halt) and msg.generation == generation:
            _kill(ranks)


def _kill(ranks: dict[int, BaseProcess]) -> None:
    for p in ranks.values():
        if p.exitcode is None:
            p.kill()
    for p in ranks.values():
        p.join(timeout=10)
    ranks.clear()
