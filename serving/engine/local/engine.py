"""LocalEngine: every rank's kernels in this process; no collective on the request path.

Per batch: collate the requests once; look their ids up in every pack's kernels (a pack: the
ranks of one device by default, see placement.py), where a table held whole is read once per
id and its kernel's output is the answer, and column shards are stitched into their columns,
placed by the plan's column order, never by rank order; split hands out views of the rows.

On a CUDA host rank r lives on `cuda:(r % gpus)`, so several ranks may share a GPU (which
NCCL forbids and this engine does not mind), and the answer is gathered on the first device.
On CPU, large batches run the kernels on a thread per core: FBGEMM's op releases the GIL.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from serving.config import EngineKind, ModelSpec, WeightsSpec
from serving.engine import describe, stored, weights
from serving.engine.base import Answer, Commit, Delta, Ids
from serving.engine.collate import collate
from serving.engine.devices import default_device, gpu_count
from serving.engine.layout import Layout
from serving.engine.local.answers import AnswerBuffers
from serving.engine.local.kernel import Kernel
from serving.engine.local.lookup import Lookup
from serving.engine.local.placement import kernel_plans, packs
from serving.engine.split import split_parts
from serving.errors import EngineStartError, EngineUnavailable


def pinned(size: int) -> np.ndarray:
    return torch.empty(size, dtype=torch.float32, pin_memory=True).numpy()


INLINE_IDS = 4096


class LocalEngine:
    kind: EngineKind = "local"

    def __init__(self, spec: ModelSpec, *, device: str | None = None, threads: int | None = None):
        self.spec = spec
        self.device = device or default_device()
        # Measured on the demo, 2 cores: computing batches of up to 4096 ids on the event loop
        # rather than handing them to a thread gave 1.1-1.5x the req/s at 1, 8 and 32 clients
        # and 0.12-0.13 ms of server CPU a request against 0.15-0.18 (no thread wake-up, no
        # GIL hand-over per batch). Such a batch takes ~0.3 ms; bigger ones, and CUDA's, which
        # wait on the device, go to the engine thread so the loop keeps serving.
        self.inline_ids = INLINE_IDS if self.device != "cuda" else 0
        self.layout = Layout.of(spec)
        self.keys = self.layout.keys
        self.rows = self.layout.rows
        self.threads = threads or len(os.sched_getaffinity(0))  # the cores this process may use
        self.last_timings: dict[str, float] = {}
        self._rank_device: dict[int, torch.device] = {}
        self._packs: list[tuple[int, ...]] = []
        self._lookup = Lookup([], self.layout)
        self._buffers = AnswerBuffers()
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()  # one batch at a time: kernels and buffers are shared
        self._serving = False

    @property
    def kernels(self) -> list[Kernel]:
        return self._lookup.kernels

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self._serving

    def start(self) -> None:
        weights.check(self.spec)
        world = self.spec.sharding.world_size
        if self.device == "cuda":
            gpus = gpu_count()
            if not gpus:
                raise EngineStartError("device cuda asked for, but CUDA is not available")
            self._rank_device = {r: torch.device("cuda", r % gpus) for r in range(world)}
            self._buffers = AnswerBuffers(allocate=pinned)
        else:
            self._rank_device = {r: torch.device("cpu") for r in range(world)}
        ranks_on = [self._rank_device[r] for r in range(world)]
        self._packs = packs(ranks_on, self.spec.sharding.pack)
        self._lookup = Lookup(self._load(self.spec), self.layout)
        if self.device == "cpu" and self.threads > 1:
            # One torch thread per worker (the setting is per thread): the workers already
            # use every core, and nested parallel copies only contend (measured at 4096
            # requests: 17 ms a lookup against 41 ms with 2 threads each).
            self._pool = ThreadPoolExecutor(
                self.threads,
                thread_name_prefix="seqserve-kernel",
                initializer=torch.set_num_threads,
                initargs=(1,),
            )
        self._serving = True
        self._warm_up()

    def _load(self, spec: ModelSpec) -> list[Kernel]:
        """Every pack's kernels, filled with `spec`'s weights."""
        try:
            with torch.no_grad():
                kernels = [
                    Kernel(p, self._rank_device[p.ranks[0]])
                    for p in kernel_plans(spec, self._packs)
                ]
                shards = [s for k in kernels for s in k.shards()]
                weights.fill(spec, shards, f"{spec.name} weights")
        except Exception as e:
            raise EngineStartError(f"loading '{spec.name}' failed: {e}") from e
        return kernels

    def close(self) -> None:
        with self._lock:
            self._serving = False
            self._lookup = Lookup([], self.layout)
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None

    def __enter__(self) -> LocalEngine:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _warm_up(self) -> None:
        # The first call of each kernel allocates; pay it here, not in the first request.
        self.forward([{k: np.array([0, r - 1], dtype=np.int64) for k, r in self.rows.items()}])

    # -- serving ---------------------------------------------------------------------------

    def forward(self, requests: Sequence[Ids]) -> list[Answer]:
        if not requests:
            return []
        t0 = time.perf_counter()
        batch = collate(requests, self.keys)
        t1 = time.perf_counter()
        with self._lock:
            if not self._serving:
                raise EngineUnavailable("the local engine is not running")
            # No torch.no_grad(): FBGEMM's op is called directly on buffers that need no grad.
            if self.device == "cuda":
                parts = self._lookup.cuda(batch, self._buffers)
            else:
                # One torch thread on the calling thread, as on the kernel workers (the setting
                # is per thread): FBGEMM's op on 2 OpenMP threads took 7.8 ms for a 32-request
                # batch (0.37 ms on one) while the other core was busy with HTTP; big batches
                # get their parallelism from the workers.
                if torch.get_num_threads() != 1:
                    torch.set_num_threads(1)
                parts = self._lookup.cpu(batch, self._buffers, self._pool, self.threads)
        t2 = time.perf_counter()
        answers = split_parts(batch, parts, requests)
        self.last_timings = {
            "collate_s": t1 - t0,
            "lookup_s": t2 - t1,
            "split_s": time.perf_counter() - t2,
        }
        return answers

    # -- weight updates --------------------------------------------------------------------

    def prepare_update(self, delta: Delta) -> Commit:
        dtypes = {t.name: t.dtype for t in self.spec.tables}
        with torch.no_grad():  # quantize here, outside the commit
            ready = {
                name: (
                    torch.from_numpy(t.ids),
                    stored.encode(torch.from_numpy(t.rows), dtypes[name]),
                )
                for name, t in delta.items()
            }

        def commit() -> None:
            with self._lock, torch.no_grad():
                for kernel in self.kernels:
                    for shard in kernel.shards():
                        if shard.table in ready:
                            shard.write_ids(*ready[shard.table])

        return commit

    def prepare_reload(self, new: WeightsSpec) -> Commit:
        spec = self.spec.model_copy(update={"weights": new})
        weights.check(spec)
        kernels = self._load(spec)  # beside the served ones: twice the weights' memory, a while
        for k in kernels:  # the first call of a kernel allocates: not in a request
            slots = len(k.plan.slots)
            k.lookup(
                torch.zeros(slots, dtype=torch.int64, device=k.device),
                torch.arange(slots + 1, device=k.device),
            )

        lookup = Lookup(kernels, self.layout)

        def commit() -> None:
            with self._lock:
                self.spec, self._lookup = spec, lookup
            weights.release_free_memory()

        return commit

    # -- description -----------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        devices = []
        for i, ranks in enumerate(self._packs):
            kernels = [
                {
                    "width": k.plan.width,
                    "dtypes": sorted({p.dtype for p in k.plan.pieces}),
                    "shards": sum(len(p.shards) for p in k.plan.pieces),
                    "tables": [p.table for p in k.plan.pieces],
                }
                for k in self.kernels
                if k.plan.pack == i
            ]
            device = str(self._rank_device[ranks[0]])
            devices.append({"device": device, "ranks": list(ranks), "kernels": kernels})
        served = {
            "engine": self.kind,
            "device": self.device,
            "pack": self.spec.sharding.pack,
            "rank_devices": {r: str(d) for r, d in self._rank_device.items()},
            "ranks": [{"rank": r, "device": str(d)} for r, d in self._rank_device.items()],
            "devices": devices,
        }
        return describe.model(self.spec, served)
