"""Ranks on other hosts: the front listens for `seqserve worker`s and their ranks.

A worker (one per other host, `serving/worker.py`) connects to the front's `--master-port`
and says which node it is. When the driver starts a generation, it sends each worker the
arguments of that node's ranks; the worker spawns them, and each rank connects back to the
same port with its own connection, over which it is driven like a local rank (Ready, Forward,
Update, Stop). Ranks rendezvous for their collectives through the driver's TCPStore, and gloo
carries the embeddings between hosts. Every connection is authenticated with the cluster key
(`multiprocessing.connection`'s HMAC challenge): the messages are pickled, so only a holder of
the key may connect, and the cluster network must be trusted like the key.

On the front, a remote rank looks like a local process (`RemoteRank`): its worker's control
connection is its sentinel, readable when the worker reports a rank's exit or disconnects.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection, Listener

from serving.engine.distributed.rank import RankArgs
from serving.engine.distributed.transport import Hello
from serving.errors import EngineStartError

log = logging.getLogger("seqserve")

HELLO_TIMEOUT_S = 10.0  # a new connection must say who it is within this


@dataclass(frozen=True)
class Join:  # worker -> front, first message
    node: int
    pid: int


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


class Worker:
    """The front's side of one worker's control connection."""

    def __init__(self, node: int, conn: Connection):
        self.node = node
        self.conn = conn
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

    def __init__(self, host: str, port: int, key: bytes, on_join: Callable[[], None]):
        self.listener = Listener((host, port), authkey=key)
        self.address: tuple[str, int] = self.listener.address
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
                w.conn.close()
            for conn, _ in self._hellos.values():
                conn.close()
            self._changed.notify_all()

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn = self.listener.accept()  # the HMAC challenge: a wrong key raises here
            except OSError:
                if self._closed:
                    return
                continue
            except Exception as e:  # AuthenticationError, or a peer gone mid-challenge
                log.warning("nodes: refused a connection: %s", e)
                continue
            try:
                msg = conn.recv() if conn.poll(HELLO_TIMEOUT_S) else None
            except (EOFError, OSError):
                msg = None
            with self._changed:
                if isinstance(msg, Join):
                    old = self.workers.get(msg.node)
                    if old is not None:
                        old.conn.close()
                    self.workers[msg.node] = Worker(msg.node, conn)
                    log.warning("nodes: node %d joined (worker pid %d)", msg.node, msg.pid)
                elif isinstance(msg, Hello):
                    self._hellos[(msg.generation, msg.rank)] = (conn, msg.pid)
                else:
                    conn.close()
                    continue
                self._changed.notify_all()
            if isinstance(msg, Join):
                self.on_join()

    def wait_for(self, nodes: range, timeout: float) -> bool:
        """Whether every node in `nodes` has a worker connected within `timeout` seconds."""
        with self._changed:
            return (
                self._changed.wait_for(
                    lambda: self._closed or all(n in self.workers for n in nodes), timeout
                )
                and not self._closed
            )

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
                if self._closed or left <= 0 or gone:
                    missing = sorted(r for (_, r) in wanted if (generation, r) not in self._hellos)
                    why = f"node(s) {gone} left" if gone else f"ranks {missing} did not connect"
                    raise RuntimeError(f"start on other hosts: {why}")
                self._changed.wait(min(left, 0.2))
            out = {}
            for key, node in wanted.items():
                conn, pid = self._hellos.pop(key)
                out[key[1]] = (conn, RemoteRank(workers[node], generation, key[1], pid))
            return out


def await_workers(
    master: tuple[str, int],
    key: bytes,
    nnodes: int,
    world: int,
    timeout: float,
    on_join: Callable[[], None],
) -> Nodes:
    """Listen at `master` for the other hosts' workers; the listener once every one joined."""
    if not key:
        raise EngineStartError("ranks on other hosts need a cluster key (--cluster-key)")
    if world % nnodes:
        raise EngineStartError(f"world_size {world} does not split into {nnodes} nodes evenly")
    nodes = Nodes(*master, key, on_join=on_join)
    log.warning("waiting for %d worker(s) on %s:%d", nnodes - 1, *nodes.address)
    if not nodes.wait_for(range(1, nnodes), timeout):
        nodes.close()
        raise EngineStartError(f"workers did not join within {timeout:g}s")
    return nodes
