"""The driver: starts the rank group, dispatches batches to it and collects the rows.

A supervisor thread watches the group. When a rank dies, fails, or misses `batch_timeout`,
the batch in flight gets EngineUnavailable at once, the whole group is killed, and a fresh
generation is started in the background with exponential back-off between failed attempts.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
import torch.distributed as dist

from serving.config import EngineKind, ModelSpec, WeightsSpec, with_engine
from serving.engine import collate as collate_lib
from serving.engine import describe, weights
from serving.engine.base import Answer, Commit, Delta, Ids
from serving.engine.collate import Batch
from serving.engine.devices import default_device
from serving.engine.distributed import rank as rank_lib
from serving.engine.distributed.group import GroupFailed, RankGroup, RestartAttempt
from serving.engine.distributed.lookup import idle_batch
from serving.engine.distributed.netif import Cluster
from serving.engine.distributed.nodes import Nodes, listen, rendezvous_store
from serving.engine.distributed.supervisor import Supervisor
from serving.engine.distributed.transport import Done, Forward, Ready, Update
from serving.engine.layout import Layout
from serving.engine.split import split
from serving.errors import EngineStartError, EngineUnavailable

log = logging.getLogger("seqserve")

# "split": each rank gets a contiguous slice of the requests and returns their full rows.
# "one": rank 0 gets the whole batch, the others an empty one; only rank 0 returns rows.
Dispatch = Literal["split", "one"]
State = Literal["stopped", "serving", "restarting"]


class DistributedEngine:
    """A column-wise sharded EmbeddingCollection served by `world_size` rank processes that
    run TorchRec's DistributedModelParallel (gloo on CPU, NCCL with the host's i-th rank on
    cuda:i).

    Restarts: the first attempt after a failure is immediate; each failed attempt doubles the
    wait before the next, from `restart_backoff` up to `restart_backoff_max` seconds. A group
    that dies again soon after a restart keeps the grown delay (no tight crash loop); one that
    served for `restart_backoff_max` seconds starts the count afresh.
    """

    def __init__(
        self,
        spec: ModelSpec,
        *,
        dispatch: Dispatch = "split",
        device: str | None = None,
        threads_per_rank: int | None = None,
        start_timeout: float = 600.0,
        batch_timeout: float = 60.0,
        restart_backoff: float = 0.5,
        restart_backoff_max: float = 30.0,
        nnodes: int = 1,
        master: tuple[str, int] = ("127.0.0.1", 0),
        cluster_key: bytes = b"",
        cluster_interface: str = "",
        join_timeout: float = 20.0,
    ):
        self.kind: EngineKind = "distributed"
        self.inline_ids = 0  # a batch waits on rank processes: never on the event loop
        self.spec = with_engine(spec, "distributed")
        # Across hosts (nnodes > 1) rank 0, here, takes the whole batch: the other hosts'
        # ranks have no shared memory with the driver to return rows through.
        self.dispatch: Dispatch = "one" if nnodes > 1 else dispatch
        self.nnodes = nnodes
        self.master = master  # where workers and their ranks reach the front (nnodes > 1)
        self.cluster_key = cluster_key
        self.cluster_interface = cluster_interface  # empty: the one the workers reach
        self.join_timeout = join_timeout
        self.nodes: Nodes | None = None
        self.cluster: Cluster | None = None  # this host's interface to the others (nnodes > 1)
        self.device = device or default_device()
        self.world = spec.sharding.world_size
        cpus = os.cpu_count() or 1
        self.threads = threads_per_rank or max(1, cpus // self.world)
        self.start_timeout = start_timeout
        self.batch_timeout = batch_timeout
        self.layout = Layout.of(spec)
        self.keys = self.layout.keys
        self.rows = self.layout.rows
        # Held while a batch runs and while the group is swapped, never while one starts, so
        # forward() answers at once during a restart.
        self._lock = threading.Lock()
        self._state: State = "stopped"
        self._group: RankGroup | None = None
        self._store: dist.TCPStore | None = None
        self._generation = 0
        self._closing = threading.Event()
        # Written once by close(): wakes the supervisor out of any wait on processes or pipes.
        self._wake_r, self._wake_w = -1, -1
        # Every group that may still have processes, so close() leaves none behind.
        self._groups: set[RankGroup] = set()
        self._groups_lock = threading.Lock()
        self.last_failure: str | None = None
        # Restarts a failed group, with back-off; a worker joining (nodes) ends its wait.
        self.supervisor = Supervisor(self, restart_backoff, restart_backoff_max)
        # Stage times of the last batch (seconds): what the benchmark's profile reads.
        self.last_timings: dict[str, float] = {}
        self.rank_info: list[dict[str, object]] = []  # what each rank reported when ready
        # Row updates since the weights were loaded, in order: a group started after a failure
        # replays them, so it comes back at the latest version. Held in memory (their size).
        self._history: list[Delta] = []

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """Every rank has reported warm and is still alive."""
        group = self._group
        return self._state == "serving" and group is not None and group.alive()

    @property
    def pids(self) -> list[int]:
        group = self._group
        return group.pids if group is not None else []

    def start(self) -> None:
        """Start the group; a rank that fails here raises EngineStartError (no retry), and so
        does close() called meanwhile."""
        self._closing.clear()
        weights.check(self.spec)
        here = self.world // self.nnodes  # ranks on this host, one GPU each
        if self.device == "cuda" and torch.cuda.device_count() < here:
            raise EngineStartError(
                f"world_size {self.world} over {self.nnodes} host(s) needs {here} GPUs here; "
                f"{torch.cuda.device_count()} found"
            )
        if self.nnodes > 1:  # listening first, so that close() can end the wait
            self.nodes = listen(
                self.master, self.cluster_key, self.nnodes, self.world, self.supervisor.retry.set
            )
            self.nodes.await_workers(self.start_timeout, self._closing, self.join_timeout)
            self.cluster = self.nodes.cluster(self.cluster_interface)
        with self._lock:
            if self._state != "stopped":
                raise EngineStartError("the engine is already started")
            try:
                group = self._launch(self.spec)
            except GroupFailed as e:
                raise EngineStartError(str(e)) from None
            self._wake_r, self._wake_w = os.pipe()
            self._install(group)
        self.supervisor.start()

    def close(self) -> None:
        """Stop the supervisor and every rank, also in the middle of a restart."""
        self._closing.set()
        if self._wake_w >= 0:
            with contextlib.suppress(OSError):
                os.write(self._wake_w, b"x")
        if self.nodes is not None:
            self.nodes.close()  # ends a launch on other hosts, or the wait for their workers
        supervisor_done = self.supervisor.stop()
        with self._lock:
            self._state = "stopped"
            group, self._group = self._group, None
            if group is not None:
                group.stop()
                self._forget(group)
        with self._groups_lock:
            leftovers, self._groups = list(self._groups), set()
        for g in leftovers:
            g.kill()
        if supervisor_done:
            for fd in (self._wake_r, self._wake_w):
                if fd >= 0:
                    os.close(fd)
            self._wake_r, self._wake_w = -1, -1

    @property
    def restarts(self) -> int:
        """Groups brought back by the supervisor."""
        return self.supervisor.restarts

    @property
    def restart_attempts(self) -> deque[RestartAttempt]:
        return self.supervisor.attempts

    def __enter__(self) -> DistributedEngine:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _launch(
        self, spec: ModelSpec, interrupt: int | None = None, replay: bool = True
    ) -> RankGroup:
        """A new generation serving `spec`, every rank warm and, with `replay`, holding every
        row update applied so far; GroupFailed (and nothing left running) if not."""
        if self._store is None:
            self._store = rendezvous_store(self.master[1] + 1 if self.nodes else 0)
        store_port = self._store.port
        self._generation += 1
        group = RankGroup(self._generation)
        with self._groups_lock:
            self._groups.add(group)

        def make_args(r: int) -> rank_lib.RankArgs:
            return rank_lib.RankArgs(
                rank=r,
                spec=spec,
                store_port=store_port,
                # A fresh prefix per generation: keys left by a killed group are never read.
                store_prefix=f"group{group.generation}",
                device=self.device,
                threads=self.threads,
                parent_pid=os.getpid(),
                node=r // (self.world // self.nnodes),
                local_rank=r % (self.world // self.nnodes),
                cluster=self.cluster,
                join_timeout=self.join_timeout,
            )

        try:
            group.spawn(make_args, self.world, self.nodes, self.nnodes, self.start_timeout)
            replies = group.collect(Ready, self.start_timeout, "start", interrupt)
            for delta in self._history if replay else []:
                self._send_update(group, delta)
        except BaseException:
            group.kill()
            self._forget(group)
            raise
        group.info = [r.info for r in replies]
        group.up_since = time.monotonic()
        return group

    def _install(self, group: RankGroup) -> None:
        self._group = group
        self.rank_info = group.info
        self._state = "serving"

    def _forget(self, group: RankGroup) -> None:
        with self._groups_lock:
            self._groups.discard(group)

    def _take_down(self, group: RankGroup, reason: str) -> None:
        """Kill a failed group and hand the restart to the supervisor. Holds self._lock."""
        if self._group is group:
            self._group = None
            self._state = "restarting"
            self.last_failure = reason
            log.warning("rank group %d failed, restarting it: %s", group.generation, reason)
        group.kill()  # its sentinels fire: that is what wakes the supervisor
        self._forget(group)

    # -- serving ---------------------------------------------------------------------------

    def forward(self, requests: Sequence[Ids]) -> list[Answer]:
        """Rows for each request: {feature: float32 [n_ids, dim]} for every feature it names."""
        if not requests:
            return []
        self._check_serving()  # before collating: a restart answers at once
        if self.dispatch == "one":
            parts = [slice(0, len(requests))]
        else:
            parts = collate_lib.slices(requests, self.world)
        t0 = time.perf_counter()
        batches = [collate_lib.collate(requests[s], self.keys) for s in parts]
        with self._lock:
            self._check_serving()
            group = self._group
            assert group is not None
            if not group.alive():
                dead = group.dead_summary()
                self._take_down(group, dead)
                raise EngineUnavailable(f"the rank group lost a rank ({dead}); restarting it")
            t1 = time.perf_counter()
            try:
                rows = self._run(group, batches)
            except GroupFailed as e:
                # A group that lost a rank or a reply cannot run another collective.
                self._take_down(group, str(e))
                raise EngineUnavailable(f"{e}; restarting the rank group") from None
        t2 = time.perf_counter()
        answers: list[Answer] = []
        for s, batch, out in zip(parts, batches, rows, strict=False):
            answers.extend(split(batch, out, requests[s]))
        self.last_timings["collate_s"] = t1 - t0
        self.last_timings["split_s"] = time.perf_counter() - t2
        return answers

    # -- weight updates --------------------------------------------------------------------

    def _send_update(self, group: RankGroup, delta: Delta) -> None:
        message = Update({n: (t.ids, t.rows) for n, t in delta.items()})
        for conn in group.conns:
            conn.send(message)
        group.collect(Done, self.batch_timeout, "update")

    def prepare_update(self, delta: Delta) -> Commit:
        def commit() -> None:
            with self._lock:
                self._check_serving()
                group = self._group
                assert group is not None
                self._history.append(delta)  # from here on, a restarted group holds it too
                try:
                    self._send_update(group, delta)
                    return
                except (GroupFailed, OSError) as e:
                    self._take_down(group, f"{e}")
            self._await_serving(f"a rank failed during the update ({self.last_failure})")

        return commit

    def _await_serving(self, why: str) -> None:
        """Wait for the supervisor to bring a group back (it replays every update)."""
        end = time.monotonic() + self.start_timeout
        while not self.ready:
            if self._closing.is_set() or time.monotonic() > end:
                raise EngineUnavailable(f"{why}; the rank group is not back yet")
            time.sleep(0.05)

    def prepare_reload(self, new: WeightsSpec) -> Commit:
        spec = self.spec.model_copy(update={"weights": new})
        weights.check(spec)
        try:
            group = self._launch(spec, replay=False)  # beside the serving group
        except GroupFailed as e:
            raise EngineStartError(str(e)) from None

        def commit() -> None:
            with self._lock:
                old, self.spec, self._history = self._group, spec, []
                self._install(group)
            if old is not None:
                old.stop()
                self._forget(old)

        return commit

    def describe(self) -> dict[str, Any]:
        here, cuda = self.world // self.nnodes, self.device == "cuda"
        devices = {r: f"cuda:{r % here}" if cuda else "cpu" for r in range(self.world)}
        group = self._group
        where = ("node", "host", "address", "interface")  # as each rank reported when ready
        return describe.model(
            self.spec,
            {
                "engine": self.kind,
                "device": self.device,
                "dispatch": self.dispatch,
                "nnodes": self.nnodes,
                "rank_devices": devices,
                # Every rank, also before one is up (then with no pid): the bytes are per rank.
                "ranks": [
                    {"rank": r, "device": devices[r], "pid": info.get("pid")}
                    | {k: info[k] for k in where if k in info}
                    for r, info in enumerate(self._rank_info(group))
                ],
            },
        )

    def _rank_info(self, group: RankGroup | None) -> list[dict[str, Any]]:
        """What each rank reported when ready, or nothing for a rank not up."""
        info = group.info if group is not None else []
        return [dict(info[r]) if r < len(info) else {} for r in range(self.world)]

    def _check_serving(self) -> None:
        if self._state == "restarting":
            first = (self.last_failure or "").split("\n", 1)[0]
            raise EngineUnavailable(f"restarting the rank group after a failure ({first})")
        if self._state != "serving":
            raise EngineUnavailable("the rank group is not running")

    def _run(self, group: RankGroup, batches: list[Batch]) -> list[dict[str, np.ndarray]]:
        idle = Forward(self.keys, *idle_batch(self.keys))
        for r, conn in enumerate(group.conns):
            try:
                if r < len(batches):
                    b = batches[r]
                    pid = group.procs[r].pid
                    assert pid is not None
                    size = self.layout.offsets(b.ids_per_key().tolist())[-1]
                    group.buffers[r].ensure(size * 4, conn, pid)
                    conn.send(Forward(b.keys, b.lengths, b.values))
                else:
                    # Every rank joins every collective; an idle one looks up one empty
                    # sequence per key (TorchRec's output construction rejects a stride of 0).
                    conn.send(idle)
            except OSError as e:  # the rank died since the liveness check
                raise GroupFailed(f"forward: cannot reach rank {r}: {e}") from None
        t0 = time.perf_counter()
        done = group.collect(Done, self.batch_timeout, "forward")
        t1 = time.perf_counter()
        outputs = []
        for r, b in enumerate(batches):
            counts = done[r].rows
            if counts != tuple(int(n) for n in b.ids_per_key()):
                # Out of step with its peers: this group cannot be trusted with another batch.
                raise GroupFailed(f"forward: rank {r} returned {counts} rows per key")
            # One copy out of the shared buffer: the next batch overwrites it.
            flat = group.buffers[r].floats(self.layout.offsets(counts)[-1]).copy()
            outputs.append(self.layout.views(flat, counts))
        self.last_timings = {
            "ranks_s": t1 - t0,
            "lookup_s": max(d.lookup_s for d in done),
            "rank_copy_s": max(d.copy_s for d in done),
            "copy_out_s": time.perf_counter() - t1,
        }
        return outputs
