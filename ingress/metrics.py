"""Prometheus metrics of the ingress.

The request path only bumps plain counters; they become Prometheus metric families when
`/metrics` is scraped (`collect`). prometheus_client's per-observation objects (a lock and
a label lookup per call) cost the ingress a quarter of its CPU per callback under load.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter, defaultdict
from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric

ACK_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0)


class IngressMetrics:
    def __init__(self) -> None:
        self.callbacks: Counter[tuple[str, str, str]] = Counter()
        self._ack_counts: defaultdict[str, list[int]] = defaultdict(
            lambda: [0] * (len(ACK_BUCKETS) + 1))
        self._ack_sums: defaultdict[str, float] = defaultdict(float)
        self.system: list[Metric] = []  # the workers' figures, read from Redis at each scrape
        self.store_batches = 0  # set from the JobStore at each scrape
        self.store_jobs = 0
        self.write_failures = 0
        self.connections_at_cap: dict[str, int] = {}  # set from the ConnectionCap
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    def count(self, provider: str, merchant: str, outcome: str) -> None:
        self.callbacks[(provider, merchant, outcome)] += 1

    def observe_ack(self, provider: str, seconds: float) -> None:
        self._ack_counts[provider][bisect_left(ACK_BUCKETS, seconds)] += 1
        self._ack_sums[provider] += seconds

    def collect(self) -> Iterator[Metric]:
        callbacks = CounterMetricFamily(
            "payhooks_callbacks", "Callbacks received, by provider, merchant and outcome",
            labels=["provider", "merchant", "outcome"])
        for labels, value in sorted(self.callbacks.items()):
            callbacks.add_metric(list(labels), value)
        yield callbacks
        ack = HistogramMetricFamily(
            "payhooks_ack_seconds", "Time from request start to the answer, for stored callbacks",
            labels=["provider"])
        for provider, counts in sorted(self._ack_counts.items()):
            cumulative, buckets = 0, []
            for bound, count in zip((*ACK_BUCKETS, float("inf")), counts, strict=True):
                cumulative += count
                buckets.append((str(bound) if bound != float("inf") else "+Inf", cumulative))
            ack.add_metric([provider], buckets, self._ack_sums[provider])
        yield ack
        yield CounterMetricFamily("payhooks_store_batches",
                                  "Redis writes of the job store (one per batch)",
                                  value=self.store_batches)
        yield CounterMetricFamily("payhooks_store_jobs", "Jobs the job store wrote",
                                  value=self.store_jobs)
        yield CounterMetricFamily(
            "payhooks_redis_write_failures",
            "Batches of callbacks Redis did not take (down, or refusing writes: maxmemory)",
            value=self.write_failures)
        at_cap = CounterMetricFamily(
            "payhooks_ingress_connections_at_cap",
            "New connections past max_connections: an idle one closed for it, or it refused",
            labels=["outcome"])
        for outcome in ("idle_closed", "refused"):
            at_cap.add_metric([outcome], self.connections_at_cap.get(outcome, 0))
        yield at_cap
        yield from self.system
