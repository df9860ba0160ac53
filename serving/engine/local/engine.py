"""LocalEngine: every rank's kernels in this process; no collective on the request path.

Per batch: collate and check the ids once; copy them once to each device that holds a rank;
each kernel looks up its slots and writes every slot's rows straight into its columns of the
answer (output dist and stitch in one step, placed by the plan's column order, never by rank
order); the answer is one flat buffer, copied to the host once; split hands out views.

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
from itertools import accumulate
from typing import Any

import numpy as np
import torch

from serving.config import EngineKind, ModelSpec, WeightsSpec
from serving.engine import collate as collate_lib
from serving.engine import describe, stored, weights
from serving.engine.base import Answer, Commit, Delta
from serving.engine.collate import Request
from serving.engine.devices import default_device, gpu_count
from serving.engine.layout import Layout
from serving.engine.local.answers import AnswerBuffers
from serving.engine.local.kernel import Kernel
from serving.engine.local.placement import kernel_plans
from serving.engine.split import split
from serving.errors import EngineStartError, EngineUnavailable

# From this many looked-up rows per batch, the kernels run on the thread pool (measured with
# benchmarks/engine_bench.py: at 256 requests, ~31k rows, in turn was faster; at 4096,
# ~490k rows, the pool took a lookup from ~30 ms to ~14 ms).
PARALLEL_MIN_ROWS = 65536
# From this many looked-up rows, torch's copy kernel stitches strided [n, w] blocks ~3x faster
# than numpy's slice assignment; below it, numpy's ~4x smaller per-call overhead wins.
TORCH_COPY_MIN_ROWS = 4096
# Large batches are looked up in parts of about this many ids per key: each part's kernel
# output stays small enough to be reused by the allocator and to sit in cache until it is
# stitched, instead of fresh pages per batch, and parts spread evenly over the threads.
PART_IDS = 8192


def pinned(size: int) -> np.ndarray:
    return torch.empty(size, dtype=torch.float32, pin_memory=True).numpy()


class LocalEngine:
    kind: EngineKind = "local"

    def __init__(self, spec: ModelSpec, *, device: str | None = None, threads: int | None = None):
        self.spec = spec
        self.device = device or default_device()
        self.layout = Layout.of(spec)
        self.keys = self.layout.keys
        self.rows = self.layout.rows
        self.threads = threads or len(os.sched_getaffinity(0))  # the cores this process may use
        self.kernels: list[Kernel] = []
        self.last_timings: dict[str, float] = {}
        self._rank_device: dict[int, torch.device] = {}
        self._devices: set[torch.device] = set()
        self._buffers = AnswerBuffers()
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()  # one batch at a time: kernels and buffers are shared
        self._serving = False

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
        self.kernels = self._load(self.spec)
        self._devices = {k.device for k in self.kernels}
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
        """Every rank's kernels, filled with `spec`'s weights."""
        try:
            with torch.no_grad():
                kernels = [Kernel(p, self._rank_device[p.rank]) for p in kernel_plans(spec)]
                shards = [s for k in kernels for s in k.shards()]
                weights.fill(spec, shards, f"{spec.name} weights")
        except Exception as e:
            raise EngineStartError(f"loading '{spec.name}' failed: {e}") from e
        return kernels

    def prepare_thread(self) -> None:
        """Set up the thread that will call `forward`: on CPU, one torch thread there, as in
        the kernel workers (the setting is per thread); OpenMP's idle workers would spin
        after every small batch."""
        if self.device != "cuda":
            torch.set_num_threads(1)

    def close(self) -> None:
        with self._lock:
            self._serving = False
            self.kernels = []
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

    def forward(self, requests: Sequence[Request]) -> list[Answer]:
        if not requests:
            return []
        t0 = time.perf_counter()
        batch = collate_lib.collate(requests, self.keys, self.rows)
        t1 = time.perf_counter()
        with self._lock:
            if not self._serving:
                raise EngineUnavailable("the local engine is not running")
            # No torch.no_grad(): FBGEMM's op is called directly on buffers that need no grad.
            outputs = self._lookup(batch)
        t2 = time.perf_counter()
        answers = split(batch, outputs, requests)
        self.last_timings = {
            "collate_s": t1 - t0,
            "lookup_s": t2 - t1,
            "split_s": time.perf_counter() - t2,
        }
        return answers

    def _lookup(self, batch: collate_lib.Batch) -> dict[str, np.ndarray]:
        per_key = batch.ids_per_key().tolist()
        starts = list(accumulate(per_key, initial=0))  # each key's first id in batch.values
        on_cpu = self.device != "cuda"
        total = self.layout.offsets(per_key)[-1]
        # The answer: one flat buffer, per-key [n, dim] views. On CPU it is numpy, whose small
        # slice assignments cost ~1 us against ~4 us for torch's; on CUDA it lives on the
        # gather device and reaches the host in one copy.
        if on_cpu:
            answer: dict[str, Any] = self.layout.views(self._buffers.take(total), per_key)
        else:
            flat = torch.empty(total, device=self._rank_device[0])
            answer = self.layout.views(flat, per_key)
        values = batch.values
        # CW's input dist: the batch's ids reach each device once.
        ids = {d: torch.from_numpy(values).to(d) for d in self._devices if d.type != "cpu"}

        looked_up = sum(per_key[k] for kernel in self.kernels for k in kernel.slot_keys)
        parallel = self._pool is not None and looked_up >= PARALLEL_MIN_ROWS
        parts = -(-max(per_key) // PART_IDS) if parallel else 1
        big = looked_up >= TORCH_COPY_MIN_ROWS
        if on_cpu and big:
            answer = {k: torch.from_numpy(v) for k, v in answer.items()}

        # Each part's share of each key's ids: [lo, hi) within the key, and where those ids
        # sit in batch.values. Shared by every kernel of the part.
        ranges_of = [
            [(n * p // parts, n * (p + 1) // parts) for n in per_key] for p in range(parts)
        ]
        spans_of = [
            [slice(start + lo, start + hi) for start, (lo, hi) in zip(starts, r, strict=False)]
            for r in ranges_of
        ]

        def run(kernel: Kernel, part: int) -> None:
            ranges, spans = ranges_of[part], spans_of[part]
            sizes = [ranges[k][1] - ranges[k][0] for k in kernel.slot_keys]
            if not any(sizes):
                return
            edges = list(accumulate(sizes, initial=0))
            offsets = torch.from_numpy(np.array(edges, dtype=np.int64))  # ~3x torch.tensor's speed
            if on_cpu:
                indices = torch.from_numpy(
                    np.concatenate([values[spans[k]] for k in kernel.slot_keys])
                )
                rows: Any = kernel.lookup(indices, offsets)
                rows = rows if big else rows.numpy()
            else:
                dev = ids[kernel.device]
                indices = torch.cat([dev[spans[k]] for k in kernel.slot_keys])
                rows = kernel.lookup(indices, offsets.to(kernel.device))
            # Output dist and stitch in one step: each slot's rows go straight to its columns.
            for k, (key, copies), a, b in zip(
                kernel.slot_keys, kernel.targets, edges, edges[1:], strict=False
            ):
                if a < b:
                    lo, hi = ranges[k]
                    for s0, s1, d0, d1 in copies:
                        answer[key][lo:hi, d0:d1] = rows[a:b, s0:s1]

        jobs = [(kernel, part) for part in range(parts) for kernel in self.kernels]
        if parallel:
            assert self._pool is not None
            list(self._pool.map(lambda job: run(*job), jobs))
        else:
            for job in jobs:
                run(*job)
        if on_cpu:
            return {k: v.numpy() if big else v for k, v in answer.items()}
        host = self._buffers.take(total)
        torch.from_numpy(host).copy_(flat)  # one copy to the host, into page-locked memory
        return self.layout.views(host, per_key)

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
            k.lookup(torch.zeros(slots, dtype=torch.int64), torch.arange(slots + 1))

        def commit() -> None:
            with self._lock:
                self.spec, self.kernels = spec, kernels
            weights.release_free_memory()

        return commit

    # -- description -----------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        ranks: dict[int, dict[str, Any]] = {}
        for k in self.kernels:
            r = ranks.setdefault(
                k.plan.rank, {"rank": k.plan.rank, "device": str(k.device), "kernels": []}
            )
            r["kernels"].append(
                {
                    "width": k.plan.width,
                    "dtypes": sorted({p.dtype for p in k.plan.pieces}),
                    "shards": sum(len(p.shards) for p in k.plan.pieces),
                }
            )
        served = {
            "engine": self.kind,
            "device": self.device,
            "rank_devices": {r: str(d) for r, d in self._rank_device.items()},
            "ranks": [ranks[r] for r in sorted(ranks)],
        }
        return describe.model(self.spec, served)
