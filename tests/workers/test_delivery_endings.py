"""Every delivery that ends ends delivered, dropped or dead-lettered, however it ends.

Our own code records the attempts it sees end. These are the endings it does not see: RQ's
job timeout firing inside the attempt, and the worker killed mid-attempt (RQ's clean-up of
the started registry finds the job after its lease). Before RQ's failure callback
(`workers.delivery.delivery_failed`) ran on them, such a delivery sat in RQ's failed
registry as "queued, 0 attempts", unseen by `payhooks events` and `payhooks replay`.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from rq.job import Job
from rq.registry import FailedJobRegistry, StartedJobRegistry
from rq.serializers import JSONSerializer

import workers.worker as worker_main
from shared.keys import DEAD_LETTERS, delivery_key
from shared.queue import DELIVERIES
from shared.sandbox.simulators.client import SimulatorClient
from tests.helpers import netaxept, settings_for, work
from tests.hostile import HostileServer
from workers import runtime as runtimes
from workers.events import delivery_job_id
from workers.listing import delivery_states, recent_events
from workers.replay import dead_letters, replay
from workers.runtime import Runtime
from workers.tasks import process_callback


@pytest.fixture
def silent_hook(worker_runtime: Runtime, sims: Any) -> Iterator[Runtime]:
    """shop-eu's hooks at a server that never answers, with a generous delivery timeout."""
    with HostileServer("silent", lifetime=40) as silent:
        settings = settings_for(worker_runtime.settings.redis_url, sims.url, silent.url,
                                timeout="30s", retry_schedule=["100s"])
        runtime = Runtime(settings, worker_runtime.redis, worker_runtime.http)
        runtimes.install(runtime)
        try:
            yield runtime
        finally:
            runtimes.install(worker_runtime)


def last_try(client: redis.Redis, event_id: str, **changes: Any) -> Job:
    """The `orders` delivery job of the event, on its last try (RQ's own API)."""
    job = Job.fetch(delivery_job_id(event_id, "orders"), connection=client,
                    serializer=JSONSerializer)
    job.retries_left = 0
    for name, value in changes.items():
        setattr(job, name, value)
    job.save()
    return job


def assert_dead_lettered(client: redis.Redis, runtime: Runtime, event_id: str,
                         reason: str) -> None:
    record = client.hgetall(delivery_key(event_id, "orders"))
    assert record[b"state"] == b"dead"
    assert record[b"reason"] == f"the job ended: {reason}".encode()
    assert client.zscore(DEAD_LETTERS, f"shop-eu|{event_id}|orders") is not None
    [event] = recent_events(client, "shop-eu")
    assert delivery_states(client, runtime.settings, event)["orders"] == (
        f"dead (the job ended: {reason})")  # what `payhooks events` shows
    [letter] = dead_letters(client, event=event_id)
    assert replay(client, runtime.settings, [letter]) == 1  # and an operator can send it again


def test_rqs_job_timeout_inside_an_attempt_dead_letters_the_delivery(
        silent_hook: Runtime, admin: SimulatorClient, redis_client: redis.Redis) -> None:
    [event_id] = process_callback(netaxept(admin, "tx-timeout", authorized=True))["events"]
    last_try(redis_client, event_id, timeout=1)  # RQ's timeout fires before ours (30 s)
    started = time.monotonic()
    work(silent_hook)
    assert time.monotonic() - started < 10
    assert FailedJobRegistry(DELIVERIES, connection=redis_client).get_job_ids() == [
        delivery_job_id(event_id, "orders")]
    assert_dead_lettered(redis_client, silent_hook, event_id, "JobTimeoutException")


def test_a_worker_killed_mid_attempt_dead_letters_its_last_try(
        silent_hook: Runtime, admin: SimulatorClient, redis_client: redis.Redis) -> None:
    [event_id] = process_callback(netaxept(admin, "tx-killed", authorized=True))["events"]
    last_try(redis_client, event_id)
    pid = os.fork()
    if pid == 0:  # a worker, as `payhooks worker` builds it, taking the delivery
        code = 1
        try:
            code = int(not worker_main.build_worker(silent_hook.settings, (DELIVERIES,))
                       .work(burst=True, with_scheduler=False))
        finally:
            os._exit(code)
    try:
        deadline = time.monotonic() + 20
        started = StartedJobRegistry(DELIVERIES, connection=redis_client,
                                     serializer=JSONSerializer)
        while not started.get_job_ids() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)  # inside the attempt: the hook has the request, and stays silent
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    assert redis_client.hget(delivery_key(event_id, "orders"), "state") == b"queued"
    # another worker's clean-up, once the lease has run out
    started.cleanup(timestamp=time.time() + worker_main.LEASE_SECONDS + 1)
    assert_dead_lettered(redis_client, silent_hook, event_id, "AbandonedJobError")
