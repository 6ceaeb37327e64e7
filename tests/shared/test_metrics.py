"""The workers' metrics: a job's counts and timings go to Redis in one round trip, and the
ingress's /metrics turns the hash into Prometheus families."""

from __future__ import annotations

import redis
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.registry import Collector

from shared import metrics
from shared.keys import METRICS


class Families(Collector):
    def __init__(self, client: redis.Redis, dead: int = 0, paused: int = 0) -> None:
        self.client, self.dead, self.paused = client, dead, paused

    def collect(self):  # type: ignore[no-untyped-def]
        return metrics.families(self.client.hgetall(METRICS),  # type: ignore[arg-type]
                                self.dead, self.paused, {"callbacks": 3, "deliveries": 0})


def exposition(client: redis.Redis, **gauges: int) -> str:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(Families(client, **gauges))
    return generate_latest(registry).decode()


def test_a_batch_is_sent_once_and_read_back_as_prometheus_families(
        redis_client: redis.Redis) -> None:
    batch = metrics.Batch()
    batch.count("callbacks_processed", "netaxept", "recorded")
    batch.count("callbacks_processed", "netaxept", "recorded")
    batch.count("deliveries", "shop-eu", "orders", "delivered", amount=3)
    batch.observe("followup_seconds", 0.02, "netaxept")  # the 0.025 bucket
    batch.observe("followup_seconds", 7.0, "netaxept")  # the 10 s bucket
    batch.send(redis_client)
    batch.send(redis_client)  # sent already: nothing twice
    text = exposition(redis_client, dead=2, paused=1)
    assert ('payhooks_callbacks_processed_total{outcome="recorded",provider="netaxept"} 2.0'
            in text)
    assert ('payhooks_deliveries_total{hook="orders",merchant="shop-eu",outcome="delivered"}'
            ' 3.0' in text)
    assert 'payhooks_followup_seconds_bucket{le="0.01",provider="netaxept"} 0.0' in text
    assert 'payhooks_followup_seconds_bucket{le="0.025",provider="netaxept"} 1.0' in text
    assert 'payhooks_followup_seconds_bucket{le="+Inf",provider="netaxept"} 2.0' in text
    assert 'payhooks_followup_seconds_count{provider="netaxept"} 2.0' in text
    assert 'payhooks_followup_seconds_sum{provider="netaxept"} 7.02' in text
    assert "payhooks_dead_letters 2.0" in text and "payhooks_paused_hooks 1.0" in text
    assert 'payhooks_queue_depth{queue="callbacks"} 3.0' in text


def test_an_empty_batch_costs_no_round_trip(redis_client: redis.Redis) -> None:
    metrics.Batch().send(redis_client)
    assert redis_client.exists(METRICS) == 0
    text = exposition(redis_client)
    assert "# TYPE payhooks_callbacks_processed_total counter" in text  # families all there
