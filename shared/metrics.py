"""The workers' metrics, kept in Redis so that every worker on every host adds to one total.

Workers count and time into one Redis hash (a `Batch` per job: one round trip); the
ingress's `/metrics` turns it into Prometheus families (`families`), next to its own, with the state
Redis holds anyway: queue depths, dead letters, paused hooks. One scrape of any ingress
replica shows the whole system. Labels are providers, merchants, hooks and outcomes: all
bounded by the configuration.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from redis import Redis
from redis.client import Pipeline

from shared.keys import METRICS, MINUTE_SECONDS, minute_key

PER_MINUTE = ("callbacks_processed", "deliveries")  # charted by the console, by outcome

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
COUNTERS = {
    "callbacks_processed": ("Callbacks processed by workers, by provider and outcome",
                            ("provider", "outcome")),
    "followup_errors": ("Follow-up queries that failed, by provider and kind",
                        ("provider", "kind")),
    "deliveries": ("Delivery attempts, by merchant, hook and outcome",
                   ("merchant", "hook", "outcome")),
    "events_recorded": ("Canonical events recorded, by provider and type",
                        ("provider", "type")),
}
HISTOGRAMS = {
    "followup_seconds": ("Time to ask the provider, by provider", ("provider",)),
    "delivery_seconds": ("Time of a delivery attempt, by merchant", ("merchant",)),
}


def _field(name: str, labels: tuple[str, ...]) -> str:
    return "|".join((name, *labels))


class Batch:
    """Counts and timings of one job, sent to Redis together in one round trip."""

    def __init__(self) -> None:
        self._counts: list[tuple[str, int]] = []
        self._sums: list[tuple[str, float]] = []
        self._also: list[Callable[[Pipeline], None]] = []

    def also(self, commands: Callable[[Pipeline], None]) -> None:
        """Send these commands (added to the pipeline) in the same round trip."""
        self._also.append(commands)

    def count(self, name: str, *labels: str, amount: int = 1) -> None:
        self._counts.append((_field(name, labels), amount))

    def observe(self, name: str, seconds: float, *labels: str) -> None:
        self._counts.append((_field(f"{name}:bucket:{bisect_left(BUCKETS, seconds)}", labels), 1))
        self._sums.append((_field(f"{name}:sum", labels), seconds))

    def send(self, redis: Redis) -> None:
        if not (self._counts or self._sums or self._also):
            return
        pipe = redis.pipeline(transaction=False)
        minute = minute_key(int(time.time() // 60))
        charted = False
        for field, amount in self._counts:
            pipe.hincrby(METRICS, field, amount)
            name, *labels = field.split("|")
            if name in PER_MINUTE:  # the outcome is the last label
                pipe.hincrby(minute, f"{name}|{labels[-1]}", amount)
                charted = True
        if charted:
            pipe.expire(minute, MINUTE_SECONDS)
        for field, seconds in self._sums:
            pipe.hincrbyfloat(METRICS, field, seconds)
        for commands in self._also:
            commands(pipe)
        pipe.execute()
        self._counts.clear()
        self._sums.clear()
        self._also.clear()


def families(stored: Mapping[bytes, bytes], dead: int, paused: int,
             queues: Mapping[str, int]) -> Iterator[Metric]:
    """Prometheus families from the hash, the dead-letter count, the paused hooks and the
    queue depths that the ingress read from Redis."""
    counters: defaultdict[str, dict[tuple[str, ...], float]] = defaultdict(dict)
    histograms: defaultdict[tuple[str, tuple[str, ...]], dict[str, float]] = defaultdict(dict)
    for raw_field, raw_value in stored.items():
        name, *labels = raw_field.decode().split("|")
        if ":" in name:
            base, kind = name.split(":", 1)
            histograms[(base, tuple(labels))][kind] = float(raw_value)
        else:
            counters[name][tuple(labels)] = float(raw_value)
    for name, (help_text, label_names) in COUNTERS.items():
        family = CounterMetricFamily(f"payhooks_{name}", help_text, labels=list(label_names))
        for values, value in sorted(counters[name].items()):
            family.add_metric(list(values), value)
        yield family
    yield from _histograms(histograms)
    yield GaugeMetricFamily("payhooks_dead_letters", "Deliveries dead-lettered, not replayed",
                            value=dead)
    yield GaugeMetricFamily("payhooks_paused_hooks", "Hooks paused after failing", value=paused)
    depth = GaugeMetricFamily("payhooks_queue_depth", "Jobs waiting in a queue",
                              labels=["queue"])
    for queue, value in sorted(queues.items()):
        depth.add_metric([queue], value)
    yield depth


def _histograms(stored: Mapping[tuple[str, tuple[str, ...]], dict[str, float]]
                ) -> Iterator[Metric]:
    for name, (help_text, label_names) in HISTOGRAMS.items():
        family = HistogramMetricFamily(f"payhooks_{name}", help_text, labels=list(label_names))
        for (base, labels), values in sorted(stored.items()):
            if base != name:
                continue
            cumulative, buckets = 0.0, []
            for index, bound in enumerate((*BUCKETS, float("inf"))):
                cumulative += values.get(f"bucket:{index}", 0.0)
                buckets.append(("+Inf" if bound == float("inf") else str(bound), cumulative))
            family.add_metric(list(labels), buckets, values.get("sum", 0.0))
        yield family
