"""One batch through a set of kernels: the local engine's input dist, lookup, output dist and
stitch, on CPU or CUDA.

A slot whose piece is the whole table (every slot on a CPU by default) is not stitched at all:
its rows in the kernel's output are the answer's rows, handed out as views. A slot holding some
of its table's columns copies them into its feature's columns of one answer buffer, placed by
the plan's column order, never by rank order.

On CPU, large batches are cut into parts of consecutive requests and the (kernel, part) jobs run
on a thread pool: FBGEMM's op and torch's copies release the GIL. A part's kernel output is
small enough (`PART_IDS`) that glibc hands it out from its heap again once the caller drops the
answers, instead of fresh pages from the kernel (a fresh 63 MB output costs ~30 ms of page
faults here, more than the whole lookup).
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from itertools import accumulate
from typing import Any

import numpy as np
import torch

from serving.engine.collate import Batch
from serving.engine.layout import Layout
from serving.engine.local.answers import AnswerBuffers
from serving.engine.local.kernel import Kernel
from serving.engine.split import Part

# From this many looked-up rows per batch, the kernels run on the thread pool (measured with
# benchmarks/engine_bench.py: at 256 requests, ~31k rows, in turn was faster; at 4096,
# ~490k rows, the pool took a lookup from ~30 ms to ~14 ms).
PARALLEL_MIN_ROWS = 65536
# From this many looked-up rows, torch's copy kernel stitches strided [n, w] blocks ~3x faster
# than numpy's slice assignment; below it, numpy's ~4x smaller per-call overhead wins.
TORCH_COPY_MIN_ROWS = 4096
# Large batches are looked up in parts of about this many ids: 4 MB of output at dim 64, under
# glibc's largest mmap threshold (32 MB), so freed outputs are reused from its heap.
PART_IDS = 16384


class Lookup:
    """The served kernels and what every batch needs of them, fixed at load."""

    def __init__(self, kernels: Sequence[Kernel], layout: Layout):
        self.kernels = list(kernels)
        self.layout = layout
        self.devices = {k.device for k in self.kernels}
        self.stitched = {s.key for k in self.kernels for s in k.plan.slots if not s.whole}
        # A kernel whose slots are consecutive keys takes a whole batch's ids as they are.
        self.consecutive = [
            all(b == a + 1 for a, b in zip(k.slot_keys, k.slot_keys[1:], strict=False))
            for k in self.kernels
        ]

    def cpu(
        self, batch: Batch, buffers: AnswerBuffers, pool: ThreadPoolExecutor | None, workers: int
    ) -> list[Part]:
        """The batch's rows on CPU, in parts of consecutive requests; `pool` has `workers`."""
        per_key = batch.ids_per_key().tolist()
        looked_up = sum(per_key[k] for kernel in self.kernels for k in kernel.slot_keys)
        parallel = pool is not None and looked_up >= PARALLEL_MIN_ROWS
        ends = _cuts(batch, looked_up, workers if parallel else 1)
        starts = list(accumulate(per_key, initial=0))  # each key's first id in batch.values
        bounds = batch.offsets[:, [0, *ends]].tolist()  # [key][part edge] within the key
        big = looked_up >= TORCH_COPY_MIN_ROWS
        answer: dict[str, Any] = {}
        if self.stitched:
            counts = [
                n if k in self.stitched else 0 for k, n in zip(batch.keys, per_key, strict=True)
            ]
            answer = self.layout.views(buffers.take(self.layout.offsets(counts)[-1]), counts)
            if big:
                answer = {k: torch.from_numpy(v) for k, v in answer.items()}

        def run(job: tuple[int, int]) -> dict[str, np.ndarray]:
            i, part = job
            kernel = self.kernels[i]
            spans = [(bounds[k][part], bounds[k][part + 1]) for k in kernel.slot_keys]
            edges = list(accumulate((hi - lo for lo, hi in spans), initial=0))
            out: dict[str, np.ndarray] = {}
            if edges[-1] == 0:
                for s in kernel.plan.slots:
                    if s.whole:
                        out[s.key] = np.zeros((0, kernel.plan.width), dtype=np.float32)
                return out
            first, last = kernel.slot_keys[0], kernel.slot_keys[-1]
            if self.consecutive[i] and len(ends) == 1:
                indices = batch.values[starts[first] : starts[last] + per_key[last]]
            else:
                indices = np.concatenate(
                    [
                        batch.values[starts[k] + lo : starts[k] + hi]
                        for k, (lo, hi) in zip(kernel.slot_keys, spans, strict=True)
                    ]
                )
            # torch.from_numpy: ~3x torch.tensor's speed on a short list's array
            offsets = torch.from_numpy(np.array(edges, dtype=np.int64))
            rows = kernel.lookup(torch.from_numpy(indices), offsets)
            flat = rows.numpy()
            for s, (lo, hi), a, b in zip(kernel.plan.slots, spans, edges, edges[1:], strict=False):
                if s.whole:
                    out[s.key] = flat[a:b]
                    continue
                src = rows if big else flat
                for s0, s1, d0, d1 in s.copies:
                    answer[s.key][lo:hi, d0:d1] = src[a:b, s0:s1]
            return out

        jobs = [(i, part) for part in range(len(ends)) for i in range(len(self.kernels))]
        done = list((pool.map if pool is not None and parallel else map)(run, jobs))
        parts: list[Part] = []
        for part, end in enumerate(ends):
            outputs: dict[str, np.ndarray] = {}
            for out in done[part * len(self.kernels) : (part + 1) * len(self.kernels)]:
                outputs.update(out)
            for k, key in enumerate(batch.keys):
                if key in self.stitched:
                    view = answer[key][bounds[k][part] : bounds[k][part + 1]]
                    outputs[key] = view.numpy() if big else view
            parts.append((end, outputs))
        return parts

    def cuda(self, batch: Batch, buffers: AnswerBuffers) -> list[Part]:
        """The batch's rows on GPUs: the ids reach each device once, every slot's rows go to
        its columns of one answer on the first kernel's device, which reaches the host in one
        copy into page-locked memory."""
        per_key = batch.ids_per_key().tolist()
        starts = list(accumulate(per_key, initial=0))
        total = self.layout.offsets(per_key)[-1]
        flat = torch.empty(total, device=self.kernels[0].device)
        answer = self.layout.views(flat, per_key)
        values = torch.from_numpy(batch.values)
        ids = {d: values.to(d) for d in self.devices}  # CW's input dist
        for kernel in self.kernels:
            sizes = [per_key[k] for k in kernel.slot_keys]
            if not any(sizes):
                continue
            edges = list(accumulate(sizes, initial=0))
            dev = ids[kernel.device]
            indices = torch.cat([dev[starts[k] : starts[k] + per_key[k]] for k in kernel.slot_keys])
            offsets = torch.tensor(edges, dtype=torch.int64, device=kernel.device)
            rows = kernel.lookup(indices, offsets)
            for s, a, b in zip(kernel.plan.slots, edges, edges[1:], strict=False):
                for s0, s1, d0, d1 in s.copies:  # a whole table: one contiguous copy
                    answer[s.key][:, d0:d1] = rows[a:b, s0:s1]  # peer copy across GPUs
        host = buffers.take(total)
        torch.from_numpy(host).copy_(flat)  # one copy to the host, into page-locked memory
        return [(batch.stride, self.layout.views(host, per_key))]


def _cuts(batch: Batch, looked_up: int, workers: int) -> list[int]:
    """Ends of parts of consecutive requests of about equal id counts: one part unless the
    batch runs on the pool, then at least one per worker and at most PART_IDS ids each."""
    if workers <= 1 and looked_up < PART_IDS:
        return [batch.stride]
    count = max(workers, -(-looked_up // PART_IDS))
    per_request = np.cumsum(batch.lengths_by_key().sum(axis=0))
    targets = per_request[-1] * np.arange(1, count) / count
    ends = np.searchsorted(per_request, targets) + 1
    return sorted({int(e) for e in ends if 0 < e < batch.stride} | {batch.stride})
