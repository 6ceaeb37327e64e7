"""A Redis that answers PING but refuses writes (`maxmemory` reached, `noeviction`), as a
real redis-server this test starts does once its maxmemory is set below what it holds.

Before: `/readyz` said 200 while every callback got 503, and an idle worker restarted
dozens of times a second against it, each time with new connections.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from ingress.app import create_app
from shared.sandbox.redis_server import RedisServer
from shared.sandbox.simulators import callbacks as build
from tests.helpers import IXOPAY_SECRET, enqueue, finished, fork_worker, make_settings, wait_until


@pytest.fixture
def server() -> Iterator[RedisServer]:
    with RedisServer() as started:
        yield started


def refuse_writes(client: redis.Redis, refuse: bool) -> None:
    client.config_set("maxmemory-policy", "noeviction")
    client.config_set("maxmemory", "1" if refuse else "0")


async def test_the_ingress_is_not_ready_and_counts_the_writes_refused(
        server: RedisServer, aiohttp_client: Any) -> None:
    client = await aiohttp_client(create_app(make_settings(server.url)))
    control = redis.Redis.from_url(server.url)
    callback = build.ixopay_callback("shop-eu", IXOPAY_SECRET, uuid="u-full",
                                     merchant_transaction_id="order-full")
    assert (await client.get("/readyz")).status == 200
    refuse_writes(control, True)
    assert control.ping()  # it still answers
    assert (await client.get("/readyz")).status == 503
    sent = await client.post(callback.path, data=callback.body, headers=callback.headers)
    assert sent.status == 503
    metrics = await (await client.get("/metrics")).text()
    assert "payhooks_redis_write_failures_total 1.0" in metrics
    refuse_writes(control, False)
    assert (await client.get("/readyz")).status == 200
    sent = await client.post(callback.path, data=callback.body, headers=callback.headers)
    assert sent.status == 200


def test_a_worker_waits_for_writes_instead_of_restarting_at_once(server: RedisServer) -> None:
    control = redis.Redis.from_url(server.url)
    refuse_writes(control, True)
    before = int(control.info("stats")["total_connections_received"])
    pid = fork_worker(server.url)
    try:
        time.sleep(4)
        connections = int(control.info("stats")["total_connections_received"]) - before
        assert connections < 15, connections  # was about 45 a second
        refuse_writes(control, False)
        job = enqueue(server.url, 0.0)
        wait_until(lambda: finished(job), 20, "the worker takes jobs once writes work")
    finally:
        os.kill(pid, signal.SIGTERM)
        os.waitpid(pid, 0)
