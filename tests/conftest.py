"""Fixtures: a real Redis, test settings, an ingress on a real aiohttp server, the provider
simulators (real HTTP servers on 127.0.0.1) and a worker runtime pointed at them.

Redis: `PAYHOOKS_TEST_REDIS_URL` if set; else a redis-server this session starts on a free
port (installed with apt-get when missing and running as root), so that test runs, other
projects and benchmarks on the same machine never share data; else, if none can be
started, database 13 of the server on 127.0.0.1:6379. It is flushed around each test.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import redis
from aiohttp.test_utils import TestClient

from ingress.app import create_app
from shared.redis_server import RedisServer, answers
from shared.settings import Settings, settings_from_dict
from shared.simulators import Simulators
from shared.simulators.client import SimulatorClient
from tests.helpers import MERCHANT_CONFIG, worker_config
from workers import runtime as runtimes
from workers.runtime import Runtime


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    url = os.environ.get("PAYHOOKS_TEST_REDIS_URL")
    if url:
        yield url
        return
    try:
        server = RedisServer().start()
    except RuntimeError:
        if not answers("redis://127.0.0.1:6379/13"):
            raise
        yield "redis://127.0.0.1:6379/13"
        return
    try:
        yield server.url
    finally:
        server.close()


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


@pytest.fixture(scope="session")
def running() -> Iterator[Simulators]:
    with Simulators(seed=7) as simulators:
        yield simulators


@pytest.fixture(scope="session")
def session_admin(running: Simulators) -> Iterator[SimulatorClient]:
    with SimulatorClient(running.url) as client:
        yield client


@pytest.fixture(scope="session")
def session_http(running: Simulators) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=running.url, timeout=5) as client:
        yield client


@pytest.fixture
def sims(running: Simulators) -> Simulators:
    with running.state.lock:
        running.state.reset()
    return running


@pytest.fixture
def admin(sims: Simulators, session_admin: SimulatorClient) -> SimulatorClient:
    return session_admin


@pytest.fixture
def http(sims: Simulators, session_http: httpx.Client) -> httpx.Client:
    return session_http


@pytest.fixture
def worker_settings(redis_url: str, redis_client: redis.Redis, sims: Simulators) -> Settings:
    """Merchants whose provider APIs are the simulators, and the credentials registered."""
    return settings_from_dict(worker_config(redis_url, sims.url), environ={})


@pytest.fixture
def worker_runtime(worker_settings: Settings, admin: SimulatorClient) -> Iterator[Runtime]:
    """The runtime jobs use in this process, pointed at the simulators."""
    for merchant in worker_settings.merchants.values():
        if merchant.netaxept:
            admin.netaxept_credentials(merchant.netaxept.merchant_id,
                                       merchant.netaxept.token.get_secret_value())
        if merchant.payex:
            admin.payex_token(merchant.payex.token.get_secret_value())
        if merchant.ixopay and merchant.ixopay.api_key and merchant.ixopay.password:
            admin.ixopay_credentials(merchant.ixopay.api_key, merchant.ixopay.username or "",
                                     merchant.ixopay.password.get_secret_value())
        if merchant.ifthenpay and merchant.ifthenpay.backoffice_key:
            admin.ifthenpay_backoffice(merchant.ifthenpay.backoffice_key.get_secret_value())
    runtime = Runtime.from_settings(worker_settings)
    runtimes.install(runtime)
    yield runtime
    runtimes.install(None)
    runtime.close()
