"""Fixtures: a real Redis, test settings, an ingress on a real aiohttp server.

Redis: `PAYHOOKS_TEST_REDIS_URL` if set; else the server on 127.0.0.1:6379 (database 13,
flushed around each test) if one answers; else a redis-server this session starts on a
free port (installed with apt-get when missing and running as root).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import redis
from aiohttp.test_utils import TestClient

from ingress.app import create_app
from shared.redis_server import RedisServer, answers
from shared.settings import Settings, settings_from_dict
from tests.helpers import MERCHANT_CONFIG


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    url = os.environ.get("PAYHOOKS_TEST_REDIS_URL")
    if url:
        yield url
        return
    if answers("redis://127.0.0.1:6379/13"):
        yield "redis://127.0.0.1:6379/13"
        return
    with RedisServer() as server:
        yield server.url


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


def make_settings(redis_url: str, **overrides: Any) -> Settings:
    raw: dict[str, Any] = {"redis_url": redis_url, "merchants": MERCHANT_CONFIG}
    raw.update(overrides)
    return settings_from_dict(raw, environ={})


@pytest.fixture
def settings(redis_url: str, redis_client: redis.Redis) -> Settings:
    return make_settings(redis_url)


@pytest.fixture
async def client(settings: Settings, aiohttp_client: Any) -> AsyncIterator[TestClient[Any, Any]]:
    yield await aiohttp_client(create_app(settings))
