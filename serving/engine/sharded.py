"""The driver: starts the rank group, dispatches batches to it and collects the rows."""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import threading
import time
from collections.abc import Sequence
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import Any, Literal

import numpy as np
import torch
import torch.distributed as dist

from serving import collate as collate_lib
from serving.collate import Batch, Request
from serving.config import ModelSpec
from serving.engine import rank as rank_lib
from serving.engine import weights
from serving.engine.transport import Done, Failed, Forward, OutputBuffer, Ready, Stop
from serving.errors import EngineStartError, EngineUnavailable
from serving.split import split

# "split": each rank gets a contiguous slice of the requests and returns their full rows.
# "one": rank 0 gets the whole batch, the others an empty one; only rank 0 returns rows.
Dispatch = Literal["split", "one"]

Answer = dict[str, np.ndarray]


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def gpu_count() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


class ShardedEngine:
    """A column-wise sharded EmbeddingCollection served by `world_size` rank processes."""

    def __init__(
        self,
        spec: ModelSpec,
        *,
        dispatch: Dispatch = "split",
        device: str | None = None,
        threads_per_rank: int | None = None,
        start_timeout: float = 600.0,
        batch_timeout: float = 60.0,
    ):
        self.spec = spec
        self.dispatch = dispatch
        self.device = device or default_device()
        self.world = spec.sharding.world_size
        cpus = os.cpu_count() or 1
        self.threads = threads_per_rank or max(1, cpus // self.world)
        self.start_timeout = start_timeout
        self.batch_timeout = batch_timeout
        self.keys = tuple(spec.features)
        self.rows = {f: t.num_embeddings for f, t in spec.table_of().items()}
        self._lock = threading.Lock()
        self._procs: list[BaseProcess] = []
        self._conns: list[Connection] = []
        self._buffers: list[OutputBuffer] = []
        self._store: dist.TCPStore | None = None
        self._generation = 0
        self._serving = False
        # Stage times of the last batch (seconds): what the benchmark's profile reads.
        self.last_timings: dict[str, float] = {}
        self.rank_info: list[dict[str, object]] = []  # what each rank reported when ready

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """Every rank has reported warm and is still alive."""
        return self._serving and all(p.is_alive() for p in self._procs)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._procs if p.pid is not None]

    def start(self) -> None:
        weights.check(self.spec)
        if self.device == "cuda" and torch.cuda.device_count() < self.world:
            raise EngineStartError(
                f"world_size {self.world} needs {self.world} GPUs; "
                f"{torch.cuda.device_count()} found"
            )
        with self._lock:
            self._spawn()

    def _spawn(self) -> None:
        ctx = mp.get_context("spawn")
        if self._store is None:
            # The driver hosts the rendezvous store: port 0 lets the OS pick, so no race.
            self._store = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
        self._generation += 1
        for r in range(self.world):
            parent, child = ctx.Pipe(duplex=True)
            args = rank_lib.RankArgs(
                rank=r,
                spec=self.spec,
                store_port=self._store.port,
                store_prefix=f"group{self._generation}",
                device=self.device,
                threads=self.threads,
                parent_pid=os.getpid(),
            )
            proc = ctx.Process(
                target=rank_lib.main, args=(args, child), name=f"seqserve-rank{r}", daemon=True
            )
            proc.start()
            child.close()
            self._procs.append(proc)
            self._conns.append(parent)
            self._buffers.append(OutputBuffer(r))
        try:
            self.rank_info = [r.info for r in self._collect(Ready, self.start_timeout, "start")]
            self._serving = True
        except EngineUnavailable as e:
            self._stop_ranks()
            raise EngineStartError(str(e)) from None

    def close(self) -> None:
        with self._lock:
            self._stop_ranks()

    def _stop_ranks(self) -> None:
        self._serving = False
        for conn in self._conns:
            with contextlib.suppress(OSError):
                conn.send(Stop())
        for p in self._procs:
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
                p.join()
        for conn in self._conns:
            conn.close()
        for b in self._buffers:
            b.close()
        self._procs, self._conns, self._buffers = [], [], []

    def __enter__(self) -> ShardedEngine:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- serving ---------------------------------------------------------------------------

    def forward(self, requests: Sequence[Request]) -> list[Answer]:
        """Rows for each request: {feature: float32 [n_ids, dim]} for every feature it names."""
        if not requests:
            return []
        if self.dispatch == "one":
            parts = [slice(0, len(requests))]
        else:
            parts = collate_lib.slices(requests, self.world)
        t0 = time.perf_counter()
        batches = [collate_lib.collate(requests[s], self.keys, self.rows) for s in parts]
        with self._lock:
            if not self.ready:
                raise EngineUnavailable("the rank group is not running")
            t1 = time.perf_counter()
            rows = self._run(batches)
        t2 = time.perf_counter()
        answers: list[Answer] = []
        for s, batch, out in zip(parts, batches, rows, strict=False):
            answers.extend(split(batch, out, requests[s]))
        self.last_timings["collate_s"] = t1 - t0
        self.last_timings["split_s"] = time.perf_counter() - t2
        return answers

    def _run(self, batches: list[Batch]) -> list[dict[str, np.ndarray]]:
        dim = self.spec.embedding_dim
        idle = Forward(self.keys, np.zeros(len(self.keys), np.int32), np.zeros(0, np.int64))
        for r, conn in enumerate(self._conns):
            if r < len(batches):
                b = batches[r]
                pid = self._procs[r].pid
                assert pid is not None
                self._buffers[r].ensure(b.values.size * dim * 4, conn, pid)
                conn.send(Forward(b.keys, b.lengths, b.values))
            else:
                # Every rank joins every collective; an idle one looks up one empty sequence
                # per key (TorchRec's output construction rejects a stride of 0).
                conn.send(idle)
        t0 = time.perf_counter()
        done = self._collect(Done, self.batch_timeout, "forward")
        t1 = time.perf_counter()
        outputs = []
        for r, b in enumerate(batches):
            counts = done[r].rows
            if counts != tuple(int(n) for n in b.ids_per_key()):
                raise EngineUnavailable(f"rank {r} returned {counts} rows per key")
            # One copy out of the shared buffer: the next batch overwrites it.
            flat = self._buffers[r].rows(sum(counts), dim).copy()
            edges = np.cumsum((0, *counts))
            outputs.append({k: flat[edges[i] : edges[i + 1]] for i, k in enumerate(b.keys)})
        self.last_timings = {
            "ranks_s": t1 - t0,
            "lookup_s": max(d.lookup_s for d in done),
            "rank_copy_s": max(d.copy_s for d in done),
            "copy_out_s": time.perf_counter() - t1,
        }
        return outputs

    def _collect(self, kind: type, timeout: float, what: str) -> list[Any]:
        """One reply of `kind` from every rank, or EngineUnavailable naming the rank and why."""
        replies: dict[int, object] = {}
        deadline = _Deadline(timeout)
        while len(replies) < self.world:
            waiting = [r for r in range(self.world) if r not in replies]
            handles: list[Any] = [self._conns[r] for r in waiting]
            handles += [self._procs[r].sentinel for r in waiting]
            if not wait(handles, timeout=deadline.left()):
                raise self._fail(f"{what}: no reply from ranks {waiting} in {timeout:.0f}s")
            for r in waiting:
                # Read a rank's last message before looking at its exit: a rank that fails
                # sends its traceback and then exits, and the traceback is what matters.
                if self._conns[r].poll():
                    replies[r] = self._receive(r, kind, what)
                elif not self._procs[r].is_alive():
                    self._procs[r].join(timeout=1)
                    code = self._procs[r].exitcode
                    raise self._fail(f"{what}: rank {r} exited with code {code}")
        return [replies[r] for r in range(self.world)]

    def _receive(self, r: int, kind: type, what: str) -> object:
        try:
            msg = self._conns[r].recv()
        except EOFError:
            raise self._fail(f"{what}: rank {r} closed its pipe") from None
        if isinstance(msg, Failed):
            raise self._fail(f"{what}: rank {r} failed:\n{msg.traceback}")
        if not isinstance(msg, kind):
            raise self._fail(f"{what}: rank {r} sent {type(msg).__name__}, not {kind.__name__}")
        return msg

    def _fail(self, message: str) -> EngineUnavailable:
        # A group that lost a rank or a reply cannot run another collective: stop all of it.
        self._stop_ranks()
        return EngineUnavailable(message)


class _Deadline:
    def __init__(self, seconds: float):
        self._end = time.monotonic() + seconds

    def left(self) -> float:
        return max(0.0, self._end - time.monotonic())
