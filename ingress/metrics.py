"""Prometheus metrics of the ingress, on a registry of its own per application."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

ACK_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0)


class IngressMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.callbacks = Counter(
            "payhooks_callbacks",
            "Callbacks received, by provider, merchant and outcome",
            ["provider", "merchant", "outcome"],
            registry=self.registry,
        )
        self.ack_seconds = Histogram(
            "payhooks_ack_seconds",
            "Time from request start to the answer, for stored callbacks",
            ["provider"],
            buckets=ACK_BUCKETS,
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "payhooks_queue_depth", "Jobs waiting in a queue", ["queue"], registry=self.registry
        )
