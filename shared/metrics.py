"""The workers' metrics, kept in Redis so that every worker on every host adds to one total.

Workers count and time into one Redis hash (a `Batch` per job, added up per worker
process by a `Tally` and sent about once a second); the
ingress's `/metrics` turns it into Prometheus families (`families`), next to its own, with the state
Redis holds anyway: queue depths, dead letters, paused hooks. One scrape of any ingress
replica shows the whole system. Labels are providers, merchants, hooks and outcomes: all
bounded by the configuration.
"""

from __future__ import annotations

import threading
import time
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from redis import Redis, RedisError
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
        """Send it now; in a worker process (a `Tally` installed), add the counts and
        timings to the process's tally instead, and send only the `also` commands now."""
        tally = _tally
        if tally is not None:
            tally.add(self._counts, self._sums)
            self._counts, self._sums = [], []
            if self._also:
                pipe = redis.pipeline(transaction=False)
                self._add_also(pipe)
                pipe.execute()
            tally.flush_if_due(redis)
            return
        if not (self._counts or self._sums or self._also):
            return
        pipe = redis.pipeline(transaction=False)
        _add(pipe, int(time.time() // 60), self._counts, self._sums)
        self._add_also(pipe)
        pipe.execute()
        self._counts.clear()
        self._sums.clear()

    def _add_also(self, pipe: Pipeline) -> None:
        for commands in self._also:
            commands(pipe)
        self._also.clear()


def _add(pipe: Pipeline, minute: int, counts: Iterable[tuple[str, int]],
         sums: Iterable[tuple[str, float]]) -> None:
    """The commands that add these counts (and the charted ones to `minute`) and sums."""
    key, charted = minute_key(minute), False
    for field, amount in counts:
        pipe.hincrby(METRICS, field, amount)
        name, *labels = field.split("|")
        if name in PER_MINUTE:  # the outcome is the last label
            pipe.hincrby(key, f"{name}|{labels[-1]}", amount)
            charted = True
    if charted:
        pipe.expire(key, MINUTE_SECONDS)
    for field, seconds in sums:
        pipe.hincrbyfloat(METRICS, field, seconds)


class Tally:
    """A worker process's counts and timings, added up across its jobs and threads and
    sent at most every `every` seconds (and when the worker stops): per callback, about
    ten Redis commands fewer. What a process killed had not sent yet, at most `every`
    seconds of it, is lost from the metrics (never from the events or deliveries)."""

    def __init__(self, every: float = 1.0) -> None:
        self.every = every
        self._lock = threading.Lock()
        self._counts: dict[tuple[int, str], int] = defaultdict(int)  # (minute, field)
        self._sums: dict[str, float] = defaultdict(float)
        self._sent = time.monotonic()

    def add(self, counts: Iterable[tuple[str, int]], sums: Iterable[tuple[str, float]]
            ) -> None:
        minute = int(time.time() // 60)
        with self._lock:
            for field, amount in counts:
                self._counts[minute, field] += amount
            for field, seconds in sums:
                self._sums[field] += seconds

    def flush_if_due(self, redis: Redis) -> None:
        if time.monotonic() - self._sent >= self.every:
            self.flush(redis)

    def flush(self, redis: Redis) -> None:
        """Send what was added up; kept for the next time if Redis cannot take it now."""
        with self._lock:
            counts, sums = self._counts, self._sums
            self._counts, self._sums = defaultdict(int), defaultdict(float)
            self._sent = time.monotonic()
        if not (counts or sums):
            return
        pipe = redis.pipeline(transaction=False)
        for minute in sorted({minute for minute, _ in counts}):
            _add(pipe, minute, [(f, n) for (m, f), n in counts.items() if m == minute], [])
        _add(pipe, 0, [], sums.items())
        try:
            pipe.execute()
        except RedisError:
            with self._lock:
                for key, amount in counts.items():
                    self._counts[key] += amount
                for field, seconds in sums.items():
                    self._sums[field] += seconds


_tally: Tally | None = None


def install(tally: Tally | None) -> None:
    """Have every Batch of this process add to `tally` (a worker, while it works), or send
    at once again (None)."""
    global _tally
    _tally = tally


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
