"""Delivery to real merchant endpoints on 127.0.0.1, verified with the standardwebhooks package."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from rq import Queue
from rq.job import Job, JobStatus
from rq.registry import FailedJobRegistry, ScheduledJobRegistry
from rq.serializers import JSONSerializer
from standardwebhooks import Webhook

from ingress.app import create_app
from shared.keys import DEAD_LETTERS, attempts_key, delivery_key, hook_in_flight_key, hook_key
from shared.queue import DELIVERIES
from shared.sandbox.simulators.client import SimulatorClient
from shared.sandbox.simulators.merchant import Answer, MerchantEndpoint
from tests.helpers import (
    HOOK_SECRET,
    OLD_SECRET,
    netaxept,
    settings_for,
    to_toml,
    work,
    worker_config,
)
from workers import runtime as runtimes
from workers.events import delivery_job_id
from workers.listing import delivery_states, recent_events
from workers.replay import dead_letters, replay
from workers.runtime import Runtime
from workers.tasks import process_callback


@pytest.fixture
def delivering(worker_runtime: Runtime, endpoint: MerchantEndpoint,
               redis_client: redis.Redis, sims: Any) -> Iterator[Runtime]:
    """The runtime with shop-eu's hooks pointed at the endpoint (/orders, /refunds)."""
    settings = settings_for(worker_runtime.settings.redis_url, sims.url, endpoint.url,
                            retry_schedule=["100s", "200s"])
    runtime = Runtime(settings, worker_runtime.redis, worker_runtime.http)
    runtimes.install(runtime)
    yield runtime
    runtimes.install(worker_runtime)




def make_due(runtime: Runtime) -> list[str]:
    """Move every scheduled delivery back onto its queue, as the scheduler does when due."""
    registry = ScheduledJobRegistry(DELIVERIES, connection=runtime.redis,
                                    serializer=JSONSerializer)
    queue = Queue(DELIVERIES, connection=runtime.redis, serializer=JSONSerializer)
    ids = registry.get_job_ids()
    for job_id in ids:
        job = Job.fetch(job_id, connection=runtime.redis, serializer=JSONSerializer)
        registry.remove(job)
        queue.enqueue_job(job)
    return ids


def timed_work(runtime: Runtime) -> tuple[float, float]:
    """`work`, and when it started and ended: whatever it scheduled, it scheduled between."""
    started = time.time()
    work(runtime)
    return started, time.time()


def assert_due_in(runtime: Runtime, job_id: str, ran: tuple[float, float], low: float,
                  high: float) -> None:
    """The job is due `low` to `high` seconds after the moment in `ran` it was scheduled
    (RQ keeps whole seconds: up to one early). Timed from both ends of the run, so a slow
    machine makes it no less true."""
    started, finished = ran
    assert scheduled_in(runtime, job_id, since=started) >= low - 1
    assert scheduled_in(runtime, job_id, since=finished) <= high


def scheduled_in(runtime: Runtime, job_id: str, since: float | None = None) -> float:
    """How long after `since` (default: now) RQ's scheduler brings the job back."""
    registry = ScheduledJobRegistry(DELIVERIES, connection=runtime.redis,
                                    serializer=JSONSerializer)
    when = registry.get_scheduled_time(job_id)
    return when.timestamp() - (time.time() if since is None else since)


def test_events_arrive_signed_and_verify_with_every_rotated_secret(
        delivering: Runtime, admin: SimulatorClient, endpoint: MerchantEndpoint,
        redis_client: redis.Redis) -> None:
    process_callback(netaxept(admin, "d-1", authorized=True, captured=10000, credited=100))
    work(delivering)
    orders, refunds = endpoint.requests_to("/orders"), endpoint.requests_to("/refunds")
    assert len(orders) == 3 and len(refunds) == 1  # refunds takes only payment.refunded
    for request in orders + refunds:
        headers = {k.lower(): v for k, v in request.headers.items()}
        assert headers["content-type"] == "application/json"
        assert len(headers["webhook-signature"].split(" ")) == (2 if request in orders else 1)
        payload = Webhook(HOOK_SECRET).verify(request.body, headers)
        assert payload["id"] == headers["webhook-id"]
        if request in orders:
            assert Webhook(OLD_SECRET).verify(request.body, headers)["id"] == payload["id"]
    assert [json.loads(r.body)["type"] for r in orders] == [
        "payment.authorized", "payment.captured", "payment.refunded"]
    event = recent_events(redis_client, "shop-eu")[0]
    assert delivery_states(redis_client, delivering.settings, event) == {
        "orders": "delivered (1 attempt)", "refunds": "delivered (1 attempt)"}


def test_a_cookie_a_hook_sets_is_sent_to_no_hook(
        delivering: Runtime, admin: SimulatorClient, endpoint: MerchantEndpoint,
        redis_client: redis.Redis) -> None:
    """The endpoint sets a cookie on every answer; neither the next delivery to it nor
    one to another hook on the same host carries it."""
    endpoint.script("/orders", default=Answer(headers={"Set-Cookie": "session=abc; Path=/"}))
    endpoint.script("/refunds", default=Answer(headers={"Set-Cookie": "other=xyz; Path=/"}))
    process_callback(netaxept(admin, "d-cookie", authorized=True, captured=10000,
                              credited=100))
    work(delivering)
    received = endpoint.requests_to("/orders") + endpoint.requests_to("/refunds")
    assert len(received) == 4
    assert not [r for r in received if "cookie" in {k.lower() for k in r.headers}]


def test_a_failure_is_retried_with_jitter_then_delivered(
        delivering: Runtime, admin: SimulatorClient, endpoint: MerchantEndpoint,
        redis_client: redis.Redis) -> None:
    endpoint.script("/orders", Answer(500), Answer(302, {"Location": "/elsewhere"}))
    process_callback(netaxept(admin, "d-2", authorized=True))
    ran = timed_work(delivering)
    event = recent_events(redis_client, "shop-eu")[0]
    job_id = delivery_job_id(event.id, "orders")
    assert_due_in(delivering, job_id, ran, 80, 120)  # 100 s, ±20%
    make_due(delivering)
    ran = timed_work(delivering)
    assert_due_in(delivering, job_id, ran, 160, 240)  # a 302 is no success
    make_due(delivering)
    work(delivering)
    assert len(endpoint.requests_to("/orders")) == 3
    ids = {r.headers["webhook-id"] for r in endpoint.requests_to("/orders")}
    assert ids == {event.id}
    attempts = [json.loads(a) for a in redis_client.lrange(attempts_key(event.id, "orders"),
                                                           0, -1)]
    assert [a["status"] for a in attempts] == [500, 302, 200]
    assert "delivered (3 attempts)" in delivery_states(redis_client, delivering.settings,
                                                       event)["orders"]


def test_retry_after_is_honoured(delivering: Runtime, admin: SimulatorClient,
                                 endpoint: MerchantEndpoint, redis_client: redis.Redis) -> None:
    endpoint.script("/orders", Answer(503, {"Retry-After": "3600"}))
    process_callback(netaxept(admin, "d-3", authorized=True))
    ran = timed_work(delivering)
    event = recent_events(redis_client, "shop-eu")[0]
    assert_due_in(delivering, delivery_job_id(event.id, "orders"), ran, 3600, 3600)


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "soon"])
def test_a_retry_after_that_is_no_time_falls_back_to_the_schedule(
        delivering: Runtime, admin: SimulatorClient, endpoint: MerchantEndpoint,
        redis_client: redis.Redis, value: str) -> None:
    """`Retry-After: nan` made the attempt raise before it was settled (round(nan))."""
    endpoint.script("/orders", Answer(503, {"Retry-After": value}))
    process_callback(netaxept(admin, f"d-ra-{value}", authorized=True))
    ran = timed_work(delivering)
    event = recent_events(redis_client, "shop-eu")[0]
    assert_due_in(delivering, delivery_job_id(event.id, "orders"), ran, 80, 120)
    assert redis_client.hget(delivery_key(event.id, "orders"), "state") == b"retrying"


def test_a_used_up_schedule_is_dead_lettered_then_replayed_with_the_same_id(
        delivering: Runtime, admin: SimulatorClient, endpoint: MerchantEndpoint,
        redis_client: redis.Redis) -> None:
    endpoint.script("/orders", default=Answer(500))
    process_callback(netaxept(admin, "d-4", authorized=True))
    work(delivering)
    for _ in range(2):  # the schedule has two steps
        make_due(delivering)
        work(delivering)
    event = recent_events(redis_client, "shop-eu")[0]
    failed = FailedJobRegistry(DELIVERIES, connection=redis_client, serializer=JSONSerializer)
    assert delivery_job_id(event.id, "orders") in failed.get_job_ids()
    assert delivery_states(redis_client, delivering.settings, event)["orders"] == (
        "dead (3 attempts, last attempt: HTTP 500)")
    letters = dead_letters(redis_client, merchant="shop-eu")
    assert [(d.event, d.hook) for d in letters] == [(event.id, "orders")]

    endpoint.script("/orders", default=Answer(200))
    redis_client.delete(f"payhooks:event:{event.id}")  # past the dedup window: the letter
    assert replay(redis_client, delivering.settings, letters) == 1  # keeps the event
    assert replay(redis_client, delivering.settings, letters) == 0  # already replayed
    work(delivering)
    delivered = endpoint.requests_to("/orders")[-1]
    assert delivered.headers["webhook-id"] == event.id
    assert json.loads(delivered.body)["id"] == event.id
    assert redis_client.zcard(DEAD_LETTERS) == 0
    job = Job.fetch(delivery_job_id(event.id, "orders"), connection=redis_client,
                    serializer=JSONSerializer)
    assert job.get_status() == JobStatus.FINISHED


def test_a_failing_hook_is_paused_its_deliveries_kept_and_resumed(
        delivering: Runtime, admin: SimulatorClient, endpoint: MerchantEndpoint,
        redis_client: redis.Redis) -> None:
    endpoint.script("/orders", default=Answer(500))
    for n in range(7):  # pause_after defaults to 5
        process_callback(netaxept(admin, f"p-{n}", authorized=True))
    work(delivering)
    assert len(endpoint.requests_to("/orders")) == 5  # the last two waited, unsent
    paused_until = float(redis_client.hget(hook_key("shop-eu", "orders"), "paused_until") or 0)
    assert 55 <= paused_until - time.time() <= 61
    assert redis_client.sismember("payhooks:paused", "shop-eu/orders")
    states = [delivery_states(redis_client, delivering.settings, e)["orders"]
              for e in recent_events(redis_client, "shop-eu")]
    assert sum(state.startswith("retrying") for state in states) == 5
    assert states.count("queued") == 2
    jobs = [Job.fetch(delivery_job_id(e.id, "orders"), connection=redis_client,
                      serializer=JSONSerializer) for e in recent_events(redis_client, "shop-eu")]
    assert sorted(job.retries_left or 0 for job in jobs) == [1] * 5 + [2] * 2  # none spent

    endpoint.script("/orders", default=Answer(200))
    redis_client.hset(hook_key("shop-eu", "orders"), "paused_until", time.time() - 1)
    make_due(delivering)
    work(delivering)  # one probe succeeds and the hook resumes
    make_due(delivering)
    work(delivering)
    assert not redis_client.exists(hook_key("shop-eu", "orders"))
    assert not redis_client.sismember("payhooks:paused", "shop-eu/orders")
    assert {state.split(" ")[0] for state in (
        delivery_states(redis_client, delivering.settings, e)["orders"]
        for e in recent_events(redis_client, "shop-eu"))} == {"delivered"}


def test_private_addresses_are_refused_unless_allowed(
        worker_runtime: Runtime, admin: SimulatorClient, endpoint: MerchantEndpoint,
        redis_client: redis.Redis, sims: Any) -> None:
    settings = settings_for(worker_runtime.settings.redis_url, sims.url, endpoint.url,
                            allow_private_networks=False)
    runtimes.install(Runtime(settings, worker_runtime.redis, worker_runtime.http))
    process_callback(netaxept(admin, "d-5", authorized=True))
    work(worker_runtime)
    assert endpoint.received == []
    event = recent_events(redis_client, "shop-eu")[0]
    [attempt] = [json.loads(a) for a in redis_client.lrange(attempts_key(event.id, "orders"),
                                                            0, -1)]
    assert attempt["error"].startswith("refused")
    assert redis_client.hget(delivery_key(event.id, "orders"), "state") == b"retrying"
    # what `payhooks events` shows: the reason with the state
    state = delivery_states(redis_client, worker_runtime.settings, event)["orders"]
    assert state.startswith("retrying (attempt 1 failed: refused")


def test_a_duplicate_callback_is_delivered_once(
        delivering: Runtime, admin: SimulatorClient, endpoint: MerchantEndpoint) -> None:
    callback = netaxept(admin, "d-6", authorized=True)
    process_callback(callback)
    process_callback(dict(callback, id=callback["id"] + "x"))  # the provider sent it twice
    work(delivering)
    assert len(endpoint.requests_to("/orders")) == 1


def test_payhooks_replay_and_events_from_the_command_line(
        delivering: Runtime, admin: SimulatorClient, endpoint: MerchantEndpoint,
        redis_client: redis.Redis, sims: Any, tmp_path: Any) -> None:
    endpoint.script("/orders", default=Answer(500))
    process_callback(netaxept(admin, "d-7", authorized=True))
    work(delivering)
    for _ in range(2):
        make_due(delivering)
        work(delivering)
    config_dict = worker_config(delivering.settings.redis_url, sims.url)
    config_dict["merchants"]["shop-eu"]["hooks"][0]["url"] = f"{endpoint.url}/orders"
    config = tmp_path / "payhooks.toml"
    config.write_text(to_toml(config_dict))

    def payhooks(*args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "shared.cli", *args, "--config",
                               str(config)], capture_output=True, text=True, timeout=60,
                              check=True)
        return done.stdout

    event = recent_events(redis_client, "shop-eu")[0]
    assert "dead (3 attempts, last attempt: HTTP 500)" in payhooks("events", "--merchant",
                                                                   "shop-eu")
    assert "1 dead-lettered delivery to replay" in payhooks("replay", "--dry-run", "--since",
                                                            "1h")
    assert "0 dead-lettered deliveries match" in payhooks("replay", "--hook", "refunds")
    endpoint.script("/orders", default=Answer(200))
    assert "replayed 1 of 1" in payhooks("replay", "--event", event.id)
    work(delivering)
    assert endpoint.requests_to("/orders")[-1].headers["webhook-id"] == event.id
    [line] = [json.loads(line) for line in payhooks("events", "--json").splitlines()
              if json.loads(line)["id"] == event.id]
    assert line["deliveries"]["orders"] == "delivered (4 attempts)"


async def test_the_ingress_metrics_count_what_the_workers_did(
        delivering: Runtime, admin: SimulatorClient, endpoint: MerchantEndpoint,
        aiohttp_client: Any) -> None:
    endpoint.script("/refunds", default=Answer(500))
    process_callback(netaxept(admin, "m-1", authorized=True, captured=100, credited=100))
    work(delivering)
    for _ in range(2):
        make_due(delivering)
        work(delivering)
    client = await aiohttp_client(create_app(delivering.settings))
    text = await (await client.get("/metrics")).text()
    expected = [
        'payhooks_callbacks_processed_total{outcome="recorded",provider="netaxept"} 1.0',
        'payhooks_events_recorded_total{provider="netaxept",type="payment.captured"} 1.0',
        'payhooks_deliveries_total{hook="orders",merchant="shop-eu",outcome="delivered"} 3.0',
        'payhooks_deliveries_total{hook="refunds",merchant="shop-eu",outcome="failed"} 2.0',
        'payhooks_deliveries_total{hook="refunds",merchant="shop-eu",outcome="dead"} 1.0',
        'payhooks_followup_seconds_count{provider="netaxept"} 1.0',
        "payhooks_dead_letters 1.0",
        'payhooks_queue_depth{queue="deliveries"} 0.0',
    ]
    for line in expected:
        assert line in text, line
    assert "payhooks_paused_hooks 0.0" in text


def test_a_failing_hook_gets_one_attempt_in_flight_at_a_time(
        delivering: Runtime, admin: SimulatorClient, endpoint: MerchantEndpoint,
        redis_client: redis.Redis) -> None:
    redis_client.hset(hook_key("shop-eu", "orders"), "failures", 2)  # failing, not yet paused
    redis_client.set(f"{hook_key('shop-eu', 'orders')}:probe", 1, ex=30)  # another worker's
    process_callback(netaxept(admin, "f-1", authorized=True))
    ran = timed_work(delivering)
    assert endpoint.requests_to("/orders") == []
    event = recent_events(redis_client, "shop-eu")[0]
    job = Job.fetch(delivery_job_id(event.id, "orders"), connection=redis_client,
                    serializer=JSONSerializer)
    assert job.retries_left == 2  # stepping aside spends no attempt
    assert_due_in(delivering, job.id, ran, 10, 12)  # min(timeout 15, 10) + up to 2 s

    redis_client.delete(f"{hook_key('shop-eu', 'orders')}:probe")  # that attempt ended
    make_due(delivering)
    work(delivering)
    assert len(endpoint.requests_to("/orders")) == 1
    assert not redis_client.exists(hook_key("shop-eu", "orders"))  # a success resets it


def test_a_paused_hooks_new_deliveries_wait_scheduled_for_the_end_of_the_pause(
        delivering: Runtime, admin: SimulatorClient, endpoint: MerchantEndpoint,
        redis_client: redis.Redis) -> None:
    until = time.time() + 600
    redis_client.hset(hook_key("shop-eu", "orders"), "paused_until", until)
    process_callback(netaxept(admin, "s-1", authorized=True))
    event = recent_events(redis_client, "shop-eu")[0]
    job_id = delivery_job_id(event.id, "orders")
    assert redis_client.llen("rq:queue:deliveries") == 0  # not run, not even to step aside
    assert until - 2 <= scheduled_in(delivering, job_id) + time.time() <= until + 2
    assert delivery_states(redis_client, delivering.settings, event)["orders"] == "paused"
    job = Job.fetch(job_id, connection=redis_client, serializer=JSONSerializer)
    assert (job.get_status(), job.retries_left) == (JobStatus.SCHEDULED, 2)

    redis_client.hset(hook_key("shop-eu", "orders"), "paused_until", time.time() - 1)
    make_due(delivering)  # the scheduler, once the pause is over
    work(delivering)
    assert [r.headers["webhook-id"] for r in endpoint.requests_to("/orders")] == [event.id]


def test_a_hook_takes_at_most_its_share_of_workers(
        worker_runtime: Runtime, admin: SimulatorClient, endpoint: MerchantEndpoint,
        redis_client: redis.Redis, sims: Any) -> None:
    """With every place of the hook taken (here by deliveries other workers are making),
    a delivery to it steps aside, its attempt given back, and goes once a place is free.
    A lease left by a worker that died lapses by itself."""
    settings = settings_for(worker_runtime.settings.redis_url, sims.url, endpoint.url,
                            retry_schedule=["100s", "200s"], max_in_flight_per_hook=2)
    runtime = Runtime(settings, worker_runtime.redis, worker_runtime.http)
    runtimes.install(runtime)
    try:
        slots = hook_in_flight_key("shop-eu", "orders")
        busy = time.time() + 60
        redis_client.zadd(slots, {"evt_elsewhere_1": busy, "evt_elsewhere_2": busy})
        process_callback(netaxept(admin, "d-cap", authorized=True))
        started = time.time()
        work(runtime)
        took = time.time() - started
        event = recent_events(redis_client, "shop-eu")[0]
        job_id = delivery_job_id(event.id, "orders")
        assert endpoint.received == []
        # a short wait: 5 to 7 s from the attempt (RQ keeps whole seconds)
        assert 4 <= scheduled_in(runtime, job_id, since=started) <= 7 + took
        assert redis_client.hget(delivery_key(event.id, "orders"), "attempts") == b"0"
        redis_client.zadd(slots, {"evt_elsewhere_2": time.time() - 1})  # its lease lapsed
        make_due(runtime)
        work(runtime)
        assert [r.path for r in endpoint.received] == ["/orders"]
        assert redis_client.zrange(slots, 0, -1) == [b"evt_elsewhere_1"]  # ours given back
    finally:
        runtimes.install(worker_runtime)
