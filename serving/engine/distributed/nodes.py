"""Ranks on other hosts: the front listens for `seqserve worker`s and their ranks.

A worker (one per other host, `serving/commands/worker.py`) connects to the front's `--master-port`
and says which node it is. When the driver starts a generation, it sends each worker the
arguments of that node's ranks; the worker spawns them, and each rank connects back to the
same port with its own connection, over which it is driven like a local rank (Ready, Forward,
Update, Stop). Ranks rendezvous for their collectives through the driver's TCPStore (on
--master-port + 1), and gloo carries the embeddings between hosts, each host's ranks on the
interface that reaches the others (netif.py), joining within --join-timeout-s or failing in
one line (reach.py). Every connection is authenticated with the cluster key
(`multiprocessing.connection`'s HMAC challenge): the messages are pickled, so only a holder of
the key may connect, and the cluster network must be trusted like the key.

On the front, a remote rank looks like a local process (`RemoteRank`): its worker's control
connection is its sentinel, readable when the worker reports a rank's exit or disconnects.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection, Listener, answer_challenge, deliver_challenge

import torch.distributed as dist

from serving.engine.distributed.netif import WILDCARDS, Cluster, InterfaceError, choose, plain
from serving.engine.distributed.rank import RankArgs
from serving.engine.distributed.transport import Hello, keep_alive, read_timeout, socket_of, why
from serving.errors import EngineStartError

log = logging.getLogger("seqserve")

HELLO_TIMEOUT_S = 10.0  # a new connection must pass the challenge and say who it is within this


@dataclass(frozen=True)
class Join:  # worker -> front, first message
    node: int
    pid: int
    nnodes: int
    address: str = ""  # where its ranks are reached (its interface to the other hosts)


@dataclass(frozen=True)
class Refused:  # front -> worker, instead of any work: why it may not join (it exits)
    reason: str


@dataclass(frozen=True)
class Launch:  # front -> worker: start these ranks (a new generation replaces the last)
    generation: str
    ranks: list[RankArgs]


@dataclass(frozen=True)
class Halt:  # front -> worker: kill that generation's ranks
    generation: str


@dataclass(frozen=True)
class Exited:  # worker -> front: one of its ranks ended
    generation: str
    rank: int
    code: int | None


def hang_up(conn: Connection) -> None:
    """Close `conn` and wake any thread blocked on it, which a bare close() does not."""
    with contextlib.suppress(OSError), socket_of(conn) as s:
        s.shutdown(socket.SHUT_RDWR)
    conn.close()


class Worker:
    """The front's side of one worker's control connection."""

    def __init__(self, node: int, pid: int, conn: Connection, address: str = ""):
        self.node, self.pid = node, pid
        self.conn = conn
        self.address = address  # its ranks' address, as the worker says
        with socket_of(conn) as s:
            self.local = plain(s.getsockname()[0])  # where it reached this host
        self.gone = False
        self.exited: dict[tuple[str, int], int | None] = {}

    def poll(self) -> None:
        """Take in what the worker said (exits, or its end) without blocking."""
        try:
            while not self.gone and self.conn.poll():
                msg = self.conn.recv()
                if isinstance(msg, Exited):
                    self.exited[(msg.generation, msg.rank)] = msg.code
        except (EOFError, OSError):
            self.gone = True

    def send(self, msg: object) -> None:
        try:
            self.conn.send(msg)
        except OSError:
            self.gone = True


class RemoteRank:
    """A rank on another host, with the process interface RankGroup uses."""

    def __init__(self, worker: Worker, generation: str, rank: int, pid: int):
        self.worker, self.generation, self.rank, self.pid = worker, generation, rank, pid

    @property
    def sentinel(self) -> int:
        return self.worker.conn.fileno()

    def is_alive(self) -> bool:
        self.worker.poll()
        return not self.worker.gone and (self.generation, self.rank) not in self.worker.exited

    @property
    def exitcode(self) -> int | None:
        if self.is_alive():
            return None
        return self.worker.exited.get((self.generation, self.rank), -1)  # -1: its host is gone

    def kill(self) -> None:
        self.worker.send(Halt(self.generation))

    def join(self, timeout: float | None = None) -> None:
        pass  # reaped by its worker


class Nodes:
    """The front's listener: workers join, remote ranks connect back."""

    def __init__(self, host: str, port: int, key: bytes, nnodes: int, on_join: Callable[[], None]):
        # The challenge is not run by accept(): one connection that sends nothing would hold
        # up every other. Each connection is greeted on its own thread, with a deadline.
        self.listener = Listener((host, port))
        self.address: tuple[str, int] = self.listener.address
        self.key, self.nnodes = key, nnodes
        self.on_join = on_join
        self.workers: dict[int, Worker] = {}
        self._hellos: dict[tuple[str, int], tuple[Connection, int]] = {}
        self._changed = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._accept, name="seqserve-nodes", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self.listener.close()
        with self._changed:
            for w in self.workers.values():
                hang_up(w.conn)
            for conn, _ in self._hellos.values():
                hang_up(conn)
            self._changed.notify_all()

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn = self.listener.accept()
            except OSError:
                if self._closed:
                    return
                continue
            greet = threading.Thread(target=self._greet, args=(conn,), daemon=True)
            greet.start()

    def _greet(self, conn: Connection) -> None:
        """The HMAC challenge both ways, then who it is: a worker joining or a rank."""
        try:
            read_timeout(conn, HELLO_TIMEOUT_S)
            deliver_challenge(conn, self.key)  # a wrong key raises AuthenticationError here
            answer_challenge(conn, self.key)
            msg = conn.recv()
            read_timeout(conn, 0)
        except Exception as e:  # a wrong key, a peer gone, silent or too slow
            why = f"nothing within {HELLO_TIMEOUT_S:g}s" if isinstance(e, BlockingIOError) else e
            log.warning("nodes: refused a connection: %s", why or type(e).__name__)
            hang_up(conn)
            return
        with self._changed:
            if self._closed:  # greeted while the listener closed: nobody will drive it
                hang_up(conn)
                return
            if isinstance(msg, Join):
                refused = self._refusal(msg)
                if refused:
                    log.warning("nodes: refused a worker as node %d: %s", msg.node, refused)
                    with contextlib.suppress(OSError):
                        conn.send(Refused(refused))
                    hang_up(conn)
                    return
                old = self.workers.get(msg.node)
                if old is not None:
                    hang_up(old.conn)  # gone already (see _refusal): wake whoever waits on it
                keep_alive(conn)
                w = Worker(msg.node, msg.pid, conn, msg.address)
                self.workers[msg.node] = w
                log.warning(
                    "nodes: node %d joined from %s (worker pid %d) at %s",
                    msg.node,
                    msg.address or "?",
                    msg.pid,
                    w.local,
                )
            elif isinstance(msg, Hello):
                keep_alive(conn)
                self._hellos[(msg.generation, msg.rank)] = (conn, msg.pid)
            else:
                hang_up(conn)
                return
            self._changed.notify_all()
        if isinstance(msg, Join):
            self.on_join()

    def _refusal(self, join: Join) -> str:
        """Why this worker may not join (empty: it may). Called holding the lock."""
        if join.nnodes != self.nnodes:
            return f"this front spans {self.nnodes} nodes, not {join.nnodes} (--nnodes)"
        if not 1 <= join.node < self.nnodes:
            return f"node {join.node} is not one of 1 to {self.nnodes - 1} (--node-rank)"
        old = self.workers.get(join.node)
        if old is not None:
            old.poll()
            if not old.gone:
                return f"node {join.node} already has a worker (pid {old.pid}); stop that one first"
        return ""

    def wait_for(self, nodes: range, timeout: float) -> bool:
        """Whether every node in `nodes` has a worker connected within `timeout` seconds."""
        with self._changed:
            return (
                self._changed.wait_for(
                    lambda: self._closed or all(n in self.workers for n in nodes), timeout
                )
                and not self._closed
            )

    def await_workers(self, timeout: float, stop: threading.Event, remind: float) -> None:
        """Until every other node's worker has joined; EngineStartError after `timeout` s,
        or once `stop` is set (the server stops meanwhile). Closes the listener on failure.
        Every `remind` seconds meanwhile, one line says who is missing and what to run."""
        start = time.monotonic()
        end, next_note = start + timeout, start + remind
        while not self.wait_for(range(1, self.nnodes), 0.5):
            now = time.monotonic()
            if now > next_note:
                next_note = now + remind
                with self._changed:
                    missing = [n for n in range(1, self.nnodes) if n not in self.workers]
                host, port = self.address
                log.warning(
                    "still waiting for node(s) %s after %.0fs: run `seqserve worker "
                    "--master-addr <this host's address> --master-port %d --node-rank N "
                    "--nnodes %d` on each, with this --cluster-key; TCP ports %d and %d of "
                    "%s must be open to them",
                    missing,
                    now - start,
                    port,
                    self.nnodes,
                    port,
                    port + 1,
                    host,
                )
            if stop.is_set() or time.monotonic() > end:
                self.close()
                if stop.is_set():
                    raise EngineStartError("stopped while waiting for the other hosts' workers")
                raise EngineStartError(f"workers did not join within {timeout:g}s")

    def local_address(self) -> str:
        """The address the other hosts reach this one at: the listener's own, or where the
        first worker's connection arrived when it listens on every address."""
        host = self.address[0]
        if host not in WILDCARDS:
            return plain(host)
        with self._changed:
            return next(iter(self.workers.values())).local

    def cluster(self, setting: str) -> Cluster:
        """This host's interface to the others: `setting` (--cluster-interface) or found."""
        try:
            cluster = choose(setting, self.local_address())
        except InterfaceError as e:
            self.close()
            raise EngineStartError(f"--cluster-interface: {e}") from None
        log.warning(
            "ranks here reach the other hosts on %s (%s; %s)",
            cluster.interface,
            cluster.address,
            cluster.how,
        )
        return cluster

    def launch(
        self, generation: str, ranks: dict[int, list[RankArgs]], timeout: float
    ) -> dict[int, tuple[Connection, RemoteRank]]:
        """Have each node's worker start its ranks; each rank's connection and handle once
        every one has connected back. GroupFailed-worthy errors are RuntimeErrors naming the
        node."""
        with self._changed:
            workers = {}
            for node in ranks:
                w = self.workers.get(node)
                if w is not None:
                    w.poll()
                if w is None or w.gone:
                    raise RuntimeError(f"node {node} has no worker connected")
                workers[node] = w
        for node, args in ranks.items():
            workers[node].send(Launch(generation, args))
        wanted = {(generation, a.rank): node for node, args in ranks.items() for a in args}
        end = time.monotonic() + timeout
        with self._changed:
            while not all(k in self._hellos for k in wanted):
                left = end - time.monotonic()
                for w in workers.values():
                    w.poll()
                gone = [n for n, w in workers.items() if w.gone]
                exited = [
                    (k[1], n, workers[n].exited[k])
                    for k, n in wanted.items()
                    if k in workers[n].exited and k not in self._hellos
                ]
                if self._closed or left <= 0 or gone or exited:
                    missing = sorted(r for (_, r) in wanted if (generation, r) not in self._hellos)
                    why = f"node(s) {gone} left" if gone else f"ranks {missing} did not connect"
                    if exited and not gone:
                        r, n, code = exited[0]
                        why = (
                            f"rank {r} on node {n} exited with code {code} before connecting "
                            "back (its worker's output says why)"
                        )
                    raise RuntimeError(f"start on other hosts: {why}")
                self._changed.wait(min(left, 0.2))
            out = {}
            for key, node in wanted.items():
                conn, pid = self._hellos.pop(key)
                out[key[1]] = (conn, RemoteRank(workers[node], generation, key[1], pid))
            return out


def rendezvous_store(port: int) -> dist.TCPStore:
    """The driver's rendezvous store, listening on every address: on `port` (across hosts, the
    one after --master-port, so that a firewall can name it) or, with 0 or where `port` is
    taken, one the OS picks (logged: the other hosts must reach it)."""
    if port:
        try:
            return dist.TCPStore("127.0.0.1", port, is_master=True, wait_for_workers=False)
        except RuntimeError as e:  # DistNetworkError: the port is taken
            log.warning("the rendezvous store cannot listen on port %d (%s)", port, why(e))
    store = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    if port:
        log.warning(
            "the rendezvous store listens on port %d: open it to the other hosts", store.port
        )
    return store


def listen(
    master: tuple[str, int], key: bytes, nnodes: int, world: int, on_join: Callable[[], None]
) -> Nodes:
    """Listen at `master` for the other hosts' workers (the caller waits for them)."""
    if not key:
        raise EngineStartError("ranks on other hosts need a cluster key (--cluster-key)")
    if world % nnodes:
        raise EngineStartError(f"world_size {world} does not split into {nnodes} nodes evenly")
    nodes = Nodes(*master, key, nnodes, on_join=on_join)
    log.warning("waiting for %d worker(s) on %s:%d", nnodes - 1, *nodes.address)
    return nodes
