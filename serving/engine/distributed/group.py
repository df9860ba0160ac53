"""One generation of rank processes (spawn, collect replies, kill) and the restart back-off.

The driver never repairs a group: a group that lost a rank, a reply or a collective is killed
whole and a fresh generation takes its place, rendezvousing under a prefix of its own.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import Any

from serving.engine.distributed import rank as rank_lib
from serving.engine.distributed.nodes import Nodes
from serving.engine.distributed.transport import Failed, OutputBuffer, Stop
from serving.errors import EngineUnavailable


class GroupFailed(EngineUnavailable):
    """The group lost a rank or a reply; it cannot run another collective and must go."""


@dataclass(frozen=True)
class RestartAttempt:
    delay: float  # seconds waited after the previous failure before this attempt
    started: float  # time.monotonic()
    ended: float
    error: str | None  # None: this attempt brought the group back


class Backoff:
    """Delays before successive restart attempts: 0, then `initial` doubling up to `cap`."""

    def __init__(self, initial: float, cap: float):
        self.initial = initial
        self.cap = cap
        self.delay = 0.0

    def next(self) -> float:
        delay = self.delay
        self.delay = min(self.cap, max(self.initial, 2 * self.delay))
        return delay

    def reset(self) -> None:
        self.delay = 0.0


class RankGroup:
    """`world` rank processes of one generation, each with its pipe and output buffer."""

    def __init__(self, generation: int):
        self.generation = generation
        self.procs: list[BaseProcess] = []
        self.conns: list[Connection] = []
        self.buffers: list[OutputBuffer] = []
        self.info: list[dict[str, object]] = []
        self.up_since = 0.0  # time.monotonic() when every rank reported ready
        self._killed = False

    def spawn(
        self,
        make_args: Callable[[int], rank_lib.RankArgs],
        world: int,
        nodes: Nodes | None = None,
        nnodes: int = 1,
        timeout: float = 60.0,
    ) -> None:
        """Ranks [0, world / nnodes) here; with `nodes`, every other node's ranks through its
        worker (GroupFailed if one is missing or its ranks do not connect back)."""
        ctx = mp.get_context("spawn")
        here = world // nnodes
        for r in range(here):
            parent, child = ctx.Pipe(duplex=True)
            proc = ctx.Process(
                target=rank_lib.main,
                args=(make_args(r), child),
                name=f"seqserve-rank{r}",
                daemon=True,
            )
            # Registered before start: kill() must find every process that may exist.
            self.procs.append(proc)
            self.conns.append(parent)
            self.buffers.append(OutputBuffer(r))
            proc.start()
            child.close()
        if nodes is None or here == world:
            return
        remote = {
            n: [make_args(r) for r in range(n * here, (n + 1) * here)] for n in range(1, nnodes)
        }
        try:
            joined = nodes.launch(make_args(0).store_prefix, remote, timeout)
        except RuntimeError as e:
            raise GroupFailed(str(e)) from None
        for r in range(here, world):
            conn, handle = joined[r]
            self.procs.append(handle)  # type: ignore[arg-type]
            self.conns.append(conn)
            self.buffers.append(OutputBuffer(r))  # never grown: remote ranks send no rows

    @property
    def world(self) -> int:
        return len(self.procs)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs if p.pid is not None]

    @property
    def sentinels(self) -> list[int]:
        # Ranks on one other host share their worker's connection as a sentinel: once each.
        return list(dict.fromkeys(p.sentinel for p in self.procs if p.pid is not None))

    def alive(self) -> bool:
        return not self._killed and all(p.is_alive() for p in self.procs)

    def dead_ranks(self) -> list[tuple[int, int | None]]:
        return [(r, p.exitcode) for r, p in enumerate(self.procs) if not p.is_alive()]

    def dead_summary(self) -> str:
        return ", ".join(f"rank {r} exit code {c}" for r, c in self.dead_ranks())

    def collect(
        self, kind: type, timeout: float, what: str, interrupt: int | None = None
    ) -> list[Any]:
        """One reply of `kind` from every rank, or GroupFailed naming the rank and why.

        `interrupt`: a file descriptor that becomes readable when the wait must end early.
        """
        replies: dict[int, object] = {}
        end = time.monotonic() + timeout
        while len(replies) < self.world:
            waiting = [r for r in range(self.world) if r not in replies]
            handles: list[Any] = [self.conns[r] for r in waiting]
            handles += dict.fromkeys(self.procs[r].sentinel for r in waiting)
            if interrupt is not None:
                handles.append(interrupt)
            ready = wait(handles, timeout=max(0.0, end - time.monotonic()))
            if not ready:
                raise GroupFailed(f"{what}: no reply from ranks {waiting} in {timeout:g}s")
            if interrupt is not None and interrupt in ready:
                raise GroupFailed(f"{what}: interrupted, the engine is closing")
            for r in waiting:
                # Read a rank's last message before looking at its exit: a rank that fails
                # sends its traceback and then exits, and the traceback is what matters.
                if self.conns[r].poll():
                    replies[r] = self._receive(r, kind, what)
                elif not self.procs[r].is_alive():
                    self.procs[r].join(timeout=1)
                    code = self.procs[r].exitcode
                    raise GroupFailed(f"{what}: rank {r} exited with code {code}")
        return [replies[r] for r in range(self.world)]

    def _receive(self, r: int, kind: type, what: str) -> object:
        try:
            msg = self.conns[r].recv()
        except (EOFError, OSError):
            raise GroupFailed(f"{what}: rank {r} closed its pipe") from None
        if isinstance(msg, Failed):
            if msg.summary:  # a known cause (a peer it cannot reach), in one line
                raise GroupFailed(f"{what}: {msg.summary}")
            raise GroupFailed(f"{what}: rank {r} failed:\n{msg.traceback}")
        if not isinstance(msg, kind):
            raise GroupFailed(f"{what}: rank {r} sent {type(msg).__name__}, not {kind.__name__}")
        return msg

    def stop(self, grace: float = 5.0) -> None:
        """Ask every rank to exit; kill whatever is still running after `grace` seconds."""
        if not self._killed:
            for conn in self.conns:
                with contextlib.suppress(OSError):
                    conn.send(Stop())
            end = time.monotonic() + grace
            for p in self.procs:
                if p.pid is not None:
                    p.join(timeout=max(0.0, end - time.monotonic()))
        self.kill()

    def kill(self) -> None:
        """SIGKILL every rank and reap it. Never waits on a rank: survivors of a lost peer
        may sit in a gloo collective that will not return."""
        if self._killed:
            return
        self._killed = True
        for p in self.procs:
            if p.pid is not None and p.exitcode is None:
                with contextlib.suppress(OSError):
                    p.kill()
        for p in self.procs:
            if p.pid is not None:
                p.join(timeout=10)
        for conn in self.conns:
            conn.close()
        for b in self.buffers:
            b.close()
