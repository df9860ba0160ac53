"""Prometheus metrics of one server, in a registry of its own (tests run several apps).

Requests are counted and timed on every answer, so that path is plain Python: a counter and a
bucket index per (route, status), rendered as Prometheus counters and histograms when /metrics
is read (prometheus_client's own children take a lock and walk every bucket per call). The
figures are exact: every observation is counted, none is sampled.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from serving.core.stats import PHASES, Stats

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
IDS_BUCKETS = (16, 64, 256, 1024, 4096, 16384, 65536, 262144)


class _Timings:
    """Observations of one route: per-bucket counts (the last one past every bound) and sum."""

    __slots__ = ("buckets", "total")

    def __init__(self) -> None:
        self.buckets = [0] * (len(LATENCY_BUCKETS) + 1)
        self.total = 0.0


class Metrics:
    def __init__(
        self,
        queue_depth: Callable[[], float],
        ranks_ready: Callable[[], float],
        version: Callable[[], float],
    ):
        self.registry = CollectorRegistry()
        self._counts: dict[tuple[str, str], int] = {}
        self._timings: dict[str, _Timings] = {}
        self._status_text: dict[int | str, str] = {}
        self.stats = Stats()  # Triton's statistics (v2 .../stats), rendered here too
        r = self.registry
        r.register(_RequestCollector(self))
        r.register(_StatsCollector(self.stats))
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
        text = self._status_text.get(status)
        if text is None:
            text = self._status_text[status] = str(status)
        key = (route, text)
        self._counts[key] = self._counts.get(key, 0) + 1
        timings = self._timings.get(route)
        if timings is None:
            timings = self._timings[route] = _Timings()
        timings.buckets[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        timings.total += seconds

    def on_batch(self, sequences: int, ids: int, requests: int, queued_s: float) -> None:
        self.batch_size.observe(sequences)
        self.batch_ids.observe(ids)
        self.stats.queued(requests, int(queued_s * 1e9))

    def on_update(self, kind: str, outcome: str, rows: int) -> None:
        self.updates.labels(kind, outcome).inc()
        self.rows_updated.inc(rows)

    def answered(self, route: str) -> dict[str, int]:
        """Requests of `route` answered so far, by status."""
        return {status: n for (r, status), n in self._counts.items() if r == route}

    def answered_by_route(self) -> dict[str, dict[str, int]]:
        """Every route's answers so far, by status."""
        out: dict[str, dict[str, int]] = {}
        for (route, status), n in self._counts.items():
            out.setdefault(route, {})[status] = n
        return out


class _RequestCollector(Collector):
    """Renders the request counts and timings as `seqserve_requests_total{route,status}` and
    the histogram `seqserve_request_seconds{route}`."""

    def __init__(self, metrics: Metrics):
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "seqserve_requests", "HTTP requests by route and status", labels=["route", "status"]
        )
        for (route, status), n in list(self.metrics._counts.items()):
            requests.add_metric([route, status], n)
        yield requests
        latency = HistogramMetricFamily(
            "seqserve_request_seconds", "HTTP request latency", labels=["route"]
        )
        for route, timings in list(self.metrics._timings.items()):
            cumulative, buckets = 0, []
            for bound, n in zip((*LATENCY_BUCKETS, float("inf")), timings.buckets, strict=True):
                cumulative += n
                buckets.append((floatToGoString(bound), cumulative))
            latency.add_metric([route], buckets, sum_value=timings.total)
        yield latency


class _StatsCollector(Collector):
    """The inference statistics (serving/core/stats.py) as Prometheus counters: the same
    integers the v2 statistics routes answer."""

    def __init__(self, stats: Stats):
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        s = self.stats
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
