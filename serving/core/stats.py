"""Inference statistics in Triton's terms (its statistics extension, docs/protocols.md), kept
as plain integer counters: /metrics renders them, and the v2 statistics routes answer them.

Per request, `Service.predict` adds one success or failure and its duration; per engine batch,
the batcher adds the queue time of its requests and `Service` the three compute phases. No
lock: every counter is written on the event loop only (the engine thread hands its timings back
with its answer). Durations are integer nanoseconds, as Triton reports them.

As Triton counts them: a phase's count is the number of requests that went through it, and a
batch's phase time is added once per request of that batch; `batch_stats` hold, per number of
requests in a batch, how many batches ran and their own (not per-request) phase times.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

PHASES = ("compute_input", "compute_infer", "compute_output")
_TIMED = ("success", "fail", "queue", *PHASES)


@dataclass
class Duration:
    count: int = 0
    ns: int = 0

    def doc(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


@dataclass
class BatchPhases:
    """The batches of one size (requests per batch): each phase's count and total time."""

    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)


class Stats:
    __slots__ = (
        "success",
        "fail",
        "queue",
        "compute_input",
        "compute_infer",
        "compute_output",
        "executions",
        "last_inference_ms",
        "batches",
    )

    def __init__(self) -> None:
        self.success = Duration()  # answered requests, from entering predict to their rows
        self.fail = Duration()  # requests that entered predict and got no rows
        self.queue = Duration()  # from the queue to their batch's start
        self.compute_input = Duration()  # batch start to the engine thread running it
        self.compute_infer = Duration()  # the engine's forward
        self.compute_output = Duration()  # back on the event loop, answers cut per request
        self.executions = 0  # engine batches run
        self.last_inference_ms = 0  # wall-clock ms since the epoch of the last batch's end
        self.batches: dict[int, BatchPhases] = {}

    @property
    def inferences(self) -> int:
        """Requests answered (Triton's inference_count: the model declares no batch
        dimension, so one request is one inference)."""
        return self.success.count

    def answered(self, ok: bool, ns: int) -> None:
        d = self.success if ok else self.fail
        d.count += 1
        d.ns += ns

    def queued(self, requests: int, ns: int) -> None:
        self.queue.count += requests
        self.queue.ns += ns

    def computed(self, requests: int, input_ns: int, infer_ns: int, output_ns: int) -> None:
        """One engine batch of `requests` requests, its three phases."""
        self.executions += 1
        self.last_inference_ms = time.time_ns() // 1_000_000
        batch = self.batches.get(requests)
        if batch is None:
            batch = self.batches[requests] = BatchPhases()
        for name, ns in zip(PHASES, (input_ns, infer_ns, output_ns), strict=True):
            total: Duration = getattr(self, name)
            total.count += requests
            total.ns += ns * requests
            own: Duration = getattr(batch, name)
            own.count += 1
            own.ns += ns

    # -- across processes: a host's fronts count requests, its engine batches -------------

    def snapshot(self) -> dict[str, Any]:
        """Plain values: {name: [count, ns]}, executions, last_inference_ms, batches."""
        out: dict[str, Any] = {n: [getattr(self, n).count, getattr(self, n).ns] for n in _TIMED}
        out["executions"] = self.executions
        out["last_inference_ms"] = self.last_inference_ms
        out["batches"] = {
            str(size): [[getattr(b, p).count, getattr(b, p).ns] for p in PHASES]
            for size, b in self.batches.items()
        }
        return out

    @classmethod
    def of(cls, snapshot: dict[str, Any]) -> Stats:
        stats = cls()
        for n in _TIMED:
            setattr(stats, n, Duration(*snapshot[n]))
        stats.executions = snapshot["executions"]
        stats.last_inference_ms = snapshot["last_inference_ms"]
        for size, phases in snapshot["batches"].items():
            stats.batches[int(size)] = BatchPhases(*(Duration(*d) for d in phases))
        return stats

    @staticmethod
    def add(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
        """The sum of two snapshots (the latest last_inference_ms)."""
        out: dict[str, Any] = {n: [x + y for x, y in zip(a[n], b[n], strict=True)] for n in _TIMED}
        out["executions"] = a["executions"] + b["executions"]
        out["last_inference_ms"] = max(a["last_inference_ms"], b["last_inference_ms"])
        batches = {k: [list(d) for d in v] for k, v in a["batches"].items()}
        for size, phases in b["batches"].items():
            mine = batches.setdefault(size, [[0, 0] for _ in PHASES])
            for d, (count, ns) in zip(mine, phases, strict=True):
                d[0] += count
                d[1] += ns
        out["batches"] = batches
        return out

    def doc(self, name: str, version: str) -> dict[str, object]:
        """Triton's ModelStatistics, as its JSON (and, through json_format, its message)."""
        inference = {
            "success": self.success.doc(),
            "fail": self.fail.doc(),
            "queue": self.queue.doc(),
            **{p: getattr(self, p).doc() for p in PHASES},
            "cache_hit": Duration().doc(),
            "cache_miss": Duration().doc(),
        }
        batches = [
            {"batch_size": size, **{p: getattr(b, p).doc() for p in PHASES}}
            for size, b in sorted(self.batches.items())
        ]
        return {
            "name": name,
            "version": version,
            "last_inference": self.last_inference_ms,
            "inference_count": self.inferences,
            "execution_count": self.executions,
            "inference_stats": inference,
            "batch_stats": batches,
        }
