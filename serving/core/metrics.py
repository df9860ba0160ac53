"""Prometheus metrics, kept as plain counters and rendered when /metrics is read.

Requests are counted and timed on every answer, so that path is plain Python: a counter and a
bucket index per (route, status) (prometheus_client's own children take a lock and walk every
bucket per call). Every counter is also a plain value in `snapshot()`: a host with several
front processes adds their snapshots and the engine's into one (`add`), so /metrics on any
front renders the host's totals (`exposition`). The figures are exact: every observation is
counted, none is sampled.
"""

from __future__ import annotations

import os
from bisect import bisect_left
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from serving.core.stats import PHASES, Stats

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
IDS_BUCKETS = (16, 64, 256, 1024, 4096, 16384, 65536, 262144)

# A snapshot: plain values only (msgpack crosses processes with it). Histograms are
# [per-bucket counts (the last past every bound)..., sum].
Snapshot = dict[str, Any]


def _histogram(bounds: tuple[float, ...]) -> list[float]:
    return [0] * (len(bounds) + 1) + [0.0]


def _observe(histogram: list[float], bounds: tuple[float, ...], value: float) -> None:
    histogram[bisect_left(bounds, value)] += 1
    histogram[-1] += value


class Metrics:
    def __init__(self) -> None:
        self._counts: dict[str, dict[str, int]] = {}  # route -> status -> requests
        self._timings: dict[str, list[float]] = {}  # route -> latency histogram
        self._status_text: dict[int | str, str] = {}
        self.stats = Stats()  # Triton's statistics (v2 .../stats), rendered here too
        self.batch_sequences = _histogram(SIZE_BUCKETS)
        self.batch_ids = _histogram(IDS_BUCKETS)
        self.updates: dict[str, int] = {}  # "kind/outcome" -> updates
        self.rows_updated = 0

    def observe(self, route: str, status: int | str, seconds: float) -> None:
        """One answered request: counted by route template and status, and timed."""
        text = self._status_text.get(status)
        if text is None:
            text = self._status_text[status] = str(status)
        counts = self._counts.get(route)
        if counts is None:
            counts = self._counts[route] = {}
            self._timings[route] = _histogram(LATENCY_BUCKETS)
        counts[text] = counts.get(text, 0) + 1
        _observe(self._timings[route], LATENCY_BUCKETS, seconds)

    def on_batch(self, sequences: int, ids: int, requests: int, queued_s: float) -> None:
        _observe(self.batch_sequences, SIZE_BUCKETS, sequences)
        _observe(self.batch_ids, IDS_BUCKETS, ids)
        self.stats.queued(requests, int(queued_s * 1e9))

    def on_update(self, kind: str, outcome: str, rows: int) -> None:
        key = f"{kind}/{outcome}"
        self.updates[key] = self.updates.get(key, 0) + 1
        self.rows_updated += rows

    def answered(self, route: str) -> dict[str, int]:
        """Requests of `route` answered so far, by status."""
        return dict(self._counts.get(route, {}))

    def snapshot(self) -> Snapshot:
        return {
            "requests": {r: dict(c) for r, c in self._counts.items()},
            "latency": {r: list(t) for r, t in self._timings.items()},
            "batch_sequences": list(self.batch_sequences),
            "batch_ids": list(self.batch_ids),
            "updates": dict(self.updates),
            "rows_updated": self.rows_updated,
            "stats": self.stats.snapshot(),
        }


def store(snapshot: Snapshot, path: Path) -> None:
    """Write a process's counters where they outlive it (replaced whole: never half read)."""
    temporary = path.with_suffix(".tmp")
    temporary.write_bytes(msgspec.msgpack.encode(snapshot))
    os.replace(temporary, path)


def stored(folder: Path, skip: set[int]) -> list[Snapshot]:
    """The counters stored in `folder` (as `<kind>-<pid>.counters`) but those of `skip`'s pids:
    processes that are gone, whose counts stay in the host's totals."""
    out = []
    for path in folder.glob("*-*.counters"):
        if int(path.stem.rsplit("-", 1)[1]) in skip:
            continue
        try:
            out.append(msgspec.msgpack.decode(path.read_bytes()))
        except (OSError, msgspec.DecodeError):
            continue  # removed meanwhile
    return out


def add(snapshots: list[Snapshot]) -> Snapshot:
    """The sum of several processes' snapshots."""
    total = Metrics().snapshot()
    for s in snapshots:
        for route, counts in s["requests"].items():
            mine = total["requests"].setdefault(route, {})
            for status, n in counts.items():
                mine[status] = mine.get(status, 0) + n
        for route, hist in s["latency"].items():
            mine = total["latency"].setdefault(route, [0] * len(hist))
            total["latency"][route] = [a + b for a, b in zip(mine, hist, strict=True)]
        for name in ("batch_sequences", "batch_ids"):
            total[name] = [a + b for a, b in zip(total[name], s[name], strict=True)]
        for key, n in s["updates"].items():
            total["updates"][key] = total["updates"].get(key, 0) + n
        total["rows_updated"] += s["rows_updated"]
        total["stats"] = Stats.add(total["stats"], s["stats"])
    return total


# The routes that answer predictions, as the metrics name them, and how the shutdown summary
# names their statuses.
PREDICTION_ROUTES = {
    "/predictions/{model}": "",
    "/v2/models/{model}/infer": "",
    "grpc/ModelInfer": "grpc.",
}


def summary(snapshot: Snapshot) -> str:
    """What was answered, for whoever checks that a shutdown lost nothing (and for the logs):
    native and v2 REST predictions by HTTP status, v2 gRPC ones by code."""
    answered: dict[str, int] = {}
    for route, prefix in PREDICTION_ROUTES.items():
        for status, n in snapshot["requests"].get(route, {}).items():
            answered[prefix + status] = answered.get(prefix + status, 0) + n
    by_status = " ".join(f"{k}:{v}" for k, v in sorted(answered.items())) or "none"
    return f"seqserve: stopped; predictions answered by status: {by_status}"


def exposition(snapshot: Snapshot, gauges: dict[str, float]) -> bytes:
    """The Prometheus text of a (host's) snapshot and the engine's gauges."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_SnapshotCollector(snapshot, gauges))
    return generate_latest(registry)


GAUGES = {
    "queue_depth": ("seqserve_queue_depth", "sequences waiting for a batch"),
    "ranks_ready": ("seqserve_ranks_ready", "rank processes up and warm"),
    "version": ("seqserve_model_version", "version of the weights served"),
}


def _histogram_family(
    name: str, doc: str, bounds: tuple[float, ...], rows: dict[tuple[str, ...], list[float]]
) -> HistogramMetricFamily:
    labels = ["route"] if any(rows) else []
    family = HistogramMetricFamily(name, doc, labels=labels)
    for label, hist in rows.items():
        cumulative, buckets = 0.0, []
        for bound, n in zip((*bounds, float("inf")), hist[:-1], strict=True):
            cumulative += n
            buckets.append((floatToGoString(bound), cumulative))
        family.add_metric(list(label), buckets, sum_value=hist[-1])
    return family


class _SnapshotCollector(Collector):
    def __init__(self, snapshot: Snapshot, gauges: dict[str, float]):
        self.snapshot = snapshot
        self.gauges = gauges

    def collect(self) -> Iterator[Metric]:
        s = self.snapshot
        requests = CounterMetricFamily(
            "seqserve_requests", "HTTP requests by route and status", labels=["route", "status"]
        )
        for route, counts in s["requests"].items():
            for status, n in counts.items():
                requests.add_metric([route, status], n)
        yield requests
        latency: dict[tuple[str, ...], list[float]] = {
            (route,): hist for route, hist in s["latency"].items()
        }
        yield _histogram_family(
            "seqserve_request_seconds", "HTTP request latency", LATENCY_BUCKETS, latency
        )
        yield _histogram_family(
            "seqserve_batch_sequences",
            "sequences per engine batch",
            SIZE_BUCKETS,
            {(): s["batch_sequences"]},
        )
        yield _histogram_family(
            "seqserve_batch_ids", "ids per engine batch", IDS_BUCKETS, {(): s["batch_ids"]}
        )
        for key, (name, doc) in GAUGES.items():
            yield GaugeMetricFamily(name, doc, value=self.gauges.get(key, 0.0))
        updates = CounterMetricFamily(
            "seqserve_weight_updates",
            "weight updates by kind (delta, reload) and outcome (applied, rejected)",
            labels=["kind", "outcome"],
        )
        for key, n in s["updates"].items():
            updates.add_metric(key.split("/"), n)
        yield updates
        yield CounterMetricFamily(
            "seqserve_rows_updated", "rows replaced by applied weight updates", s["rows_updated"]
        )
        yield from _stats_families(Stats.of(s["stats"]))


def _stats_families(s: Stats) -> Iterator[Metric]:
    """The inference statistics (serving/core/stats.py) as Prometheus counters: the same
    integers the v2 statistics routes answer."""
    yield CounterMetricFamily(
        "seqserve_inferences", "inference requests answered (all fronts)", value=s.inferences
    )
    yield CounterMetricFamily("seqserve_executions", "engine batches run", value=s.executions)
    outcomes = CounterMetricFamily(
        "seqserve_inference_outcomes", "requests that reached the queue", labels=["outcome"]
    )
    seconds = CounterMetricFamily(
        "seqserve_inference_phase_seconds",
        "summed request time by phase, as Triton's statistics count it",
        labels=["phase"],
    )
    for name in ("success", "fail", "queue", *PHASES):
        d = getattr(s, name)
        if name in ("success", "fail"):
            outcomes.add_metric([name], d.count)
        seconds.add_metric([name], d.ns / 1e9)
    yield outcomes
    yield seconds
