"""Prometheus metrics of one server, in a registry of its own (tests run several apps)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
IDS_BUCKETS = (16, 64, 256, 1024, 4096, 16384, 65536, 262144)


class Metrics:
    def __init__(
        self,
        queue_depth: Callable[[], float],
        ranks_ready: Callable[[], float],
        version: Callable[[], float],
    ):
        self.registry = CollectorRegistry()
        self._children: dict[tuple[str, int | str], tuple[Any, Any]] = {}
        r = self.registry
        self.requests = Counter(
            "seqserve_requests",
            "HTTP requests by route and status",
            ["route", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "seqserve_request_seconds",
            "HTTP request latency",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "seqserve_batch_sequences",
            "sequences per engine batch",
            buckets=SIZE_BUCKETS,
            registry=r,
        )
        self.batch_ids = Histogram(
            "seqserve_batch_ids", "ids per engine batch", buckets=IDS_BUCKETS, registry=r
        )
        Gauge("seqserve_queue_depth", "sequences waiting for a batch", registry=r).set_function(
            queue_depth
        )
        Gauge("seqserve_ranks_ready", "rank processes up and warm", registry=r).set_function(
            ranks_ready
        )
        Gauge("seqserve_model_version", "version of the weights served", registry=r).set_function(
            version
        )
        self.updates = Counter(
            "seqserve_weight_updates",
            "weight updates by kind (delta, reload) and outcome (applied, rejected)",
            ["kind", "outcome"],
            registry=r,
        )
        self.rows_updated = Counter(
            "seqserve_rows_updated", "rows replaced by applied weight updates", registry=r
        )

    def observe(self, route: str, status: int | str, seconds: float) -> None:
        """One answered request: counted by route template and status, and timed."""
        # labels() costs a lock and a tuple lookup per call: keep each (route, status)'s pair.
        pair = self._children.get((route, status))
        if pair is None:
            pair = (self.requests.labels(route, str(status)), self.latency.labels(route))
            self._children[(route, status)] = pair
        pair[0].inc()
        pair[1].observe(seconds)

    def on_batch(self, sequences: int, ids: int) -> None:
        self.batch_size.observe(sequences)
        self.batch_ids.observe(ids)

    def on_update(self, kind: str, outcome: str, rows: int) -> None:
        self.updates.labels(kind, outcome).inc()
        self.rows_updated.inc(rows)

    def answered(self, route: str) -> dict[str, int]:
        """Requests of `route` answered so far, by status."""
        out: dict[str, int] = {}
        for family in self.registry.collect():
            for sample in family.samples:
                if sample.name == "seqserve_requests_total" and sample.labels["route"] == route:
                    out[sample.labels["status"]] = int(sample.value)
        return out
