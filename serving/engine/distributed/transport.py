"""Driver <-> rank messages, and the shared output buffer each rank writes its rows into.

Ids are small and travel over the pipe. Rows are large (ids x dim x 4 bytes), so each rank
writes them into an anonymous memfd that the driver created and passed over the socketpair:
one copy on each side, no pickling, and nothing left in /dev/shm if a process is killed.
"""

from __future__ import annotations

import mmap
import os
import socket
import struct
from dataclasses import dataclass
from multiprocessing.connection import (
    Connection,
    answer_challenge,
    deliver_challenge,
)
from multiprocessing.reduction import recv_handle, send_handle

import numpy as np

# A host that vanishes without closing its connections is noticed after about 10 + 3 x 5 s.
KEEPALIVE = ((socket.TCP_KEEPIDLE, 10), (socket.TCP_KEEPINTVL, 5), (socket.TCP_KEEPCNT, 3))


@dataclass(frozen=True)
class Forward:
    keys: tuple[str, ...]
    lengths: np.ndarray  # int32, key-major
    values: np.ndarray  # int64


@dataclass(frozen=True)
class Update:
    tables: dict[str, tuple[np.ndarray, np.ndarray]]  # table -> ids int64 [k], rows f32 [k, dim]


@dataclass(frozen=True)
class NewBuffer:
    size: int  # bytes; the fd follows on the connection


@dataclass(frozen=True)
class Stop:
    pass


@dataclass(frozen=True)
class Hello:  # a rank on another host, first message on the connection it opens to the front
    generation: str
    rank: int
    pid: int


@dataclass(frozen=True)
class Ready:
    info: dict[str, object]


@dataclass(frozen=True)
class Done:
    rows: tuple[int, ...]  # rows written per key, in key order
    lookup_s: float = 0.0  # sharded forward: input dist, fused lookup, output dist, stitch
    copy_s: float = 0.0  # rows into the shared buffer


@dataclass(frozen=True)
class Failed:
    traceback: str
    summary: str = ""  # one line, where the cause is known (a peer it cannot reach): shown alone


class OutputBuffer:
    """Driver side: a growable memfd shared with one rank."""

    def __init__(self, rank: int):
        self.rank = rank
        self.size = 0
        self._mm: mmap.mmap | None = None

    def ensure(self, nbytes: int, conn: Connection, pid: int) -> None:
        """Grow to hold `nbytes`, handing the new fd to the rank (before its next Forward)."""
        if nbytes <= self.size:
            return
        size = max(1 << 20, 1 << (nbytes - 1).bit_length())
        fd = os.memfd_create(f"seqserve-rank{self.rank}")
        try:
            os.ftruncate(fd, size)
            conn.send(NewBuffer(size))
            send_handle(conn, fd, pid)
            self.close()
            self._mm = mmap.mmap(fd, size)
            self.size = size
        finally:
            os.close(fd)

    def floats(self, count: int) -> np.ndarray:
        """The first `count` float32 values the rank wrote (a view: copy before the next batch)."""
        if count == 0:
            return np.zeros(0, dtype=np.float32)
        assert self._mm is not None
        return np.frombuffer(self._mm, dtype=np.float32, count=count)

    def close(self) -> None:
        if self._mm is not None:
            self._mm.close()
            self._mm = None
        self.size = 0


def receive_buffer(conn: Connection, msg: NewBuffer) -> mmap.mmap:
    """Rank side: map the fd that follows a NewBuffer message."""
    fd = recv_handle(conn)
    try:
        return mmap.mmap(fd, msg.size)
    finally:
        os.close(fd)


def read_timeout(conn: Connection, seconds: float) -> None:
    """Reads on `conn` fail after `seconds` (0: wait for ever); Connection reads the bare fd,
    so a socket-level timeout (which makes the fd non-blocking) would not do."""
    whole = int(seconds)
    with socket.socket(fileno=os.dup(conn.fileno())) as s:
        timeval = struct.pack("ll", whole, int((seconds - whole) * 1e6))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)


def connect(address: tuple[str, int], key: bytes, timeout: float) -> Connection:
    """`multiprocessing.connection.Client(address, authkey=key)`, but connecting and the
    challenge each fail after `timeout` seconds (a dropped SYN alone would wait minutes)."""
    with socket.create_connection(address, timeout=timeout) as sock:
        sock.settimeout(None)
        conn = Connection(sock.detach())
    try:
        read_timeout(conn, timeout)  # a peer that accepts and says nothing is no front
        answer_challenge(conn, key)
        deliver_challenge(conn, key)
        read_timeout(conn, 0)
    except BaseException:
        conn.close()
        raise
    return conn


def socket_of(conn: Connection) -> socket.socket:
    """A second handle on `conn`'s socket (options and shutdown act on the socket itself)."""
    return socket.socket(fileno=os.dup(conn.fileno()))


def keep_alive(conn: Connection) -> None:
    """TCP keep-alive: a peer whose host is gone reads as a closed connection."""
    with socket_of(conn) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for option, value in KEEPALIVE:
            s.setsockopt(socket.IPPROTO_TCP, option, value)


def why(e: BaseException) -> str:
    """A few words for a connection failure."""
    text = str(e).lower()
    for words in ("refused", "timed out", "no route to host", "unreachable", "reset"):
        if words in text:
            return {"refused": "connection refused", "reset": "connection reset"}.get(words, words)
    if isinstance(e, socket.timeout | TimeoutError):
        return "timed out"
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return first[:200]
