"""A rank's way into a group that spans hosts: bounded in time, and when it cannot form, one
line that says which rank could not reach which address and port, and what to change.

gloo's own failures say little and late: a dropped connection is retried for several times
the group's timeout and reported as "Connect timeout [none]", and an address the host name
resolved to (127.0.0.1) as a refused connection to a port nobody chose. So before gloo
connects, every rank opens a port on the address it will give gloo, writes it in the
rendezvous store, and connects to every other rank's; the first rank that cannot writes why
in the store, and every rank fails with that line. Then gloo connects, within the same bound.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import torch.distributed as dist
from torch.distributed.constants import default_pg_timeout

from serving.engine.distributed.netif import is_loopback
from serving.engine.distributed.transport import why

OPEN_TCP = (
    "allow TCP between the cluster's hosts on every port (ranks listen on ports the OS picks, "
    "net.ipv4.ip_local_port_range)"
)
SET_INTERFACE = (
    "set --cluster-interface (or GLOO_SOCKET_IFNAME) on that host to the interface that "
    "reaches the other hosts"
)
POLL_S = 0.05
# Waiting for peers to arrive has no bound of its own: a peer that never comes has failed or
# exited, and the driver stops the whole group then (or at its start timeout).
ARRIVAL_S = 24 * 3600.0


class Unreachable(Exception):
    """The group cannot form; the message is one line."""


def connect_store(host: str, port: int, timeout: float, who: str) -> dist.TCPStore:
    """The front's rendezvous store, or Unreachable within `timeout` seconds."""
    try:
        return dist.TCPStore(host, port, is_master=False, timeout=timedelta(seconds=timeout))
    except (RuntimeError, OSError) as e:  # DistNetworkError, DistStoreError are RuntimeErrors
        raise Unreachable(
            f"{who} cannot reach the front's rendezvous store at {host}:{port} within "
            f"{timeout:g}s ({why(e)}): open TCP port {port} on the front's host to this host"
        ) from None


def check_mesh(
    store: dist.Store, rank: int, world: int, address: str, timeout: float, who: str
) -> None:
    """Every rank connects to every other on its cluster address; Unreachable (the same line
    on every rank) when one cannot. Connection attempts take `timeout` seconds at most."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.create_server((address, 0), family=family, backlog=world + 8) as server:
        # Connections complete in the kernel's backlog: nothing needs to accept them.
        store.set(f"reach/{rank}", f"{address} {server.getsockname()[1]}")
        said = _gather(store, [f"reach/{r}" for r in range(world)], ARRIVAL_S)
        peers = {}
        for r in range(world):
            at, number = said[f"reach/{r}"].rsplit(" ", 1)
            peers[r] = (at, int(number))
        looped = sorted(r for r, (a, _) in peers.items() if is_loopback(a))
        if looped and len(looped) < world:
            at = peers[looped[0]][0]
            _fail(
                store,
                f"ranks {looped} would be reached at {at}, a loopback address, which the "
                f"ranks on other hosts cannot reach: {SET_INTERFACE}",
            )
        others = [r for r in range(world) if r != rank]
        with ThreadPoolExecutor(max_workers=max(1, min(32, len(others)))) as pool:
            errors = list(pool.map(lambda r: _probe(peers[r], timeout), others))
        for r, error in zip(others, errors, strict=True):
            if error:
                host, port = peers[r]
                _fail(
                    store,
                    f"{who} ({address}) cannot reach rank {r} at {host}:{port} within "
                    f"{timeout:g}s ({error}): {OPEN_TCP}",
                )
        store.set(f"reach/done/{rank}", "1")
        # The port stays open until every peer has tried it.
        _gather(store, [f"reach/done/{r}" for r in range(world)], ARRIVAL_S)


def _probe(peer: tuple[str, int], timeout: float) -> str:
    try:
        socket.create_connection(peer, timeout=timeout).close()
        return ""
    except OSError as e:
        return why(e)


def _fail(store: dist.Store, line: str) -> None:
    if store.add("reach/failed", 1) == 1:  # the first rank to fail tells everyone its line
        store.set("reach/error", line)
    else:
        line = _gather(store, ["reach/error"], ARRIVAL_S)["reach/error"]
    raise Unreachable(line)


def _gather(store: dist.Store, keys: list[str], bound: float) -> dict[str, str]:
    """Every key's value once all are set; Unreachable as soon as any rank has failed."""
    end = time.monotonic() + bound
    while not store.check(keys):
        if store.check(["reach/error"]):
            raise Unreachable(store.get("reach/error").decode())
        if time.monotonic() > end:
            missing = [k for k in keys if not store.check([k])]
            raise Unreachable(f"no sign of {missing} in the rendezvous store after {bound:g}s")
        time.sleep(POLL_S)
    return {k: store.get(k).decode() for k in keys}


def init_group(
    backend: str,
    store: dist.Store,
    rank: int,
    world: int,
    timeout: float,
    who: str,
    give_up: Callable[[str], None],
) -> None:
    """`init_process_group`, given up (`give_up(line)`, which must end the process) when it
    has not connected within `timeout` seconds; collectives after it get torch's default."""
    line = (
        f"{who}: {backend} did not connect the group within {timeout:g}s although every "
        f"rank reached every other's probe port: {OPEN_TCP}"
    )
    timer = threading.Timer(timeout, give_up, (line,))
    timer.daemon = True
    timer.start()
    try:
        dist.init_process_group(
            backend, store=store, rank=rank, world_size=world, timeout=timedelta(seconds=timeout)
        )
    except RuntimeError as e:
        raise Unreachable(f"{who}: {backend} could not connect the group ({why(e)})") from None
    finally:
        timer.cancel()
    # A peer may take long to load its shards before the first collective: not a failure.
    dist.distributed_c10d._set_pg_timeout(default_pg_timeout)
