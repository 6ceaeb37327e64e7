"""The callback job's own first delivery attempts (workers/first_attempt.py), to a real
merchant endpoint on 127.0.0.1: delivered with no delivery job left; a failure handed to
the delivery job with one try less, the schedule's length of tries in all; no free place,
a paused or failing hook: a delivery job as before; a held delivery never attempted comes
due by itself; a delivery job finding its delivery delivered sends nothing."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from rq.job import Job, JobStatus
from rq.registry import ScheduledJobRegistry
from rq.serializers import JSONSerializer
from standardwebhooks import Webhook

from shared.keys import (
    DEAD_LETTERS,
    attempts_key,
    dead_letter_member,
    delivery_key,
    hook_in_flight_key,
    hook_key,
)
from shared.models import Callback, Fact
from shared.queue import DELIVERIES
from shared.sandbox.simulators.client import SimulatorClient
from shared.sandbox.simulators.merchant import Answer, MerchantEndpoint
from tests.helpers import HOOK_SECRET, netaxept, settings_for, work
from tests.workers.test_delivery import make_due, scheduled_in
from workers import runtime as runtimes
from workers.delivery import deliver_event
from workers.events import delivery_job_id, record_and_hold
from workers.listing import delivery_states, recent_events
from workers.runtime import Runtime
from workers.tasks import process_callback


@pytest.fixture
def first(worker_runtime: Runtime, endpoint: MerchantEndpoint, sims: Any
          ) -> Iterator[Runtime]:
    """shop-eu's hooks at the endpoint, its callback jobs making first attempts."""
    settings = settings_for(worker_runtime.settings.redis_url, sims.url, endpoint.url,
                            retry_schedule=["100s", "200s"])
    runtime = Runtime(settings, worker_runtime.redis, worker_runtime.http, first_attempts=True)
    runtimes.install(runtime)
    yield runtime
    runtimes.install(worker_runtime)


def scheduled(client: redis.Redis) -> list[str]:
    return ScheduledJobRegistry(DELIVERIES, connection=client,
                                serializer=JSONSerializer).get_job_ids()


def test_the_callback_job_delivers_its_new_events_itself_and_leaves_no_delivery_job(
        first: Runtime, admin: SimulatorClient, endpoint: MerchantEndpoint,
        redis_client: redis.Redis) -> None:
    process_callback(netaxept(admin, "fa-1", authorized=True, captured=10000))
    orders = endpoint.requests_to("/orders")
    assert [json.loads(r.body)["type"] for r in orders] == [
        "payment.authorized", "payment.captured"]  # in order, before the job ended
    for request in orders:
        Webhook(HOOK_SECRET).verify(request.body, {k.lower(): v for k, v in
                                                   request.headers.items()})
    events = recent_events(redis_client, "shop-eu")
    for event in events:
        assert delivery_states(redis_client, first.settings, event)["orders"] == (
            "delivered (1 attempt)")
        assert not redis_client.exists(f"rq:job:{delivery_job_id(event.id, 'orders')}")
    assert scheduled(redis_client) == [] and redis_client.llen("rq:queue:deliveries") == 0
    assert redis_client.zcard(hook_in_flight_key("shop-eu", "orders")) == 0


def test_a_failed_first_attempt_leaves_the_delivery_job_one_try_less(
        first: Runtime, admin: SimulatorClient, endpoint: MerchantEndpoint,
        redis_client: redis.Redis) -> None:
    endpoint.script("/orders", Answer(503))
    before = time.time()
    process_callback(netaxept(admin, "fa-2", authorized=True))
    event = recent_events(redis_client, "shop-eu")[0]
    job_id = delivery_job_id(event.id, "orders")
    assert scheduled_in(first, job_id, since=before) >= 80 - 1  # 100 s, ±20%
    assert scheduled_in(first, job_id) <= 120
    job = Job.fetch(job_id, connection=redis_client, serializer=JSONSerializer)
    assert (job.get_status(), job.retries_left) == (JobStatus.SCHEDULED, 1)
    state = redis_client.hgetall(delivery_key(event.id, "orders"))
    assert (state[b"state"], state[b"attempts"]) == (b"retrying", b"1")
    assert redis_client.hget(hook_key("shop-eu", "orders"), "failures") == b"1"
    make_due(first)
    work(first)  # the delivery job, as attempt 2
    attempts = [json.loads(a)["status"] for a in
                redis_client.lrange(attempts_key(event.id, "orders"), 0, -1)]
    assert attempts == [503, 200]
    assert delivery_states(redis_client, first.settings, event)["orders"] == (
        "delivered (2 attempts)")


def test_after_a_failed_first_attempt_the_callbacks_other_deliveries_to_that_hook_queue(
        first: Runtime, admin: SimulatorClient, endpoint: MerchantEndpoint,
        redis_client: redis.Redis) -> None:
    endpoint.script("/orders", Answer(503))
    process_callback(netaxept(admin, "fa-2b", authorized=True, captured=10000))
    assert len(endpoint.requests_to("/orders")) == 1  # the hook is failing after that one
    authorized, captured = sorted(recent_events(redis_client, "shop-eu"),
                                  key=lambda e: e.data.sequence)
    assert redis_client.lrange("rq:queue:deliveries", 0, -1) == [
        delivery_job_id(captured.id, "orders").encode()]
    assert delivery_job_id(authorized.id, "orders") in scheduled(redis_client)


def test_always_failing_it_is_dead_lettered_after_one_attempt_more_than_the_schedule(
        first: Runtime, admin: SimulatorClient, endpoint: MerchantEndpoint,
        redis_client: redis.Redis) -> None:
    endpoint.script("/orders", default=Answer(500))
    redis_client.hset(hook_key("shop-eu", "orders"), "trips", 0)  # as after a resume
    process_callback(netaxept(admin, "fa-3", authorized=True))
    for _ in range(4):
        redis_client.delete(hook_key("shop-eu", "orders"))  # kept from pausing, for the count
        make_due(first)
        work(first)
    assert len(endpoint.requests_to("/orders")) == 3  # the first, then the schedule's two
    event = recent_events(redis_client, "shop-eu")[0]
    assert redis_client.zscore(DEAD_LETTERS, dead_letter_member("shop-eu", event.id, "orders"))
    assert delivery_states(redis_client, first.settings, event)["orders"].startswith("dead")


def test_a_hook_without_a_free_place_gets_a_delivery_job_at_once(
        first: Runtime, admin: SimulatorClient, endpoint: MerchantEndpoint,
        redis_client: redis.Redis) -> None:
    busy = time.time() + 60
    redis_client.zadd(hook_in_flight_key("shop-eu", "orders"),
                      {f"evt_elsewhere_{n}": busy  # every place taken
                       for n in range(first.settings.delivery.max_in_flight_per_hook)})
    process_callback(netaxept(admin, "fa-4", authorized=True))
    assert endpoint.received == []
    event = recent_events(redis_client, "shop-eu")[0]
    job_id = delivery_job_id(event.id, "orders")
    assert redis_client.lrange("rq:queue:deliveries", 0, -1) == [job_id.encode()]
    assert scheduled(redis_client) == []
    assert Job.fetch(job_id, connection=redis_client,
                     serializer=JSONSerializer).get_status() == JobStatus.QUEUED


@pytest.mark.parametrize("hook_state", ["paused", "failing"])
def test_a_paused_or_failing_hook_is_not_attempted_by_the_callback_job(
        first: Runtime, admin: SimulatorClient, endpoint: MerchantEndpoint,
        redis_client: redis.Redis, hook_state: str) -> None:
    redis_client.hset(hook_key("shop-eu", "orders"), mapping=(
        {"paused_until": time.time() + 600} if hook_state == "paused" else {"failures": 2}))
    process_callback(netaxept(admin, "fa-5", authorized=True))
    assert endpoint.received == []
    event = recent_events(redis_client, "shop-eu")[0]
    job_id = delivery_job_id(event.id, "orders")
    if hook_state == "failing":  # queued, for the delivery job's one probe at a time
        assert redis_client.lrange("rq:queue:deliveries", 0, -1) == [job_id.encode()]
    else:  # waiting for the end of the pause, as before
        assert scheduled_in(first, job_id) > 590


def test_a_held_delivery_never_attempted_comes_due_and_is_sent_by_a_delivery_job(
        first: Runtime, admin: SimulatorClient, endpoint: MerchantEndpoint,
        redis_client: redis.Redis) -> None:
    """What a worker killed between recording and attempting leaves."""
    callback, facts = _recorded_facts(first, admin, "fa-6")
    events, held = record_and_hold(redis_client, callback, facts, first.hooks("shop-eu"),
                                   first.settings.delivery.retry_schedule, hold=75)
    job_id = delivery_job_id(events[0].id, "orders")
    assert [h.hook.id for h in held] == ["orders"]
    assert 70 <= scheduled_in(first, job_id) <= 76
    assert redis_client.llen("rq:queue:deliveries") == 0
    make_due(first)  # the scheduler, 75 s later
    work(first)
    assert [r.headers["webhook-id"] for r in endpoint.requests_to("/orders")] == [events[0].id]


def test_a_delivery_job_finding_its_delivery_delivered_sends_nothing(
        first: Runtime, admin: SimulatorClient, endpoint: MerchantEndpoint,
        redis_client: redis.Redis) -> None:
    process_callback(netaxept(admin, "fa-7", authorized=True))
    event = recent_events(redis_client, "shop-eu")[0]
    # the held job had come due and been taken by a delivery job before the attempt ended
    outcome = deliver_event(event.id, "shop-eu", "orders")
    assert outcome == {"state": "delivered", "reason": "delivered already"}
    assert len(endpoint.requests_to("/orders")) == 1


def _recorded_facts(runtime: Runtime, admin: SimulatorClient, transaction: str
                    ) -> tuple[Callback, list[Fact]]:
    """A stored callback and the facts its follow-up gives, nothing recorded yet."""
    callback = Callback.model_validate(netaxept(admin, transaction, authorized=True))
    provider = runtime.providers["shop-eu"]["netaxept"]
    context = runtime.follow_up_context("followup:test", 1000, callback.received_at)
    return callback, list(provider.follow_up(callback, context))

