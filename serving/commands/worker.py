"""`seqserve worker`: this host's ranks of a distributed engine whose front runs elsewhere.

It joins the front at `--master-addr:--master-port` as node `--node-rank`, then starts the
ranks the front asks for (a new generation replaces the last), tells the front when one of
them ends, and kills them when the front asks or goes away; then it joins again, so a
restarted front finds it. Its ranks connect to the front themselves and rendezvous through the
front's TCPStore; they exit if this process dies (each watches its parent).

Its ranks use the interface its own connection to the front goes out on (the route to
`--master-addr`), unless `--cluster-interface` or GLOO_SOCKET_IFNAME says otherwise. While the
front cannot be reached, one line says why every `--join-timeout-s`, and it keeps trying.
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
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import TYPE_CHECKING

from serving.errors import SeqServeError
from serving.settings import BY_NAME

if TYPE_CHECKING:
    from serving.engine.distributed.netif import Cluster

RETRY_S = 1.0  # between attempts to reach the front


def _setting(p: argparse.ArgumentParser, name: str, help: str, shown: str = "") -> None:
    """A flag declared in serving/settings.py, with its variable and default; the help as
    a worker sees it."""
    o = BY_NAME[name]
    raw = os.environ.get(o.env)
    p.add_argument(
        o.flag,
        type=o.type,
        default=o.type(raw) if raw is not None else o.default,
        help=f"{help} (env {o.env}, default {shown or o.shown or o.default})",
    )


def add_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--master-addr", required=True, help="the front's address")
    _setting(p, "master_port", "the front's --master-port")
    p.add_argument("--node-rank", type=int, required=True, help="this host's node, 1 and up")
    p.add_argument("--nnodes", type=int, required=True, help="hosts in all, the front's included")
    _setting(p, "cluster_key", "the front's --cluster-key")
    _setting(
        p,
        "cluster_interface",
        "network interface (or address) this host's ranks use to reach the other hosts",
        "the one the route to --master-addr goes out on, unless GLOO_SOCKET_IFNAME is set",
    )
    _setting(
        p,
        "join_timeout_s",
        "while the front cannot be reached, say why this often (and keep trying)",
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
    from serving.engine.distributed.netif import InterfaceError, choose
    from serving.engine.distributed.transport import keep_alive, socket_of

    address = (args.master_addr, args.master_port)
    key = args.cluster_key.encode()
    while True:
        conn = _reach(address, key, args.join_timeout_s)
        keep_alive(conn)  # a front whose host vanished reads as gone: join again
        try:
            with socket_of(conn) as s:
                cluster = choose(args.cluster_interface, s.getsockname()[0])
        except InterfaceError as e:
            raise SeqServeError(f"--cluster-interface: {e}") from None
        from serving.engine.distributed.nodes import Join  # torch: only once there is a front

        conn.send(Join(args.node_rank, os.getpid(), args.nnodes, cluster.address))
        print(
            f"seqserve worker: node {args.node_rank} joined {address[0]}:{address[1]}; "
            f"its ranks use {cluster.interface} ({cluster.address}; {cluster.how})",
            flush=True,
        )
        _serve(conn, address, key, ranks, cluster)
        _kill(ranks)
        print("seqserve worker: the front went away; joining again", flush=True)


def _reach(address: tuple[str, int], key: bytes, remind: float) -> Connection:
    """A connection to the front, authenticated; one line every `remind` seconds until then."""
    from serving.engine.distributed.transport import connect, why

    host, port = address
    start = time.monotonic()
    next_note = start + remind
    while True:
        try:
            return connect(address, key, remind)
        except AuthenticationError:
            raise SeqServeError(
                f"{host}:{port} refused this worker: the cluster keys differ"
            ) from None
        except (OSError, EOFError) as e:
            now = time.monotonic()
            if now >= next_note:
                next_note = now + remind
                print(
                    f"seqserve worker: error: cannot reach the front at {host}:{port} for "
                    f"{now - start:.0f}s ({why(e) if str(e) else 'closed'}): is `seqserve serve "
                    f"--nnodes` running there, and TCP port {port} open to this host? "
                    "Still trying.",
                    file=sys.stderr,
                    flush=True,
                )
            time.sleep(RETRY_S)


def _serve(
    conn: Connection,
    address: tuple[str, int],
    key: bytes,
    ranks: dict[int, BaseProcess],
    cluster: Cluster,
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
                mine = dataclasses.replace(
                    a,
                    store_host=address[0],
                    connect=address,
                    key=key,
                    parent_pid=os.getpid(),
                    cluster=cluster,  # this host's interface, not the front's
                )
                proc = ctx.Process(
                    target=rank_lib.main,
                    args=(mine, None),
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
