"""A Redis that stalls (its process stopped with SIGSTOP, then continued): the ingress keeps
its promise of a 503 within about two seconds whatever Redis does, and nothing it answered
200 to is missing afterwards.

Before: during a stall requests waited for every batch queued before theirs, up to 38 s.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from ingress.app import create_app
from ingress.store import STORE_DEADLINE
from shared.sandbox.redis_server import RedisServer
from shared.sandbox.simulators import callbacks as build
from tests.helpers import IXOPAY_SECRET, make_settings, queued_callbacks


@pytest.fixture
def server() -> Iterator[RedisServer]:
    with RedisServer() as started:
        yield started


async def test_callbacks_get_503_on_time_while_redis_stalls(
        server: RedisServer, aiohttp_client: Any) -> None:
    client = await aiohttp_client(create_app(make_settings(server.url)))
    callbacks = [build.ixopay_callback("shop-eu", IXOPAY_SECRET, uuid=f"u-stall-{n}",
                                       merchant_transaction_id=f"order-{n}")
                 for n in range(40)]

    async def send(callback: build.OutgoingCallback) -> tuple[int, float]:
        started = time.monotonic()
        response = await client.post(callback.path, data=callback.body,
                                     headers=callback.headers)
        return response.status, time.monotonic() - started

    assert (await send(callbacks[0]))[0] == 200
    assert server.process is not None
    os.kill(server.process.pid, signal.SIGSTOP)  # Redis stalls
    try:
        during: list[tuple[int, float]] = []
        for wave in range(3):  # callbacks keep coming while it stalls
            during += await asyncio.gather(*(send(c) for c in callbacks[1 + 10 * wave:
                                                                         11 + 10 * wave]))
    finally:
        os.kill(server.process.pid, signal.SIGCONT)
    assert {status for status, _ in during} == {503}
    assert max(seconds for _, seconds in during) < STORE_DEADLINE + 1.0, during
    after = [(await send(c))[0] for c in callbacks[31:]]
    assert after == [200] * len(after)
    stored = {c.reference for c in queued_callbacks(redis.Redis.from_url(server.url))}
    assert {"u-stall-0", *(f"u-stall-{n}" for n in range(31, 40))} <= stored
